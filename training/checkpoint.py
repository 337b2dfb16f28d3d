"""Atomic checkpoints: temp file, fsync, rename. Last N kept plus the best by validation.

A checkpoint holds ``state_dict``s, configs, optimiser, scheduler, step, RNG states and a
format version, never pickled modules. ``latest()`` skips files that fail to load, so a job
killed at any instant resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(handle)`` on a temp file beside ``path``, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(path: Path, payload: Any) -> None:
    data = (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()
    atomic_write_bytes(path, lambda handle: handle.write(data))


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint (our own files: full unpickling of RNG states is expected)."""
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format_version')} not supported")
    return state


class CheckpointManager:
    """``step-XXXXXXXX.pt`` files in a directory, the last ``keep`` kept, plus ``best.pt``."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        self.best_path = directory / "best.pt"
        self.best_info = directory / "best.json"

    def steps(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def save(self, state: dict[str, Any], step: int, metric: float | None = None) -> Path:
        """Write ``state`` for ``step``; refresh ``best.pt`` if ``metric`` (lower wins) improves."""
        state = {**state, "format_version": FORMAT_VERSION, "step": step}
        path = self.directory / f"step-{step:08d}.pt"
        atomic_save(state, path)
        # temp files of writers killed mid-write (ours is renamed by now): never loaded, but
        # as large as a checkpoint each
        for stale in self.directory.glob(".step-*.pt.tmp-*"):
            stale.unlink(missing_ok=True)
        for _, old in self.steps()[: -self.keep]:
            old.unlink(missing_ok=True)
        if metric is not None and metric < self.best_metric():
            tmp = self.best_path.with_name(".best.pt.tmp")
            shutil.copyfile(path, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.best_path)
            atomic_write_json(self.best_info, {"step": step, "metric": metric})
            fsync_directory(self.directory)
        return path

    def best_metric(self) -> float:
        try:
            return float(json.loads(self.best_info.read_text())["metric"])
        except (OSError, ValueError, KeyError):
            return float("inf")

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads, with its state (None if there is none)."""
        for step, path in reversed(self.steps()):
            try:
                return path, load_checkpoint(path)
            except Exception as exc:  # noqa: BLE001 - a torn file of any kind is skipped
                log.warning("skipping unreadable checkpoint %s (step %d): %s", path, step, exc)
        return None

"""Atomic checkpoints: temp file, fsync, rename. Last N kept plus the best by validation.

A checkpoint holds ``state_dict``s, configs, optimiser, scheduler, step, RNG states and a
format version, never pickled modules or arbitrary objects: it is read with
``torch.load(weights_only=True)``, so a checkpoint file from elsewhere cannot run code on
``--resume`` or ``export``. ``latest()`` skips files that fail to load (torn by a kill), so a
job killed at any instant resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.errors import UserError
from models.files import atomic_copy, atomic_write, atomic_write_json, is_atomic_temp

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 1 (distilwave 0.1.0) pickled numpy RNG state: not loadable safely


class UnsafeCheckpoint(UserError, ValueError):
    """A complete file that only a full unpickling (which can run code) would read."""


_NAME = re.compile(r"^step-(\d{8})\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain numbers (what ``weights_only`` loading reads)."""
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint with ``weights_only=True`` (tensors, numbers, strings, containers).

    Raises:
        UnsafeCheckpoint: a complete file holding other objects (an older format, or not ours).
        ValueError: an unsupported format version.
    """
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(
            f"{path} holds objects a safe load refuses (written by distilwave 0.1.0, or not a "
            "distilwave checkpoint): train again, or export it with distilwave 0.1.0"
        ) from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise ValueError(f"{path}: checkpoint format {version} not supported")
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
        for stale in self.directory.glob(".*"):
            if is_atomic_temp(stale):
                stale.unlink(missing_ok=True)
        for _, old in self.steps()[: -self.keep]:
            old.unlink(missing_ok=True)
        if metric is not None and metric < self.best_metric():
            atomic_copy(path, self.best_path)
            atomic_write_json(self.best_info, {"step": step, "metric": metric})
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
            except UnsafeCheckpoint:
                raise
            except Exception as exc:  # noqa: BLE001 - a torn file of any kind is skipped
                log.warning("skipping unreadable checkpoint %s (step %d): %s", path, step, exc)
        return None

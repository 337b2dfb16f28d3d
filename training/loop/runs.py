"""Run directories: every job writes its config snapshot, log, checkpoints and TensorBoard here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from training.config import Preset


def write_snapshot(run_dir: Path, preset: Preset, extra: dict[str, Any] | None = None) -> None:
    """The exact configuration a run used, as YAML, next to its outputs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"preset": preset.model_dump(mode="json")}
    if extra:
        payload.update(extra)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(payload, sort_keys=False), encoding="utf-8")


def attach_log_file(run_dir: Path, name: str = "train.log") -> logging.Handler:
    """Also log to ``run_dir/name`` (appending, so a resumed run keeps its history)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / name, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler

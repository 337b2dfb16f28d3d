"""Shared helpers for the data-pipeline tests (no tests here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from models.config import MelConfig
from training.config import DataConfig, Preset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "asterisk"
SAMPLE_RATE = 8000
HOP = 80
N_FFT = 256
SEGMENT = 16 * HOP  # 1280 samples, 0.16 s


def tiny_preset(mel: dict[str, Any] | None = None, **data: Any) -> Preset:
    """A small front end and one-process data settings that keep the tests quick."""
    mel_config = MelConfig(
        **{
            "sample_rate": SAMPLE_RATE,
            "n_fft": N_FFT,
            "hop_length": HOP,
            "n_mels": 40,
            **(mel or {}),
        }
    )
    data_config = DataConfig(**{"segment_samples": SEGMENT, "shard_size": 4, "workers": 1, **data})
    return Preset(name="tiny", mel=mel_config, data=data_config)


def clips() -> list[Path]:
    """The committed real-speech fixtures, sorted."""
    return sorted(FIXTURES.rglob("*.wav"))


def copy_clips(destination: Path, count: int | None = None) -> list[Path]:
    """Copy fixture clips (keeping their sub-folders) into ``destination``."""
    copied = []
    for path in clips()[:count]:
        target = destination / path.relative_to(FIXTURES)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(target)
    return copied


def manifest(out: Path) -> list[dict[str, Any]]:
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def rows_by_id(out: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in manifest(out)}

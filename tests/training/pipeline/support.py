"""Helpers for the offline-pipeline tests: running the CLI, comparing checkpoints, bad corpora."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[3]
FIXTURE_CORPUS = REPO / "tests" / "fixtures" / "audio" / "asterisk"
DISTILWAVE = Path(sys.executable).parent / "distilwave"

# Overrides that only shorten validation and evaluation (never what a training step does),
# so a run with them is the smoke preset's training, step for step.
TEACHER_SET = ["teacher_training.sample_seconds=0", "teacher_training.loop.val_max_seconds=0.5"]
STUDENT_SET = ["distillation.loop.val_max_seconds=0.5"]
EVALUATION_SET = ["evaluation.griffin_lim_iters=1", "evaluation.teacher_sample_seconds=0"]


def sets(overrides: Iterable[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [part for item in overrides for part in ("--set", item)]


def cli_command(*args: str | Path) -> list[str]:
    """The real CLI as a fresh Python process (``python -m distilwave.cli ...``)."""
    return [sys.executable, "-m", "distilwave.cli", *map(str, args)]


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def step_file(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}.pt"


def step_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))


def _tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor that training changes: weights, EMA, optimiser moments and step counts."""
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out.update({f"ema.{k}": v for k, v in state["ema"]["shadow"].items()})
    for index, slot in state["optimizer"]["state"].items():
        out.update({f"optimizer.{index}.{k}": v for k, v in slot.items()})
    return out


def differing_tensors(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Names of the tensors in which two checkpoint states differ (exactly, bit for bit)."""
    left, right = _tensors(a), _tensors(b)
    if left.keys() != right.keys():
        return sorted(left.keys() ^ right.keys())
    return [k for k in left if not torch.equal(left[k], right[k])]


def copy_run(source: Path, target: Path, drop_steps: Iterable[int] = ()) -> Path:
    """Copy a run directory, optionally without some step checkpoints (as if killed before)."""
    shutil.copytree(source, target)
    for step in drop_steps:
        step_file(target, step).unlink()
    return target


def corrupt_mels(data_dir: Path, utterance_ids: Iterable[str], value: float = 1e30) -> None:
    """Overwrite the stored mel of these utterances with an absurd finite value, in place.

    The models reject NaN features outright; a log-mel of 1e30 passes that check and makes
    the teacher's loss NaN (its LPC and conditioning overflow), like a corrupted shard would.
    """
    wanted = set(utterance_ids)
    for shard in sorted((data_dir / "shards").glob("*.safetensors")):
        with safe_open(str(shard), framework="numpy") as handle:
            metadata = handle.metadata()
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        hit = False
        for key in tensors:
            if key.startswith("mel/") and key[len("mel/") :] in wanted:
                tensors[key] = np.full_like(tensors[key], value)
                hit = True
        if hit:
            save_file(tensors, str(shard), metadata=metadata)


def find_utterance(data_dir: Path, mel_segment: torch.Tensor) -> str:
    """The id of the prepared utterance whose mel contains ``mel_segment`` ``(n_mels, F)``."""
    from training.data.dataset import PreparedCorpus

    corpus = PreparedCorpus(data_dir)
    frames = mel_segment.shape[1]
    for row in corpus.utterances():
        _, mel = corpus.load(row)
        for start in range(mel.shape[1] - frames + 1):
            if torch.equal(mel[:, start : start + frames], mel_segment):
                return str(row["id"])
    raise LookupError("segment not found in any utterance")


@dataclass(frozen=True)
class SmokeRun:
    root: Path
    process: subprocess.CompletedProcess[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def prior(self) -> Path:
        return self.root / "prior"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

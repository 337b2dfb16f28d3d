"""A checkpoint file from elsewhere runs no code (issue 14): checkpoints are read with
``torch.load(weights_only=True)``, so ``--resume`` and ``export`` refuse a pickled object with
a one-line error instead of unpickling it.

The payload only creates a file when unpickled; loading the same file with
``weights_only=False`` (what the code did before) creates it, which the first test shows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.training.pipeline.test_resume import _teacher_args  # the resume tests' flags


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: any code could run in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": 2, "step": 1, "model": Payload(marker)}, path)
    return path


def test_the_payload_runs_code_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "ran"
    checkpoint = hostile_checkpoint(tmp_path / "step-00000001.pt", marker)
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def test_export_refuses_a_pickled_object_in_one_line_and_runs_nothing(cli, tmp_path):
    marker = tmp_path / "ran"
    run = tmp_path / "student"
    checkpoint = hostile_checkpoint(run / "checkpoints" / "best.pt", marker)
    for source in (checkpoint, run):
        result = cli("export", "--student", source, "--out", tmp_path / "bundle")
        assert result.code == 2, result.stderr
        assert len(result.error_lines) == 1 and "safe load refuses" in result.error_lines[0]
        assert not marker.exists()
        assert not (tmp_path / "bundle").exists()


def test_resume_refuses_a_pickled_object_in_one_line_and_trains_nothing(smoke, cli, tmp_path):
    marker = tmp_path / "ran"
    run = tmp_path / "teacher"
    hostile_checkpoint(run / "checkpoints" / "step-00000001.pt", marker)
    result = cli(*_teacher_args(smoke, run, "--resume"))
    assert result.code == 2, result.stderr
    assert len(result.error_lines) == 1 and "safe load refuses" in result.error_lines[0]
    assert not marker.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001.pt"]

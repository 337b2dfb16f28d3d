"""``distilwave train student --kl mc``: the Monte-Carlo reverse KL trains too."""

from __future__ import annotations

import math

import yaml

from tests.training.pipeline.support import STUDENT_SET, sets, step_file
from training.loop.checkpoint import load_checkpoint


def test_student_trains_with_the_monte_carlo_kl(smoke, cli, tmp_path):
    run_dir = tmp_path / "student"
    result = cli(
        "train", "student", "--data", smoke.data, "--teacher", smoke.teacher, "--preset", "smoke",
        "--device", "cpu", "--kl", "mc", *sets(STUDENT_SET),
        "--set", "distillation.loop.steps=1",
        "--run-dir", run_dir,
    )  # fmt: skip
    assert result.code == 0, result.stderr[-2000:]
    assert "student: 1 steps (steps)" in result.stdout
    snapshot = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert snapshot["preset"]["distillation"]["kl"] == "mc"
    state = load_checkpoint(step_file(run_dir, 1))
    assert state["config"]["preset"]["distillation"]["kl"] == "mc"
    [(step, kl_closed, kl_mc, stft)] = state["recipe"]["history"]
    assert step == 1
    assert all(math.isfinite(v) for v in (kl_closed, kl_mc, stft))

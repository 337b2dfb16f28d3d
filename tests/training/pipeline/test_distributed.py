"""Two CPU processes under torchrun (gloo): identical replicas, one checkpoint from rank 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.pipeline.support import REPO, TEACHER_SET, tail
from training.loop.checkpoint import load_checkpoint

HELPER = Path(__file__).with_name("ddp_replicas.py")
TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def ddp_run(smoke, tmp_path_factory):
    """2 steps of the smoke teacher on 2 processes; each rank saves what it holds at the end."""
    root = tmp_path_factory.mktemp("ddp")
    process = subprocess.run(
        [
            str(TORCHRUN),
            "--standalone",
            "--nproc-per-node",
            "2",
            str(HELPER),
            str(smoke.data),
            str(smoke.prior),
            str(root / "run"),
            str(root / "replicas"),
            "teacher_training.loop.steps=2",
            *TEACHER_SET,
        ],  # fmt: skip
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, tail(process.stderr, 30)
    return root


def _rank(root: Path, rank: int) -> dict:
    return torch.load(root / "replicas" / f"rank-{rank}.pt", weights_only=False)


def test_torchrun_replicas_hold_identical_weights_and_ema(ddp_run):
    rank0, rank1 = _rank(ddp_run, 0), _rank(ddp_run, 1)
    assert (rank0["world_size"], rank0["step"], rank1["step"]) == (2, 2, 2)
    for part in ("model", "ema"):
        differ = [k for k in rank0[part] if not torch.equal(rank0[part][k], rank1[part][k])]
        assert differ == [], part


def test_torchrun_writes_one_checkpoint_holding_the_replicas_weights(ddp_run):
    run = ddp_run / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.json",
        "best.pt",
        "step-00000002.pt",
    ]
    state = load_checkpoint(run / "checkpoints" / "step-00000002.pt")
    rank0 = _rank(ddp_run, 0)
    assert all(torch.equal(state["model"][k], v) for k, v in rank0["model"].items())
    assert all(torch.equal(state["ema"]["shadow"][k], v) for k, v in rank0["ema"].items())


def test_torchrun_checkpoint_keeps_each_ranks_rng_stream(ddp_run):
    """Each rank draws its own noise; an exact resume needs every rank's RNG, not rank 0's."""
    state = load_checkpoint(ddp_run / "run" / "checkpoints" / "step-00000002.pt")
    saved = [rng["torch"] for rng in state["rng_by_rank"]]
    live = [_rank(ddp_run, rank)["torch_rng"] for rank in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(saved, live, strict=True))
    assert not torch.equal(saved[0], saved[1])

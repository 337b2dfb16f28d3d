"""Checkpoints survive a SIGKILL at any instant: ``latest()`` never loads a torn file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.training.pipeline.support import REPO
from training.checkpoint import CheckpointManager, load_checkpoint

WRITER = Path(__file__).with_name("checkpoint_writer.py")


def _kill_during_a_write(directory: Path, attempts: int = 5) -> list[Path]:
    """SIGKILL the writer while a checkpoint's temp file is being written; the temp files left."""
    for _ in range(attempts):
        process = subprocess.Popen([sys.executable, str(WRITER), str(directory)], cwd=REPO)
        deadline = time.monotonic() + 120
        try:
            while True:
                assert process.poll() is None, "the checkpoint writer died on its own"
                assert time.monotonic() < deadline, "no checkpoint write seen within 120 s"
                steps = list(directory.glob("step-*.pt"))
                partial = [p for p in directory.glob(".step-*.tmp-*") if p.stat().st_size > 0]
                if steps and partial:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
        finally:
            process.kill()
            process.wait()
        left = list(directory.glob(".step-*.tmp-*"))
        if left:
            return left
    raise AssertionError(f"no kill landed inside a checkpoint write in {attempts} attempts")


def test_sigkill_during_a_checkpoint_write_leaves_latest_loading_a_whole_checkpoint(tmp_path):
    directory = tmp_path / "checkpoints"
    torn = _kill_during_a_write(directory)
    found = CheckpointManager(directory, keep=2).latest()
    assert found is not None
    path, state = found
    assert torch.equal(state["payload"], torch.full_like(state["payload"], float(state["step"])))
    assert path.name == f"step-{state['step']:08d}.pt"
    assert all(p.name.startswith(f".step-{state['step'] + 1:08d}.pt.tmp-") for p in torn)
    for step_path in directory.glob("step-*.pt"):  # every visible checkpoint is whole
        load_checkpoint(step_path)


def test_latest_skips_a_truncated_checkpoint_for_the_one_before(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save({"payload": torch.arange(1000.0)}, 3)
    newest = manager.save({"payload": torch.arange(1000.0) * 2}, 6)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    found = manager.latest()
    assert found is not None
    assert found[0].name == "step-00000003.pt"
    assert torch.equal(found[1]["payload"], torch.arange(1000.0))

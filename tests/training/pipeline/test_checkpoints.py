"""Checkpoints survive a SIGKILL at any instant: ``latest()`` never loads a torn file."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.training.pipeline.support import REPO
from training.loop.checkpoint import CheckpointManager, load_checkpoint

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
                partial = [p for p in directory.glob(".step-*.tmp") if p.stat().st_size > 0]
                if steps and partial:
                    process.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
        finally:
            process.kill()
            process.wait()
        left = list(directory.glob(".step-*.tmp"))
        if left:
            return left
    raise AssertionError(f"no kill landed inside a checkpoint write in {attempts} attempts")


@pytest.fixture(scope="module")
def killed_writer(tmp_path_factory):
    """A checkpoint directory whose writer was SIGKILLed mid-write, and the temp files left."""
    directory = tmp_path_factory.mktemp("killed") / "checkpoints"
    return directory, _kill_during_a_write(directory)


def test_sigkill_during_a_checkpoint_write_leaves_latest_loading_a_whole_checkpoint(
    killed_writer,
):
    directory, torn = killed_writer
    found = CheckpointManager(directory, keep=2).latest()
    assert found is not None
    path, state = found
    assert torch.equal(state["payload"], torch.full_like(state["payload"], float(state["step"])))
    assert path.name == f"step-{state['step']:08d}.pt"
    assert all(p.name.startswith(f".step-{state['step'] + 1:08d}.pt.") for p in torn)
    for step_path in directory.glob("step-*.pt"):  # every visible checkpoint is whole
        load_checkpoint(step_path)


def test_next_checkpoint_save_removes_the_temp_file_a_killed_writer_left(killed_writer, tmp_path):
    directory = tmp_path / "checkpoints"
    shutil.copytree(killed_writer[0], directory)
    torn = [directory / p.name for p in killed_writer[1]]
    assert all(p.exists() for p in torn)
    manager = CheckpointManager(directory, keep=2)
    manager.save({"payload": torch.zeros(10)}, 1000)
    assert not any(p.exists() for p in torn)
    assert manager.latest()[1]["step"] == 1000


def test_latest_skips_a_truncated_checkpoint_for_the_one_before(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save({"payload": torch.arange(1000.0)}, 3)
    newest = manager.save({"payload": torch.arange(1000.0) * 2}, 6)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    found = manager.latest()
    assert found is not None
    assert found[0].name == "step-00000003.pt"
    assert torch.equal(found[1]["payload"], torch.arange(1000.0))

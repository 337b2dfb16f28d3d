"""Write checkpoints through ``CheckpointManager`` until killed: ``checkpoint_writer.py DIR``.

Step ``s`` holds ``payload = full((N,), s)`` (N float32 values, large enough that one write
takes a noticeable time), so a reader can tell a whole checkpoint from a torn one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from training.loop.checkpoint import CheckpointManager

VALUES = 16 * 1024 * 1024  # 64 MB per checkpoint


def main(directory: Path) -> None:
    manager = CheckpointManager(directory, keep=2)
    step = 0
    while True:
        step += 1
        manager.save({"payload": torch.full((VALUES,), float(step))}, step)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

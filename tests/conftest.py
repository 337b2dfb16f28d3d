"""Suite-wide settings: one compute thread per test process.

The suite runs on 2-core machines, often beside other work; tiny models gain nothing from
intra-op threads and OpenMP spin-waiting under oversubscription slows everything down.
Subprocesses started by tests (the CLI, uvicorn, torchrun) inherit the same limits.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

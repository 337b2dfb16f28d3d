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


import json  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from tests.training.pipeline.support import (  # noqa: E402
    EVALUATION_SET,
    FIXTURE_CORPUS,
    STUDENT_SET,
    TEACHER_SET,
    SmokeRun,
    run_cli,
    sets,
)


def _run_smoke_pipeline(root) -> SmokeRun:  # noqa: ANN001
    process = run_cli(
        "pipeline", "--preset", "smoke", "--source", FIXTURE_CORPUS, "--run-dir", root,
        "--device", "cpu", *sets(TEACHER_SET + STUDENT_SET + EVALUATION_SET),
    )  # fmt: skip
    return SmokeRun(root, process)


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> SmokeRun:
    """``distilwave pipeline --preset smoke`` on the fixture corpus, run once per test session.

    Under pytest-xdist the workers share one run (a file lock in the session's common temp
    directory): the first worker to need it runs it, the others reuse it. Not checked here:
    ``smoke`` (tests/training/pipeline) fails the tests that need a finished run.
    """
    if worker_id == "master":
        return _run_smoke_pipeline(tmp_path_factory.mktemp("smoke") / "run")
    shared = tmp_path_factory.getbasetemp().parent / "smoke"
    shared.mkdir(exist_ok=True)
    record = shared / "process.json"
    with FileLock(str(shared / ".lock")):
        if record.is_file():
            saved = json.loads(record.read_text())
            process = subprocess.CompletedProcess(
                saved["args"], saved["returncode"], saved["stdout"], saved["stderr"]
            )
            return SmokeRun(shared / "run", process)
        run = _run_smoke_pipeline(shared / "run")
        record.write_text(
            json.dumps(
                {
                    "args": [str(a) for a in run.process.args],
                    "returncode": run.process.returncode,
                    "stdout": run.process.stdout,
                    "stderr": run.process.stderr,
                }
            )
        )
        return run

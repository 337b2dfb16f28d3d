"""One smoke pipeline run (real CLI, real training) shared by every offline-pipeline test.

The session fixture ``smoke_pipeline`` (in tests/conftest.py, so the service's demo-page test
shares it, also across pytest-xdist workers) runs ``distilwave pipeline --preset smoke`` once
on the committed fixture corpus; tests reuse its prepared corpus, teacher and student runs,
evaluation and bundle, and copy a run before changing it. Cheap CLI calls (errors, export,
generate, short training jobs) go through ``distilwave.cli.main`` in the test process: the same
code a console script runs, without paying a fresh interpreter's torch import each time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from distilwave.cli import main
from tests.training.pipeline.support import SmokeRun, tail


@pytest.fixture(scope="session")
def smoke(smoke_pipeline: SmokeRun) -> SmokeRun:
    """The finished smoke run; tests that build on it error out if the pipeline failed."""
    if smoke_pipeline.process.returncode != 0:
        pytest.fail(
            f"the smoke pipeline failed (exit {smoke_pipeline.process.returncode}):\n"
            + tail(smoke_pipeline.process.stderr)
        )
    return smoke_pipeline


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("distilwave:")]


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``distilwave ARGS`` in this process; returns exit code, stdout and stderr."""

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run

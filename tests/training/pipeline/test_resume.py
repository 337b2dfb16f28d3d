"""Resuming training: after a real SIGKILL, exactly, and the errors around ``--resume``."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest

from tests.training.pipeline.support import (
    REPO,
    STUDENT_SET,
    TEACHER_SET,
    cli_command,
    copy_run,
    differing_tensors,
    sets,
    step_file,
    step_files,
    tail,
)
from training.loop.checkpoint import load_checkpoint


def _teacher_args(smoke, run_dir, *extra):
    common = ["--data", smoke.data, "--preset", "smoke", "--device", "cpu", *sets(TEACHER_SET)]
    return ["train", "teacher", *common, "--prior", smoke.prior, "--run-dir", run_dir, *extra]


def _student_args(smoke, run_dir, *extra):
    common = ["--data", smoke.data, "--preset", "smoke", "--device", "cpu", *sets(STUDENT_SET)]
    return ["train", "student", *common, "--teacher", smoke.teacher, "--run-dir", run_dir, *extra]


def test_teacher_killed_after_step_3_resumes_to_the_uninterrupted_weights(smoke, cli, tmp_path):
    """SIGKILL a real ``train teacher`` once its step-3 checkpoint exists, then ``--resume``.

    The uninterrupted reference is the smoke pipeline's teacher: same data, preset and
    training overrides, 6 steps without a break.
    """
    run_dir = tmp_path / "teacher"
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        cli_command(*_teacher_args(smoke, run_dir)), cwd=REPO, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 240
    try:
        while not step_file(run_dir, 3).exists():
            assert process.poll() is None, tail((tmp_path / "killed.log").read_text())
            assert time.monotonic() < deadline, "no step-3 checkpoint within 240 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL
    assert step_files(run_dir) == ["step-00000003.pt"], "the kill came after step 6"

    result = cli(*_teacher_args(smoke, run_dir, "--resume"))
    assert result.code == 0, result.stderr[-2000:]
    assert "teacher: 6 steps (steps)" in result.stdout
    resumed = load_checkpoint(step_file(run_dir, 6))
    reference = load_checkpoint(step_file(smoke.teacher, 6))
    assert differing_tensors(resumed, reference) == []


def test_student_resumed_from_step_3_ends_with_the_uninterrupted_weights(smoke, cli, tmp_path):
    """The student draws noise every step, so this also checks the RNG state round trip."""
    run_dir = copy_run(smoke.student, tmp_path / "student", drop_steps=[6])
    result = cli(*_student_args(smoke, run_dir, "--resume"))
    assert result.code == 0, result.stderr[-2000:]
    resumed = load_checkpoint(step_file(run_dir, 6))
    reference = load_checkpoint(step_file(smoke.student, 6))
    assert differing_tensors(resumed, reference) == []


@pytest.mark.parametrize("job", ["teacher", "student"])
def test_resume_without_run_dir_is_a_one_line_error(job, smoke, cli):
    args = ["train", job, "--data", smoke.data, "--preset", "smoke", "--resume"]
    if job == "student":
        args += ["--teacher", smoke.teacher]
    result = cli(*args)
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        "distilwave: error: --resume needs --run-dir (the run to continue)"
    ]


def test_pipeline_resume_without_run_dir_is_a_one_line_error(cli, tmp_path):
    result = cli("pipeline", "--preset", "smoke", "--source", tmp_path, "--resume")
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        "distilwave: error: --resume needs --run-dir (the pipeline run to continue)"
    ]


def test_run_dir_with_checkpoints_without_resume_is_a_one_line_error(smoke, cli, tmp_path):
    run_dir = tmp_path / "teacher"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(step_file(smoke.teacher, 3), step_file(run_dir, 3))
    result = cli(*_teacher_args(smoke, run_dir))
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"distilwave: error: {run_dir} already holds checkpoints: pass --resume, or another "
        "--run-dir"
    ]
    assert step_files(run_dir) == ["step-00000003.pt"]


def test_resume_into_a_different_model_is_a_one_line_error_leaving_the_run_as_it_was(
    smoke, cli, tmp_path
):
    run_dir = copy_run(smoke.teacher, tmp_path / "teacher")
    snapshot = (run_dir / "config.yaml").read_bytes()
    result = cli(
        *_teacher_args(smoke, run_dir, "--resume", "--set", "teacher.wavenet.residual_channels=16")
    )
    assert result.code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        f"distilwave: error: {step_file(run_dir, 6)} does not fit this teacher (was the model "
        "configuration changed since it was written?): Error(s) in loading state_dict"
    )
    assert (run_dir / "config.yaml").read_bytes() == snapshot
    assert step_files(run_dir) == ["step-00000003.pt", "step-00000006.pt"]

"""The non-finite guard, provoked by real NaNs: a prepared corpus with corrupted mel frames.

A corrupted (absurdly large, finite) mel makes the teacher's loss NaN on exactly the steps
whose batch draws that utterance, through the real data loading, model and Trainer: those
steps are skipped and counted, the others train; a corpus corrupted throughout stops the run.
(An absurd learning rate, ``--set teacher_training.optim.lr=1e30``, also diverges to NaN
after one step, but then no step after it is finite, so it cannot show skip-and-continue.)
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.training.pipeline.support import (
    TEACHER_SET,
    copy_run,
    corrupt_mels,
    differing_tensors,
    find_utterance,
    sets,
    step_file,
    step_files,
)
from training.config import load_preset
from training.data.dataset import PreparedCorpus, SegmentDataset
from training.loop.checkpoint import load_checkpoint

WARNING = "non-finite loss at step"


def _train_teacher(cli, smoke, data, run_dir, *extra):
    return cli("train", "teacher", "--data", data, "--preset", "smoke", "--device", "cpu",
               *sets(TEACHER_SET), "--prior", smoke.prior, "--run-dir", run_dir,
               *extra)  # fmt: skip


@pytest.fixture(scope="module")
def first_batch_corrupted(smoke, tmp_path_factory):
    """A copy of the smoke corpus whose utterance drawn first (step 0, item 0) has a corrupt mel."""
    data = tmp_path_factory.mktemp("corrupted") / "data"
    shutil.copytree(smoke.data, data)
    preset = load_preset("smoke")
    dataset = SegmentDataset(
        data, "train", preset.segment_samples("teacher"), seed=preset.teacher_training.loop.seed
    )
    dataset.set_epoch(0)
    corrupt_mels(data, [find_utterance(data, dataset[0]["mel"])])
    return data


@pytest.fixture(scope="module")
def skipping_run(smoke, first_batch_corrupted, tmp_path_factory):
    """A 6-step teacher run on that corpus, through the CLI (in this process)."""
    from distilwave.cli import main

    run_dir = tmp_path_factory.mktemp("skipping") / "teacher"
    args = ["train", "teacher", "--data", str(first_batch_corrupted), "--preset", "smoke",
            "--device", "cpu", *sets(TEACHER_SET), "--prior", str(smoke.prior),
            "--run-dir", str(run_dir)]  # fmt: skip
    try:
        main(args)
    except SystemExit as exc:
        pytest.fail(f"training on the partly corrupted corpus exited with {exc.code}")
    return run_dir


def test_nonfinite_loss_steps_are_skipped_counted_and_training_goes_on(skipping_run):
    state = load_checkpoint(step_file(skipping_run, 6))
    warnings = (skipping_run / "train.log").read_text().count(WARNING)
    assert state["step"] == 6
    assert state["skipped_steps"] >= 1
    assert warnings == state["skipped_steps"]
    assert f"{WARNING} 0: step skipped" in (skipping_run / "train.log").read_text()
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_after_skipped_steps_is_exact(
    first_batch_corrupted, skipping_run, cli, tmp_path, smoke
):
    run_dir = copy_run(skipping_run, tmp_path / "teacher", drop_steps=[6])
    result = _train_teacher(cli, smoke, first_batch_corrupted, run_dir, "--resume")
    assert result.code == 0, result.stderr[-2000:]
    resumed = load_checkpoint(step_file(run_dir, 6))
    reference = load_checkpoint(step_file(skipping_run, 6))
    assert differing_tensors(resumed, reference) == []
    assert resumed["skipped_steps"] == reference["skipped_steps"]


@pytest.fixture(scope="module")
def all_corrupted(smoke, tmp_path_factory):
    """A copy of the smoke corpus with every mel corrupted: every step's loss is NaN."""
    data = tmp_path_factory.mktemp("all_corrupted") / "data"
    shutil.copytree(smoke.data, data)
    corrupt_mels(data, [row["id"] for row in PreparedCorpus(data).utterances()])
    return data


def test_too_many_nonfinite_losses_in_a_row_stop_with_the_last_good_checkpoint_intact(
    smoke, all_corrupted, cli, tmp_path
):
    data = all_corrupted
    run_dir = copy_run(smoke.teacher, tmp_path / "teacher")
    good = step_file(run_dir, 6).read_bytes()
    result = _train_teacher(
        cli,
        smoke,
        data,
        run_dir,
        "--resume",
        "--set",
        "teacher_training.loop.steps=9",
        "--set",
        "teacher_training.loop.max_bad_steps=3",
    )
    assert result.code == 1
    assert result.error_lines == [
        "distilwave: error: 3 non-finite batches, losses or gradients in a row at step 6: "
        f"stopping; the last good checkpoint is {step_file(run_dir, 6)}"
    ]
    assert step_files(run_dir) == ["step-00000003.pt", "step-00000006.pt"]
    assert step_file(run_dir, 6).read_bytes() == good
    log = (run_dir / "train.log").read_text()
    assert log.count(f"{WARNING} 6: step skipped") == 3


def test_nonfinite_losses_from_the_first_step_stop_saying_there_is_no_checkpoint(
    smoke, all_corrupted, cli, tmp_path
):
    run_dir = tmp_path / "teacher"
    result = _train_teacher(
        cli, smoke, all_corrupted, run_dir, "--set", "teacher_training.loop.max_bad_steps=2"
    )
    assert result.code == 1
    assert result.error_lines == [
        "distilwave: error: 2 non-finite batches, losses or gradients in a row at step 0: "
        "stopping; no checkpoint yet"
    ]
    assert step_files(run_dir) == []

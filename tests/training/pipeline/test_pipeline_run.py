"""``distilwave pipeline``: the whole smoke job through the real CLI, its report and its record."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from models.bundle import load_bundle
from tests.training.pipeline.support import FIXTURE_CORPUS, step_files
from training.data.dataset import UtteranceDataset

STEPS = ["fetch", "prepare", "prior", "teacher", "student", "evaluate", "export"]
METRICS = {"lsd_db", "mr_stft", "mcd_db", "pesq", "stoi"}


def test_smoke_pipeline_runs_every_step_through_the_cli(smoke_pipeline):
    process = smoke_pipeline.process
    assert process.returncode == 0, process.stderr[-3000:]
    record = json.loads((smoke_pipeline.root / "pipeline.json").read_text())
    assert [name for name in STEPS if record["steps"][name]["done"]] == STEPS
    assert record["steps"]["teacher"]["steps"] == 6
    assert record["steps"]["student"]["steps"] == 6
    assert f"bundle:     {smoke_pipeline.bundle}" in process.stdout
    assert f"evaluation: {smoke_pipeline.eval_dir / 'eval.json'}" in process.stdout


def test_smoke_pipeline_leaves_checkpoints_of_both_jobs(smoke):
    for run in (smoke.teacher, smoke.student):
        assert step_files(run) == ["step-00000003.pt", "step-00000006.pt"]
        assert (run / "checkpoints" / "best.pt").is_file()
        assert (run / "config.yaml").is_file()
        assert any((run / "tensorboard").iterdir())


def test_smoke_pipeline_bundle_loads(smoke):
    bundle = load_bundle(smoke.bundle)
    assert bundle.sample_rate == 8000
    assert (smoke.bundle / "card.json").is_file()


def test_each_job_log_holds_only_its_own_job(smoke):
    teacher_log = (smoke.teacher / "train.log").read_text()
    student_log = (smoke.student / "train.log").read_text()
    assert "teacher done" in teacher_log
    assert "pipeline: student" not in teacher_log
    assert "student done" in student_log
    assert "evaluation written" not in student_log


def test_eval_json_has_the_documented_keys_with_finite_values(smoke):
    report = json.loads((smoke.eval_dir / "eval.json").read_text())
    expected = {"teacher", "student", "resynthesis", "teacher_samples", "speed", "figures"}
    assert expected | {"learning_curves"} <= set(report)
    assert set(report["teacher"]) == {
        "bits_per_sample",
        "bits_per_sample_on_student_output",
        "ar32_baseline_bits_per_sample",
    }
    assert {
        "kl_closed_nats_per_sample",
        "kl_closed_stderr",
        "kl_mc_nats_per_sample",
        "kl_mc_stderr",
    } <= set(report["student"])
    # a pitch student with the prior: its structure alone and the prior alone beside it
    systems = {"student", "griffin_lim", "lpc_noise", "structure_only", "prior"}
    assert set(report["resynthesis"]) == systems
    for name, values in report["resynthesis"].items():
        assert set(values) == METRICS, name
    assert set(report["speed"]) == systems | {"teacher_autoregressive"}
    clips = report["teacher_samples"]
    assert clips["clips"] == report["test_utterances"] and clips["seconds_per_clip"] >= 0.3
    assert set(clips["metrics"]) == {"teacher", "student", "griffin_lim"}
    for values in clips["metrics"].values():
        assert set(values) == METRICS
    numbers = [
        *(v for values in clips["metrics"].values() for v in values.values()),
        *report["teacher"].values(),
        *(v for k, v in report["student"].items() if k != "temperature"),
        *(v for values in report["resynthesis"].values() for v in values.values()),
        *(v for values in report["speed"].values() for v in values.values()),
    ]
    assert all(math.isfinite(v) for v in numbers), numbers


def test_eval_json_lists_every_figure_it_wrote(smoke):
    report = json.loads((smoke.eval_dir / "eval.json").read_text())
    written = sorted(str(p.relative_to(smoke.eval_dir)) for p in smoke.eval_dir.glob("figures/*"))
    assert report["figures"] == written
    names = {Path(p).name for p in written}
    assert "teacher_clip.png" in names
    assert any(name.startswith("spectrogram_0_") for name in names)
    assert "curve_teacher_bits_per_sample__val.png" in names
    assert all((smoke.eval_dir / p).stat().st_size > 1000 for p in written)


def test_eval_audio_holds_every_system_of_the_first_utterance(smoke):
    names = {p.name for p in (smoke.eval_dir / "audio").glob("*.wav")}
    systems = ("real", "student", "griffin_lim", "lpc_noise", "structure_only", "prior")
    for system in (*systems, "clip_teacher", "clip_real", "clip_student", "clip_griffin_lim"):
        assert any(name.endswith(f"_{system}.wav") for name in names), system


def test_learning_curves_cover_every_validation_of_every_job(smoke):
    curves = json.loads((smoke.eval_dir / "eval.json").read_text())["learning_curves"]
    assert len(curves) == 6  # prior (2), teacher (1), student (3)
    for name, points in curves.items():
        assert [step for step, _ in points] == [3, 6], name


def test_pipeline_resume_of_a_finished_run_redoes_nothing(smoke, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke.root, run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")}
    result = cli(
        "pipeline", "--preset", "smoke", "--source", FIXTURE_CORPUS, "--run-dir", run, "--resume"
    )
    assert result.code == 0, result.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")} == before
    for name in STEPS:
        assert f"  {name:<9}" in result.stdout


def test_pipeline_into_a_used_run_dir_without_resume_is_a_one_line_error(smoke, cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(smoke.root / "pipeline.json", run / "pipeline.json")
    result = cli("pipeline", "--preset", "smoke", "--source", FIXTURE_CORPUS, "--run-dir", run)
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"distilwave: error: {run} already holds a pipeline run: pass --resume or another --run-dir"
    ]


def test_teacher_clips_also_sample_the_teacher_at_the_served_temperature(smoke):
    """At a served temperature other than 1 the teacher is sampled there too: at 0 its mean
    path, deterministic whatever the generator, beside its temperature-1 samples."""
    from training.evaluation.teacher_samples import teacher_clips
    from training.recipes.common import load_student, load_teacher

    cpu = torch.device("cpu")
    teacher = load_teacher(smoke.teacher, cpu).eval()
    student, preset, _ = load_student(smoke.student, cpu)
    test = UtteranceDataset(smoke.data, "test", max_seconds=1.0, limit=2)
    items = [test[i] for i in range(len(test))]
    assert items
    preset = preset.model_copy(
        update={"evaluation": preset.evaluation.model_copy(update={"temperature": 0.0})}
    )
    runs = [
        teacher_clips(preset, teacher, student.eval(), items, torch.Generator().manual_seed(s))
        for s in (0, 1)
    ]
    for clips in runs:
        assert set(clips["metrics"]) == {"teacher", "teacher_served", "student", "griffin_lim"}
        assert clips["temperature"] == {"teacher": 1.0, "student": 0.0, "teacher_served": 0.0}
    first, second = (run["first_clip"] for run in runs)
    assert np.array_equal(first["teacher_served"], second["teacher_served"])
    assert not np.array_equal(first["teacher"], second["teacher"])
    assert not np.array_equal(first["teacher_served"], first["teacher"])

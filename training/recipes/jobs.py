"""Training jobs as functions (the CLI and the pipeline both call these)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from models.errors import UserError
from training.config import LoopConfig, Preset
from training.data.dataset import SegmentDataset
from training.loop.batches import training_batches
from training.loop.distributed import DistInfo, barrier, init_distributed, shutdown
from training.loop.runs import attach_log_file, write_snapshot
from training.loop.trainer import LoopResult, Recipe, Trainer
from training.recipes.common import load_teacher
from training.recipes.student import DistillRecipe
from training.recipes.teacher import TeacherRecipe

log = logging.getLogger(__name__)


def resolve_run_dir(preset: Preset, job: str, run_dir: Path | None, resume: bool) -> Path:
    """The run directory: given, or ``runs/<preset>-<job>-<id>`` (same on every torchrun rank)."""
    if run_dir is None:
        if resume:
            raise UserError("--resume needs --run-dir (the run to continue)")
        run_id = os.environ.get("TORCHELASTIC_RUN_ID") or time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{preset.name}-{job}-{run_id}"
    checkpoints = run_dir / "checkpoints"
    has_checkpoints = checkpoints.is_dir() and any(checkpoints.glob("step-*.pt"))
    if has_checkpoints and not resume:
        raise UserError(f"{run_dir} already holds checkpoints: pass --resume, or another --run-dir")
    return run_dir


def check_device(device: str) -> None:
    """A ``--device`` value this machine can honour (auto, cpu, or cuda when there is one)."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available")


def _join(device: str) -> DistInfo:
    """This process's place in the (torchrun) job, with a bad ``--device`` as a user error."""
    check_device(device)
    return init_distributed(device)


def _setup(loop: LoopConfig, dist: DistInfo) -> None:
    if loop.threads is not None:
        torch.set_num_threads(loop.threads)
    torch.manual_seed(loop.seed + dist.rank)


def _run(
    recipe: Recipe,
    preset: Preset,
    loop: LoopConfig,
    job: str,
    data_dir: Path,
    run_dir: Path,
    resume: bool,
    dist: DistInfo,
    segment_samples: int,
    extra: dict[str, str],
) -> LoopResult:
    optim = preset.teacher_training.optim if job == "teacher" else preset.distillation.optim
    snapshot = {
        "preset": preset.model_dump(mode="json"),
        "optim": optim.model_dump(mode="json"),
        "data": str(data_dir),
        **extra,
    }
    handler: logging.Handler | None = None
    if dist.is_main:
        handler = attach_log_file(run_dir)
    try:
        barrier(dist)
        dataset = SegmentDataset(
            data_dir,
            "train",
            segment_samples=segment_samples,
            dequantize=preset.data.dequantize,
            seed=loop.seed,
        )

        def batches(start: int) -> object:
            return training_batches(dataset, loop.batch_size, dist, loop.num_workers, start)

        trainer = Trainer(recipe, loop, optim, run_dir, dist, batches, snapshot)  # type: ignore[arg-type]
        if resume and not trainer.resume():
            log.warning("nothing to resume in %s: starting from scratch", run_dir)
        if dist.is_main:  # after a resume that fits: a refused one leaves the snapshot alone
            write_snapshot(run_dir, preset, {"job": job, "data": str(data_dir), **extra})
        if trainer.step >= loop.steps:
            log.info("%s already finished (%d steps) in %s", job, trainer.step, run_dir)
        result = trainer.fit()
        log.info(
            "%s done: step %d, %s, %.1f min, best validation %.4g; checkpoints in %s",
            job,
            result.step,
            result.stopped,
            result.elapsed_seconds / 60,
            result.best_metric,
            result.checkpoint_dir,
        )
        return result
    finally:
        # the run's log file gets this run's lines only (the pipeline runs several jobs)
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def run_teacher(
    preset: Preset, data_dir: Path, run_dir: Path | None, resume: bool, device: str = "auto"
) -> tuple[LoopResult, Path]:
    """Train the teacher by maximum likelihood; returns the result and the run directory."""
    dist = _join(device)
    try:
        loop = preset.teacher_training.loop
        _setup(loop, dist)
        run_dir = resolve_run_dir(preset, "teacher", run_dir, resume)
        recipe = TeacherRecipe(preset, data_dir, dist)
        result = _run(
            recipe,
            preset,
            loop,
            "teacher",
            data_dir,
            run_dir,
            resume,
            dist,
            preset.segment_samples("teacher"),
            {},
        )
        return result, run_dir
    finally:
        shutdown(dist)


def run_student(
    preset: Preset,
    data_dir: Path,
    teacher_path: Path,
    run_dir: Path | None,
    resume: bool,
    device: str = "auto",
) -> tuple[LoopResult, Path]:
    """Distil the student from a trained teacher; returns the result and the run directory."""
    dist = _join(device)
    try:
        loop = preset.distillation.loop
        _setup(loop, dist)
        run_dir = resolve_run_dir(preset, "student", run_dir, resume)
        teacher = load_teacher(teacher_path, dist.device)
        recipe = DistillRecipe(preset, data_dir, teacher, dist)
        result = _run(
            recipe,
            preset,
            loop,
            "student",
            data_dir,
            run_dir,
            resume,
            dist,
            preset.segment_samples("student"),
            {"teacher": str(teacher_path)},
        )
        return result, run_dir
    finally:
        shutdown(dist)

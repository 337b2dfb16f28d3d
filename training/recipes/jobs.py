"""Training jobs as functions (the CLI and the pipeline both call these)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from models.errors import UserError
from training.config import Job, LoopConfig, Preset
from training.data.dataset import SegmentDataset
from training.loop.batches import training_batches
from training.loop.distributed import DistInfo, barrier, init_distributed, shutdown
from training.loop.runs import attach_log_file, write_snapshot
from training.loop.trainer import LoopResult, Recipe, Trainer
from training.recipes.common import load_prior, load_teacher
from training.recipes.prior import PriorRecipe
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
    job: Job,
    data_dir: Path,
    run_dir: Path,
    resume: bool,
    dist: DistInfo,
    extra: dict[str, str],
) -> LoopResult:
    loop, optim = preset.job_loop(job), preset.job_optim(job)
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
            segment_samples=preset.segment_samples(job),
            dequantize=preset.data.dequantize,
            seed=loop.seed,
            speed_range=preset.prior_training.speed_range if job == "prior" else None,
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


def run_job(
    job: Job,
    preset: Preset,
    data_dir: Path,
    run_dir: Path | None,
    resume: bool,
    device: str = "auto",
    upstream: Path | None = None,
) -> tuple[LoopResult, Path]:
    """Train one job (``prior``, ``teacher`` or ``student``); returns the result and the run.

    ``upstream`` is the run this job starts from: the prior run for a teacher with the prior,
    the teacher run for the student.
    """
    dist = _join(device)
    try:
        _setup(preset.job_loop(job), dist)
        run_dir = resolve_run_dir(preset, job, run_dir, resume)
        extra: dict[str, str] = {}
        recipe: Recipe
        if job == "prior":
            if not preset.uses_prior:
                raise UserError(f"preset {preset.name!r} has no prior (student.prior.enabled)")
            recipe = PriorRecipe(preset, data_dir, dist)
        elif job == "teacher":
            prior = None
            if upstream is not None and not preset.uses_prior:
                log.info("preset %r has no prior: %s is not used", preset.name, upstream)
            if preset.uses_prior:
                if upstream is None:
                    raise UserError("this teacher models x - h: pass --prior (the prior run)")
                prior = load_prior(upstream, dist.device)
                extra["prior"] = str(upstream)
            recipe = TeacherRecipe(preset, data_dir, dist, prior)
        else:
            if upstream is None:
                raise UserError("distillation needs --teacher (the teacher run)")
            recipe = DistillRecipe(preset, data_dir, load_teacher(upstream, dist.device), dist)
            extra["teacher"] = str(upstream)
        return _run(recipe, preset, job, data_dir, run_dir, resume, dist, extra), run_dir
    finally:
        shutdown(dist)

"""``distilwave train teacher|student``: one training job each, resumable, torchrun-ready."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from distilwave.cli.options import (
    DataOption,
    DeviceOption,
    PresetOption,
    ResumeOption,
    RunDirOption,
    SetOption,
)
from training.config import load_preset

app = typer.Typer(
    rich_markup_mode=None,
    help="Train the prior (spectral losses), the teacher (maximum likelihood) or distil the "
    "student (reverse KL).",
    no_args_is_help=True,
)


def _main_rank() -> bool:
    """Under torchrun only rank 0 prints the summary."""
    return os.environ.get("RANK", "0") == "0"


@app.command("prior")
def prior(
    data: DataOption,
    preset: PresetOption = "cpu-8k",
    overrides: SetOption = None,
    run_dir: RunDirOption = None,
    resume: ResumeOption = False,
    device: DeviceOption = "auto",
) -> None:
    """Train the mel-inversion prior (presets with student.prior.enabled) with spectral losses."""
    from training.recipes.jobs import run_job

    config = load_preset(preset, overrides)
    if not config.uses_prior:  # so a fixed job list (docker compose) runs any preset
        typer.echo(f"prior: preset {config.name!r} has no prior (student.prior); nothing to do")
        return
    result, where = run_job("prior", config, data, run_dir, resume, device)
    if _main_rank():
        typer.echo(
            f"prior: {result.step} steps ({result.stopped}), best log-mel L1 "
            f"{result.best_metric:.4f}; run in {where}"
        )


@app.command("teacher")
def teacher(
    data: DataOption,
    preset: PresetOption = "cpu-8k",
    overrides: SetOption = None,
    run_dir: RunDirOption = None,
    resume: ResumeOption = False,
    prior: Annotated[
        Path | None,
        typer.Option("--prior", help="prior run (presets with the prior; else unused)"),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Train the Gaussian WaveNet teacher (MAF) by maximum likelihood on a prepared corpus.

    Under torchrun (`torchrun --nproc-per-node N -m distilwave.cli train teacher ...`) it runs
    DistributedDataParallel; rank 0 writes checkpoints.
    """
    from training.recipes.jobs import run_job

    config = load_preset(preset, overrides)
    result, where = run_job("teacher", config, data, run_dir, resume, device, prior)
    if _main_rank():
        typer.echo(
            f"teacher: {result.step} steps ({result.stopped}), best bits/sample "
            f"{result.best_metric:.3f}; run in {where}"
        )


@app.command("student")
def student(
    data: DataOption,
    teacher: Annotated[
        Path,
        typer.Option("--teacher", exists=True, help="teacher run directory or checkpoint file"),
    ],
    preset: PresetOption = "cpu-8k",
    overrides: SetOption = None,
    run_dir: RunDirOption = None,
    resume: ResumeOption = False,
    kl: Annotated[
        Literal["closed", "mc"] | None,
        typer.Option("--kl", help="closed-form per-step KL (default) or Monte-Carlo reverse KL"),
    ] = None,
    device: DeviceOption = "auto",
) -> None:
    """Distil the parallel IAF student from a trained teacher (reverse KL + spectral loss)."""
    from training.recipes.jobs import run_job

    extra = list(overrides or [])
    if kl is not None:
        extra.append(f"distillation.kl={kl}")
    config = load_preset(preset, extra)
    result, where = run_job("student", config, data, run_dir, resume, device, teacher)
    if _main_rank():
        typer.echo(
            f"student: {result.step} steps ({result.stopped}), best validation "
            f"{result.best_metric:.4g}; run in {where}"
        )

"""``distilwave evaluate | export | pipeline``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from distilwave.cli.options import DataOption, DeviceOption, PresetOption, ResumeOption, SetOption
from models.errors import UserError
from training.config import load_preset


def evaluate_command(
    data: DataOption,
    teacher: Annotated[Path, typer.Option("--teacher", exists=True, help="teacher run or ckpt")],
    student: Annotated[Path, typer.Option("--student", exists=True, help="student run or ckpt")],
    out: Annotated[Path, typer.Option("--out", help="directory for eval.json, figures, audio")],
    preset: PresetOption = "cpu-8k",
    overrides: SetOption = None,
) -> None:
    """Evaluate teacher and student on the held-out test split, next to the baselines.

    Writes eval.json (teacher bits/sample vs an AR(32) predictor, student KL both ways,
    LSD / MR-STFT / MCD / PESQ / STOI of the student at the preset's temperature and at 1, the
    prior h(mel) alone, Griffin-Lim, an LPC noise vocoder and the teacher's own samples on short
    clips, generation speeds), spectrogram figures and audio files.
    """
    from training.evaluation.evaluate import evaluate
    from training.recipes.common import load_student, load_teacher

    config = load_preset(preset, overrides)
    cpu = torch.device("cpu")
    report = evaluate(config, data, load_teacher(teacher, cpu), load_student(student, cpu)[0], out)
    typer.echo(json.dumps({k: report[k] for k in ("teacher", "student", "resynthesis")}, indent=2))
    typer.echo(f"report: {out / 'eval.json'}")


def export_command(
    student: Annotated[Path, typer.Option("--student", exists=True, help="student run or ckpt")],
    out: Annotated[Path, typer.Option("--out", help="bundle directory to write")],
    data: Annotated[
        Path | None, typer.Option("--data", exists=True, help="prepared corpus (for the card)")
    ] = None,
    eval_json: Annotated[
        Path | None, typer.Option("--eval", exists=True, help="eval.json to put in the card")
    ] = None,
) -> None:
    """Export the trained student as a self-contained bundle (config, weights, model card)."""
    from training.export import export_bundle

    export_bundle(student, out, data, eval_json)
    typer.echo(f"bundle: {out}")


def pipeline_command(
    preset: PresetOption = "cpu-8k",
    overrides: SetOption = None,
    source: Annotated[
        Path | None,
        typer.Option("--source", exists=True, file_okay=False, help="your corpus folder"),
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir")] = None,
    resume: ResumeOption = False,
    device: DeviceOption = "auto",
) -> None:
    """The whole job: fetch -> prepare -> prior -> teacher -> student -> evaluate -> export.

    Uses the default corpus (asterisk-core-sounds-en-wav) unless --source or data.corpus says
    otherwise; everything lands in --run-dir (default runs/<preset>-<timestamp>). The prior
    stage runs when the student has the mel-inversion prior.
    """
    from training.pipeline import run_pipeline

    config = load_preset(preset, overrides)
    if run_dir is None:
        if resume:
            raise UserError("--resume needs --run-dir (the pipeline run to continue)")
        run_dir = Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    record = run_pipeline(config, run_dir, source, resume, device)
    typer.echo("")
    for name, info in record["steps"].items():
        typer.echo(f"  {name:<9} {info.get('seconds', float('nan')):>8.1f} s")
    summary = record["steps"].get("evaluate", {}).get("summary")
    if summary:
        typer.echo("  " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    typer.echo(f"bundle:     {record['bundle']}")
    typer.echo(f"evaluation: {record['eval']}")

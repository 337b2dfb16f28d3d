"""``distilwave pipeline``: fetch -> prepare -> [prior] -> teacher -> student -> evaluate -> export.

Everything lands in one run directory; ``pipeline.json`` records each finished step with its
wall time, so ``--resume`` skips what is done and continues a killed training step from its
last checkpoint.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.errors import UserError
from models.files import atomic_write_json
from training.config import Job, Preset
from training.data.fetch import resolve_corpus
from training.data.prepare import prepare_corpus
from training.evaluation.evaluate import evaluate
from training.export import export_bundle
from training.loop.checkpoint import CheckpointManager
from training.recipes.common import load_student, load_teacher
from training.recipes.jobs import check_device, run_job

log = logging.getLogger(__name__)


def peak_memory_mb() -> float:
    """Peak resident memory of this process and its finished children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def _last_state(run_dir: Path) -> dict[str, Any]:
    """The newest checkpoint of a run (not best.pt, whose history stops at the best step)."""
    found = CheckpointManager(run_dir / "checkpoints", keep=1).latest()
    if found is None:
        raise UserError(f"{run_dir} holds no checkpoint")
    return found[1]


def _histories(
    teacher_dir: Path, student_dir: Path, prior_dir: Path | None
) -> dict[str, list[tuple[float, float]]]:
    """Validation curves stored in the runs' last checkpoints."""
    curves: dict[str, list[tuple[float, float]]] = {}
    if prior_dir is not None:
        rows = _last_state(prior_dir)["recipe"].get("history", [])
        curves["prior log-mel L1 (val)"] = [(r[0], r[1]) for r in rows]
        curves["prior LSD (val, dB)"] = [(r[0], r[2]) for r in rows]
    teacher = _last_state(teacher_dir)
    curves["teacher bits per sample (val)"] = [(p[0], p[1]) for p in teacher["recipe"]["history"]]
    student = _last_state(student_dir)
    rows = student["recipe"].get("history", [])
    curves["student KL closed form (val, nats per sample)"] = [(r[0], r[1]) for r in rows]
    curves["student KL Monte Carlo (val, nats per sample)"] = [(r[0], r[2]) for r in rows]
    curves["student MR-STFT (val)"] = [(r[0], r[3]) for r in rows]
    return curves


def run_pipeline(
    preset: Preset,
    run_dir: Path,
    source: Path | None = None,
    resume: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Run every step of ``preset`` into ``run_dir``; returns the pipeline record."""
    check_device(device)  # before hours of fetching and preparing, not at the teacher
    record_path = run_dir / "pipeline.json"
    if record_path.is_file() and not resume:
        raise UserError(
            f"{run_dir} already holds a pipeline run: pass --resume or another --run-dir"
        )
    record: dict[str, Any] = (
        json.loads(record_path.read_text()) if record_path.is_file() else {"steps": {}}
    )
    record["preset"] = preset.name
    run_dir.mkdir(parents=True, exist_ok=True)
    names = ("data", "prior", "teacher", "student", "eval", "bundle")
    paths = {name: run_dir / name for name in names}

    def step(name: str, action: Callable[[], Any]) -> None:
        if record["steps"].get(name, {}).get("done"):
            log.info("pipeline: %s already done, skipping", name)
            return
        log.info("pipeline: %s ...", name)
        start = time.monotonic()
        detail = action()
        record["steps"][name] = {
            "done": True,
            "seconds": round(time.monotonic() - start, 1),
            "peak_memory_mb": round(peak_memory_mb(), 1),
            **(detail or {}),
        }
        atomic_write_json(record_path, record)

    corpus: dict[str, Path] = {}

    def fetch() -> dict[str, Any]:
        corpus["path"] = source if source is not None else resolve_corpus(preset.data.corpus)
        return {"corpus": str(corpus["path"])}

    def prepare() -> dict[str, Any]:
        src = corpus.get("path") or Path(record["steps"]["fetch"]["corpus"])
        report = prepare_corpus(src, paths["data"], preset)
        return {"kept": report.get("counts", {}).get("kept"), "report": str(paths["data"])}

    def train(job: Job, upstream: Path | None) -> Callable[[], dict[str, Any]]:
        def action() -> dict[str, Any]:
            resume_job = (paths[job] / "checkpoints").is_dir()
            result, _ = run_job(
                job, preset, paths["data"], paths[job], resume_job, device, upstream
            )
            return {
                "steps": result.step,
                "stopped": result.stopped,
                "best_metric": result.best_metric,
            }

        return action

    def evaluation() -> dict[str, Any]:
        cpu = torch.device("cpu")
        teacher_model = load_teacher(paths["teacher"], cpu)
        student_model, _, _ = load_student(paths["student"], cpu)
        prior_dir = paths["prior"] if preset.uses_prior else None
        curves = _histories(paths["teacher"], paths["student"], prior_dir)
        report = evaluate(
            preset, paths["data"], teacher_model, student_model, paths["eval"], curves
        )
        return {"eval": str(paths["eval"] / "eval.json"), "summary": _summary(report)}

    def export() -> dict[str, Any]:
        export_bundle(paths["student"], paths["bundle"], paths["data"], paths["eval"] / "eval.json")
        return {"bundle": str(paths["bundle"])}

    prior_step = [("prior", train("prior", None))] if preset.uses_prior else []
    for name, action in [
        ("fetch", fetch),
        ("prepare", prepare),
        *prior_step,
        ("teacher", train("teacher", paths["prior"] if preset.uses_prior else None)),
        ("student", train("student", paths["teacher"])),
        ("evaluate", evaluation),
        ("export", export),
    ]:
        step(name, action)
    record["bundle"] = str(paths["bundle"])
    record["eval"] = str(paths["eval"] / "eval.json")
    atomic_write_json(record_path, record)
    return record


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    resynthesis = report["resynthesis"]
    return {
        "teacher_bits": round(report["teacher"]["bits_per_sample"], 3),
        "ar32_bits": round(report["teacher"]["ar32_baseline_bits_per_sample"], 3),
        "kl_closed": round(report["student"]["kl_closed_nats_per_sample"], 4),
        "kl_mc": round(report["student"]["kl_mc_nats_per_sample"], 4),
        **{
            f"{name}_{metric}": round(values[metric], 3)
            for name, values in resynthesis.items()
            for metric in ("lsd_db", "pesq")
        },
    }

"""``distilwave bench``: speed figures measured side by side in one run, written as JSON.

Sections (``benchmarks/``): 1. generation (``generation.py``): the student (the bundle's fast
path, and the plain module), the teacher's cached and naive autoregressive sampling, and
Griffin-Lim, batch 1 and 8, 1 s and 4 s, from the same real-speech mel; 2. limit and 3. scaling
(``limits.py``): FLOPs per sample from the modules against this CPU's matmul peak, and time and
memory against length; 4. generalisation (``generalisation.py``): voices the corpus lacks,
against Griffin-Lim; 5. training (``training_speed.py``): steps per second, 1 process and 2
torchrun processes; 6. service: ``service.loadtest`` (throughput and latency under load).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, Models, load_models, machine, newest, speech
from benchmarks.generation import generation
from benchmarks.limits import limit, scaling, thread_counts
from benchmarks.training_speed import training_section
from models.errors import UserError
from models.files import atomic_write_json

log = logging.getLogger(__name__)

SECTIONS = ("generation", "limit", "scaling", "generalisation", "training", "service")


def service(
    bundle: str, untrained: Path | None, seconds: float, timeout: float = 900.0
) -> dict[str, Any]:
    """``python -m service.loadtest`` on the same bundle, if the service ships it."""
    try:
        import service.loadtest  # noqa: F401
    except ImportError:
        return {"skipped": "service.loadtest is not available"}
    path = untrained if untrained is not None else Path(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "loadtest.json"
        command = [sys.executable, "-m", "service.loadtest", "--bundle", str(path)]
        command += ["--max-seconds", str(seconds), "--out", str(out)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"failed": f"timed out after {timeout:.0f} s"}
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"failed": " | ".join(tail)}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def generalisation_section(
    models: Models, quick: bool, data: Path | None, recordings: list[Path] | None = None
) -> dict[str, Any]:
    """Voices the corpus lacks (espeak-ng, pitch-shifted fixtures, with a prepared corpus its
    pitch-shifted test split, and folders of your own recordings) against Griffin-Lim."""
    from benchmarks.generalisation import (
        SHIFTS,
        espeak_set,
        recordings_set,
        score,
        shifted_set,
        test_split_sets,
    )

    if not models.trained:
        return {"skipped": "an untrained student: quality means nothing (run `make demo`)"}
    rate = models.vocoder.sample_rate
    sets = {name: shifted_set(rate, semitones) for name, semitones in SHIFTS.items()}
    try:
        sets["espeak"] = espeak_set(rate)
    except SystemExit as exc:
        sets_note = str(exc)
    else:
        sets_note = ""
    if data is not None and (data / "manifest.jsonl").is_file():
        sets.update(test_split_sets(data, rate))
    for folder in recordings or []:
        sets[folder.name] = recordings_set(folder, rate)
    if quick:
        sets = {name: clips[:2] for name, clips in sets.items()}
    result: dict[str, Any] = {name: score(models.vocoder, clips, 0) for name, clips in sets.items()}
    if sets_note:
        result["note"] = sets_note
    return result


def run_benchmarks(
    bundle: Path | None,
    teacher: Path | None,
    data: Path | None,
    preset: str,
    out: Path | None,
    sections: list[str],
    quick: bool,
    chunk: int,
    threads: int,
    teacher_threads: int,
    recordings: list[Path] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Run the chosen sections; write the JSON report and return it with its path."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    chosen = sections
    torch.set_num_threads(threads or os.cpu_count() or 1)
    runs = 1 if quick else 3
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "sections": chosen}
    with tempfile.TemporaryDirectory() as tmp:
        models = load_models(bundle, teacher, preset, chunk, Path(tmp))
        report["models"] = {
            "bundle": models.bundle,
            "teacher": models.teacher_source,
            "trained": models.trained,
            "student_config": models.student.config.model_dump(mode="json"),
            "teacher_config": models.teacher.config.model_dump(mode="json"),
            "student_parameters": sum(p.numel() for p in models.student.parameters()),
            "teacher_parameters": sum(p.numel() for p in models.teacher.parameters()),
            "inference_chunk": chunk,
        }
        durations = [0.1, 0.2] if quick else [1.0, 4.0]
        scale = [0.1, 0.2, 0.4] if quick else [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
        convention = models.vocoder.audio
        audio = speech(
            models.student.mel_config, max(scale) + 1, convention.loudness_lufs,
            convention.peak_limit,
        )  # fmt: skip
        if "generation" in chosen or "limit" in chosen:
            batches = [1, 2] if quick else [1, 8]
            report["generation"] = generation(
                models, audio, batches, durations, runs, 0.5 if quick else 4.0, teacher_threads
            )
        if "limit" in chosen:
            report["limit"] = limit(models, report["generation"]["rows"])
            report["limit"]["threads"] = thread_counts(models, audio, durations[-1], runs)
        if "scaling" in chosen:
            report["scaling"] = scaling(models, audio, scale, runs)
        if "generalisation" in chosen:
            report["generalisation"] = generalisation_section(
                models, quick, data or newest("*/data"), recordings
            )
        if "training" in chosen:
            report["training"] = training_section(
                data, teacher or newest("*/teacher"), preset, 1 if quick else 3
            )
        if "service" in chosen:
            untrained = Path(tmp) / "untrained-bundle" if not Path(models.bundle).is_dir() else None
            report["service"] = service(models.bundle, untrained, 5.0 if quick else 20.0)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["bench_seconds"] = time.perf_counter() - started
    if out is None:
        out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_json(out, report, sort_keys=False)
    return report, out

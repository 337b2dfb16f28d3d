"""Sections 2 and 3 of ``distilwave bench``: how close the student runs to this CPU's limit
(FLOPs per sample from its modules, the achieved GFLOP/s, the fp32 matmul peak measured now,
1 thread and every core), and how its time and memory grow with the clip's length."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Models, mels, timed
from benchmarks.generation import student_batch


def matmul_peak(size: int = 2048, runs: int = 5) -> float:
    """fp32 GFLOP/s of a large ``torch.matmul`` with the current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = timed(lambda: torch.matmul(a, b), runs)["seconds"]
    return 2 * size**3 / seconds / 1e9


def thread_counts(models: Models, audio: np.ndarray, seconds: float, runs: int) -> list[dict]:
    """Student (batch 1) and matmul peak at 1 thread and at every core, same run."""
    counts = sorted({1, os.cpu_count() or 1})
    mel = mels(models.student, audio, seconds, 1)
    previous, rows = torch.get_num_threads(), []
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                result = timed(lambda: student_batch(models, mel), runs)
            rate = (mel.shape[-1] - 1) * models.student.hop_length / result["seconds"]
            rows.append(
                {
                    "threads": threads,
                    "samples_per_second": rate,
                    "x_real_time": rate / models.student.sample_rate,
                    "matmul_peak_gflops": matmul_peak(),
                }
            )
    finally:
        torch.set_num_threads(previous)
    return rows


def limit(models: Models, rows: list[dict[str, Any]]) -> dict[str, Any]:
    flops = models.student.flops_per_sample()
    peak = matmul_peak()
    achieved = []
    for row in rows:
        gflops = flops["total"] * row["student"]["samples_per_second"] / 1e9
        achieved.append(
            {
                "batch": row["batch"],
                "audio_seconds": row["audio_seconds"],
                "gflops": gflops,
                "fraction_of_peak": gflops / peak,
            }
        )
    return {"flops_per_sample": flops, "matmul_peak_gflops": peak, "achieved": achieved}


def _resident_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def scaling(models: Models, audio: np.ndarray, durations: list[float], runs: int) -> dict:
    """Generation time and peak memory (growth of resident memory) against length."""
    rows = []
    for seconds in durations:
        mel = mels(models.student, audio, seconds, 1)

        def run(m: torch.Tensor = mel) -> object:
            return student_batch(models, m)

        with torch.inference_mode():
            result = timed(run, runs)
            before = _resident_mb("VmRSS")
            peak = None
            if _reset_peak() and before is not None:
                run()
                high = _resident_mb("VmHWM")
                peak = None if high is None else max(high - before, 0.0)
        rows.append({"audio_seconds": seconds, "seconds": result["seconds"], "peak_mb": peak})
    x = np.log([r["audio_seconds"] for r in rows])
    y = np.log([r["seconds"] for r in rows])
    exponent = float(np.polyfit(x, y, 1)[0]) if len(rows) > 1 else float("nan")
    long = [r for r in rows if r["audio_seconds"] >= 2]
    exponent_long = (
        float(
            np.polyfit(
                np.log([r["audio_seconds"] for r in long]), np.log([r["seconds"] for r in long]), 1
            )[0]
        )
        if len(long) > 1
        else float("nan")
    )
    return {"rows": rows, "exponent": exponent, "exponent_from_2s": exponent_long}

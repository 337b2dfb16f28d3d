"""Training throughput for ``distilwave bench``: timed optimiser steps, one process or torchrun.

    torchrun --nproc-per-node 2 -m benchmarks.training_speed --data DIR --job teacher --out r.json

Each step is the real objective (teacher NLL, or the distillation loss through the frozen
teacher), backward, gradient clipping and AdamW, under DistributedDataParallel when torchrun
starts more than one process. Step times are taken between barriers after warm-up steps;
rank 0 writes the median as audio samples per second (all processes together).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from benchmarks.common import newest
from models.files import atomic_write_json
from models.prior import MelInversionPrior
from models.teacher import GaussianWaveNet
from training.config import load_preset
from training.data.dataset import SegmentDataset
from training.loop.batches import training_batches
from training.loop.distributed import barrier, init_distributed, shutdown
from training.loop.optim import make_optimizer
from training.recipes.common import load_teacher
from training.recipes.prior import PriorRecipe
from training.recipes.student import DistillRecipe
from training.recipes.teacher import TeacherRecipe

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    """Time ``args.steps`` optimiser steps of ``args.job`` after ``args.warmup`` steps."""
    dist = init_distributed("cpu")
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(dist.rank)
        preset = load_preset(args.preset)
        recipe: PriorRecipe | TeacherRecipe | DistillRecipe
        if args.job == "prior":
            recipe = PriorRecipe(preset, args.data, dist)
        elif args.job == "teacher":
            prior = None
            if preset.uses_prior:  # an untrained prior: the step costs the same
                prior = MelInversionPrior(preset.student.prior, preset.mel)
            recipe = TeacherRecipe(preset, args.data, dist, prior)
        else:
            if args.teacher is not None:
                teacher = load_teacher(args.teacher, dist.device)
            else:
                teacher = GaussianWaveNet(preset.teacher, preset.mel).eval()
            recipe = DistillRecipe(preset, args.data, teacher, dist)
        loop, optim = preset.job_loop(args.job), preset.job_optim(args.job)
        segment = preset.segment_samples(args.job)
        dataset = SegmentDataset(args.data, "train", segment_samples=segment, seed=0)
        batches = training_batches(dataset, loop.batch_size, dist, 0, 0)
        objective: nn.Module = recipe.objective
        if dist.distributed:
            objective = DistributedDataParallel(objective)
        params = [p for p in recipe.model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, optim)
        objective.train()
        times = []
        for index in range(args.warmup + args.steps):
            batch = next(batches)
            barrier(dist)
            start = time.perf_counter()
            loss = objective(batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
            optimizer.step()
            barrier(dist)
            if index >= args.warmup:
                times.append(time.perf_counter() - start)
        step = statistics.median(times)
        per_step = dist.world_size * loop.batch_size * segment
        return {
            "job": args.job,
            "processes": dist.world_size,
            "threads_per_process": torch.get_num_threads(),
            "batch_per_process": loop.batch_size,
            "segment_samples": segment,
            "steps_timed": len(times),
            "seconds_per_step": step,
            "samples_per_second": per_step / step,
            "rank": dist.rank,
        }
    finally:
        shutdown(dist)


def training_section(
    data: Path | None, teacher: Path | None, preset: str, steps: int, timeout: float = 900.0
) -> dict:
    """Training throughput with 1 process and 2 torchrun processes (subprocesses)."""
    data = data or newest("*/data")
    if data is None or not (data / "prepared.json").is_file():
        return {"skipped": "no prepared corpus (pass --data or run `make demo` first)"}
    results: dict[str, Any] = {"data": str(data), "preset": preset}
    jobs = (
        ("prior", "teacher", "student")
        if load_preset(preset).uses_prior
        else ("teacher", "student")
    )
    for job in jobs:
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "result.json"
                args = ["--data", str(data), "--job", job, "--preset", preset]
                args += ["--steps", str(steps), "--out", str(out)]
                if job == "student" and teacher is not None:
                    args += ["--teacher", str(teacher)]
                env = dict(os.environ)
                if processes == 1:
                    command = [sys.executable, "-m", "benchmarks.training_speed", *args]
                else:
                    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // processes))
                    command = [
                        sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", str(processes), "-m", "benchmarks.training_speed",
                        *args,
                    ]  # fmt: skip
                key = f"{job}_{processes}proc"
                try:
                    done = subprocess.run(
                        command, env=env, capture_output=True, text=True, timeout=timeout
                    )
                except subprocess.TimeoutExpired:
                    results[key] = {"failed": f"timed out after {timeout:.0f} s"}
                    continue
                if done.returncode != 0 or not out.is_file():
                    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                    results[key] = {"failed": " | ".join(tail)}
                else:
                    results[key] = json.loads(out.read_text())
                log.info("training %s: %s", key, results[key])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared corpus")
    parser.add_argument("--job", choices=["prior", "teacher", "student"], required=True)
    parser.add_argument("--preset", default="cpu-8k")
    parser.add_argument("--teacher", type=Path, help="teacher run (distillation; else random)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run(args)
    if result["rank"] == 0:
        atomic_write_json(args.out, result, sort_keys=False)


if __name__ == "__main__":
    main()

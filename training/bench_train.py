"""Training throughput for ``distilwave bench``: timed optimiser steps, one process or torchrun.

    torchrun --nproc-per-node 2 -m training.bench_train --data DIR --job teacher --out r.json

Each step is the real objective (teacher NLL, or the distillation loss through the frozen
teacher), backward, gradient clipping and AdamW, under DistributedDataParallel when torchrun
starts more than one process. Step times are taken between barriers after warm-up steps;
rank 0 writes the median as audio samples per second (all processes together).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.teacher import GaussianWaveNet
from training.batches import training_batches
from training.config import load_preset
from training.data.dataset import SegmentDataset
from training.distill_job import DistillRecipe
from training.distributed import barrier, init_distributed, shutdown
from training.optim import make_optimizer
from training.teacher_job import TeacherRecipe, load_teacher


def run(args: argparse.Namespace) -> dict[str, float | int | str]:
    """Time ``args.steps`` optimiser steps of ``args.job`` after ``args.warmup`` steps."""
    dist = init_distributed("cpu")
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(dist.rank)
        preset = load_preset(args.preset)
        if args.job == "teacher":
            recipe: TeacherRecipe | DistillRecipe = TeacherRecipe(preset, args.data, dist)
            loop, optim = preset.teacher_training.loop, preset.teacher_training.optim
        else:
            if args.teacher is not None:
                teacher = load_teacher(args.teacher, dist.device)
            else:
                teacher = GaussianWaveNet(preset.teacher, preset.mel).eval()
            recipe = DistillRecipe(preset, args.data, teacher, dist)
            loop, optim = preset.distillation.loop, preset.distillation.optim
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared corpus")
    parser.add_argument("--job", choices=["teacher", "student"], required=True)
    parser.add_argument("--preset", default="cpu-8k")
    parser.add_argument("--teacher", type=Path, help="teacher run (distillation; else random)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run(args)
    if result["rank"] == 0:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

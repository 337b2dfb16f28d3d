"""Train the real teacher recipe under torchrun and save what each replica holds at the end.

``torchrun --standalone --nproc-per-node 2 ddp_replicas.py DATA PRIOR RUN_DIR OUT [KEY=VALUE ...]``
builds what ``distilwave train teacher --preset smoke`` builds (recipe, step-indexed batches,
Trainer with DDP, rank-0 checkpoints), fits it, then each rank writes ``OUT/rank-<r>.pt`` with
its model weights and its EMA, so a test can compare the replicas with each other and with the
checkpoint. Only the end (saving every rank's state) differs from the product's job.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from training.config import load_preset
from training.data.dataset import SegmentDataset
from training.loop.batches import training_batches
from training.loop.distributed import init_distributed, shutdown
from training.loop.trainer import Trainer
from training.recipes.common import load_prior
from training.recipes.jobs import _setup
from training.recipes.teacher import TeacherRecipe


def main(data: Path, prior: Path, run_dir: Path, out: Path, overrides: list[str]) -> None:
    preset = load_preset("smoke", overrides)
    dist = init_distributed("cpu")
    try:
        loop = preset.teacher_training.loop
        _setup(loop, dist)
        recipe = TeacherRecipe(preset, data, dist, load_prior(prior, dist.device))
        dataset = SegmentDataset(
            data, "train", segment_samples=preset.segment_samples("teacher"), seed=loop.seed
        )
        trainer = Trainer(
            recipe,
            loop,
            preset.teacher_training.optim,
            run_dir,
            dist,
            lambda start: training_batches(dataset, loop.batch_size, dist, loop.num_workers, start),
            {"preset": preset.model_dump(mode="json"), "data": str(data)},
        )
        result = trainer.fit()
        out.mkdir(parents=True, exist_ok=True)
        state = {
            "rank": dist.rank,
            "world_size": dist.world_size,
            "step": result.step,
            "model": recipe.model.state_dict(),
            "ema": trainer.ema.state_dict()["shadow"],
            "torch_rng": torch.get_rng_state(),
        }
        torch.save(state, out / f"rank-{dist.rank}.pt")
    finally:
        shutdown(dist)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])

"""Step-indexed training batches: the batch of step ``s`` is a pure function of ``(seed, s)``.

That makes resume exact (a resumed run sees the batches an uninterrupted one would) and
shards cleanly over DDP ranks, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from training.data.dataset import SegmentDataset
from training.loop.distributed import DistInfo


class StepIndexed(Dataset[dict[str, Tensor]]):
    """Flat index ``k = step * per_step + position`` -> item ``position`` of epoch ``step``."""

    def __init__(self, base: SegmentDataset, per_step: int) -> None:
        self.base = base
        self.per_step = per_step

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        step, position = divmod(index, self.per_step)
        self.base.set_epoch(step)
        return self.base[position]


class StepBatches(Sampler[list[int]]):
    """Yields this rank's flat indices for steps ``start, start + 1, ...`` forever."""

    def __init__(self, start: int, batch_size: int, dist: DistInfo) -> None:
        self.start = start
        self.batch_size = batch_size
        self.dist = dist

    def __iter__(self) -> Iterator[list[int]]:
        per_step = self.batch_size * self.dist.world_size
        step = self.start
        while True:
            first = step * per_step + self.dist.rank * self.batch_size
            yield list(range(first, first + self.batch_size))
            step += 1


def training_batches(
    dataset: SegmentDataset, batch_size: int, dist: DistInfo, num_workers: int, start: int
) -> Iterator[dict[str, Tensor]]:
    """An endless iterator of collated batches from step ``start`` on."""
    indexed = StepIndexed(dataset, batch_size * dist.world_size)
    loader = DataLoader(
        indexed,
        batch_sampler=StepBatches(start, batch_size, dist),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=dist.device.type == "cuda",
        # its own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run (which creates it after restoring that RNG) diverges from an
        # uninterrupted one wherever training draws random numbers (the student's noise)
        generator=torch.Generator().manual_seed(0),
    )
    return iter(loader)

"""Deterministic train/val/test split by utterance.

Each utterance id is hashed with the split seed to a number u in [0, 1):
``u < val_fraction`` is validation, ``u < val_fraction + test_fraction`` is test, the rest
train. An utterance's split depends only on (seed, id), so adding or removing files never
moves another one. For tiny corpora (>= 3 utterances) a split with a non-zero fraction that
came out empty borrows, deterministically, the lowest-u utterance of the largest split, so
train, val and test each hold at least one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SPLITS = ("train", "val", "test")


def split_key(utt_id: str, seed: int) -> float:
    """The utterance's position u in [0, 1) for ``seed``."""
    digest = hashlib.sha256(f"{seed}\x00{utt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(utt_id: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    u = split_key(utt_id, seed)
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def assign_splits(
    ids: Iterable[str], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """Map every id to ``"train"``, ``"val"`` or ``"test"`` (see the module docstring)."""
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be >= 0 and sum to below 1")
    keys = {utt_id: split_key(utt_id, seed) for utt_id in ids}
    splits = {utt_id: split_of(utt_id, seed, val_fraction, test_fraction) for utt_id in keys}
    if len(keys) < 3:
        return splits
    wanted = {"train": 1.0, "val": val_fraction, "test": test_fraction}
    for split in SPLITS:
        members = {name: [i for i in keys if splits[i] == name] for name in SPLITS}
        if wanted[split] <= 0 or members[split]:
            continue
        donor = max(SPLITS, key=lambda name: (len(members[name]), name == "train"))
        moved = min(members[donor], key=lambda i: (keys[i], i))
        splits[moved] = split
    return splits

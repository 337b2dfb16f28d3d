"""The train/val/test split: by utterance, seeded, stable when files are added."""

from __future__ import annotations

import pytest

from training.data.split import assign_splits, split_of


def test_split_is_deterministic() -> None:
    ids = [f"utt{i:04d}" for i in range(500)]
    assert assign_splits(ids, 0, 0.05, 0.05) == assign_splits(list(reversed(ids)), 0, 0.05, 0.05)


def test_split_depends_on_the_seed() -> None:
    ids = [f"utt{i:04d}" for i in range(500)]
    assert assign_splits(ids, 0, 0.1, 0.1) != assign_splits(ids, 1, 0.1, 0.1)


def test_adding_utterances_moves_no_existing_one() -> None:
    old = [f"utt{i:04d}" for i in range(300)]
    new = old + [f"extra{i:04d}" for i in range(300)]
    before, after = assign_splits(old, 7, 0.05, 0.05), assign_splits(new, 7, 0.05, 0.05)
    assert {k: after[k] for k in old} == before


def test_fractions_are_respected_on_a_large_corpus() -> None:
    splits = list(assign_splits([f"u{i}" for i in range(20000)], 0, 0.05, 0.1).values())
    assert splits.count("val") / len(splits) == pytest.approx(0.05, abs=0.01)
    assert splits.count("test") / len(splits) == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("count", [3, 4, 5, 8, 10, 20])
def test_tiny_corpora_get_one_of_each_split(count: int) -> None:
    ids = [f"clip{i}" for i in range(count)]
    splits = assign_splits(ids, 0, 0.05, 0.05)
    assert set(splits.values()) == {"train", "val", "test"}
    assert splits == assign_splits(ids, 0, 0.05, 0.05)


def test_zero_fraction_means_no_such_split_even_when_tiny() -> None:
    assert set(assign_splits(["a", "b", "c", "d"], 0, 0.0, 0.5).values()) <= {"train", "test"}


def test_two_utterances_are_not_forced_apart() -> None:
    ids = ["a", "b"]
    assert assign_splits(ids, 0, 0.05, 0.05) == {i: split_of(i, 0, 0.05, 0.05) for i in ids}


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ValueError, match="fraction"):
        assign_splits(["a"], 0, 0.6, 0.5)

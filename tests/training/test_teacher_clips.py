"""Which test utterances the teacher's own samples are scored on."""

from __future__ import annotations

import torch

from training.evaluation.teacher_samples import choose_clips


def _items(frames: list[int]) -> list[dict]:
    return [{"id": f"u{i}", "mel": torch.zeros(80, n)} for i, n in enumerate(frames)]


def ids(items: list[dict]) -> list[str]:
    return [item["id"] for item in items]


def test_a_short_utterance_is_passed_over_when_enough_are_long_enough():
    items = _items([8, 20, 15, 16, 40, 3, 16])
    assert ids(choose_clips(items, 3, 16)) == ["u1", "u3", "u4"]
    assert ids(choose_clips(items, 4, 16)) == ["u1", "u3", "u4", "u6"]


def test_when_too_few_are_long_enough_the_longest_are_taken_in_their_order():
    items = _items([8, 20, 15, 3, 12])
    assert ids(choose_clips(items, 3, 16)) == ["u1", "u2", "u4"]
    assert ids(choose_clips(items, 2, 16)) == ["u1", "u2"]
    assert ids(choose_clips(items, 9, 16)) == ["u0", "u1", "u2", "u3", "u4"]

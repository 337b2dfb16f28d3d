"""The Griffin-Lim baseline: seeded, so an evaluation is reproducible, and the requested length."""

from __future__ import annotations

import numpy as np
import torch

from models.config import MelConfig
from models.mel import MelFrontEnd
from training.evaluation.baselines import griffin_lim


def _features(mel: MelConfig) -> torch.Tensor:
    t = torch.arange(mel.sample_rate // 2) / mel.sample_rate
    tone = 0.3 * torch.sin(2 * torch.pi * 220.0 * t) + 0.1 * torch.sin(2 * torch.pi * 660.0 * t)
    return MelFrontEnd(mel)(tone[None])[0]


def test_griffin_lim_is_reproducible_for_a_seed_and_varies_with_it():
    mel = MelConfig(sample_rate=8000, n_fft=1024, hop_length=100, n_mels=80)
    features = _features(mel)
    first = griffin_lim(features, mel, iterations=4, seed=0)
    assert first.shape == ((features.shape[-1] - 1) * mel.hop_length,)
    assert first.dtype == np.float32 and np.all(np.isfinite(first))
    assert np.array_equal(first, griffin_lim(features, mel, iterations=4, seed=0))
    assert not np.array_equal(first, griffin_lim(features, mel, iterations=4, seed=1))

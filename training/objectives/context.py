"""The context of a training batch for either model."""

from __future__ import annotations

from torch import Tensor

from models.conditioning import ConditionedModel, Context


def model_context(
    model: ConditionedModel, mel: Tensor, speaker: Tensor | None, num_samples: int
) -> Context:
    """The context of a batch of segments (``mel`` ``(B, n_mels, M)``) for the teacher or the
    student; an unconditional model gets only the length (and the speakers, if it has any)."""
    conditional = model.config.conditional
    return model.context(
        mel=mel if conditional else None,
        num_samples=None if conditional else num_samples,
        speaker=speaker if model.config.n_speakers > 0 else None,
        batch=mel.shape[0],
    )

"""The teacher's objective: negative log-likelihood of real audio, in nats and bits per sample."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.teacher import GaussianWaveNet
from models.transforms import bits_per_sample
from training.objectives.context import model_context


class TeacherObjective(nn.Module):
    """Negative log-likelihood in nats per sample (what DDP wraps)."""

    def __init__(self, model: GaussianWaveNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["audio"]
        context = model_context(self.model, batch["mel"], batch.get("speaker"), x.shape[1])
        nll = -self.model.log_prob(x, context).mean() / x.shape[1]
        return {"loss": nll, "train/bits": bits_per_sample(nll.detach())}


@torch.no_grad()
def utterance_bits(
    model: GaussianWaveNet, items: list[dict[str, Any]], device: torch.device
) -> float:
    """Bits/sample of the teacher on whole utterances (total NLL over total samples)."""
    total, count = 0.0, 0
    for item in items:
        x = item["audio"][None].to(device)
        speaker = item["speaker"].reshape(1).to(device)
        context = model_context(model, item["mel"][None].to(device), speaker, x.shape[1])
        total += float(-model.log_prob(x, context).sum())
        count += x.shape[1]
    return float(bits_per_sample(total / count))

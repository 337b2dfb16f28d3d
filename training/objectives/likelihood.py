"""The teacher's objective: negative log-likelihood of real audio, in nats and bits per sample."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.teacher import GaussianWaveNet
from models.transforms import bits_per_sample, gaussian_log_prob
from training.objectives.context import model_context


class TeacherObjective(nn.Module):
    """Negative log-likelihood in nats per sample (what DDP wraps).

    With ``input_noise`` > 0 the conditionals read a noisy past ``x~ = x + s sigma_f n``
    (``sigma_f`` the RMS of the residual ``x - h``, or of ``x`` without the prior, in each
    frame; ``n ~ N(0, 1)``) while the likelihood is of the clean ``x``: a teacher that does not
    trust its past sample by sample drifts less when it reads its own samples.
    """

    def __init__(self, model: GaussianWaveNet, input_noise: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.input_noise = input_noise

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["audio"]
        context = model_context(self.model, batch["mel"], batch.get("speaker"), x.shape[1])
        if self.input_noise > 0:
            residual = x - context.prior if context.prior is not None else x
            past = x + self.input_noise * frame_rms(residual, context.hop) * torch.randn_like(x)
            mean, log_scale = self.model.flow.conditionals(past, context)
            nll = -gaussian_log_prob(x, mean, log_scale).mean()
        else:
            nll = -self.model.log_prob(x, context).mean() / x.shape[1]
        return {"loss": nll, "train/bits": bits_per_sample(nll.detach())}


def frame_rms(signal: Tensor, hop: int) -> Tensor:
    """``(B, T)``: each sample's value is the RMS of its ``hop``-sample frame (the last frame
    may be shorter), without gradient."""
    power = nn.functional.avg_pool1d(signal.detach().pow(2)[:, None], hop, ceil_mode=True)
    return power[:, 0].sqrt().repeat_interleave(hop, dim=1)[:, : signal.shape[1]]


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

"""The distillation objective, in one place: training, validation and evaluation call it.

The student draws a sample and keeps its composed per-step Gaussian; the frozen teacher gives
its conditionals at that sample in one parallel pass (gradients flow through the sample into
it, never into its weights). From these: ClariNet's closed-form per-step KL, Parallel WaveNet's
Monte-Carlo estimate (both always reported; they agree in expectation), the log-scale
regulariser, and the teacher's NLL of the student's output. The loss adds the multi-resolution
STFT distance to the real segment, weighted by the preset (DAC's ``lambdas``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.conditioning import Context
from models.kl import closed_form_kl, log_scale_regulariser, monte_carlo_kl
from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from models.transforms import gaussian_log_prob
from training.config import DistillationConfig
from training.objectives.context import model_context
from training.objectives.spectral import dc_distance, multi_resolution_stft


def distillation_terms(
    student: IAFStudent,
    teacher: GaussianWaveNet,
    batch: dict[str, Tensor],
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    context: Context | None = None,
) -> dict[str, Tensor]:
    """Every term per sequence ``(B,)`` (nats per sample) and the sample's ``waveform``.

    ``context`` is the student's conditioning of ``batch`` when the caller already has it
    (pitch, linear prediction and the prior are not computed twice).

    Keys: ``kl_closed``, ``kl_mc``, ``log_scale`` (the regulariser), ``teacher_nll`` (the
    teacher's NLL of the student's output) and ``waveform``; only ``loss`` (NaN) and
    ``waveform`` when the sample is not finite.
    """
    real, mel, speaker = batch["audio"], batch["mel"], batch.get("speaker")
    if context is None:
        context = model_context(student, mel, speaker, real.shape[1])
    sample = student.sample(context, temperature=temperature, generator=generator)
    waveform = sample.waveform
    if not bool(torch.isfinite(waveform).all()):
        return {"loss": waveform.sum() * float("nan"), "waveform": waveform}
    with torch.no_grad():
        teacher_context = model_context(teacher, mel, speaker, real.shape[1])
    mean_t, log_scale_t = teacher.conditionals(waveform, teacher_context)
    teacher_log_prob = gaussian_log_prob(waveform, mean_t, log_scale_t).sum(1)
    return {
        "kl_closed": closed_form_kl(sample.mean, sample.log_scale, mean_t, log_scale_t),
        "kl_mc": monte_carlo_kl(student.log_prob_of_sample(sample), waveform, mean_t, log_scale_t),
        "log_scale": log_scale_regulariser(sample.log_scale, log_scale_t),
        "teacher_nll": -teacher_log_prob / waveform.shape[1],
        "waveform": waveform,
    }


class DistillObjective(nn.Module):
    """Student loss = w_kl KL + w_ls (log s_student - log s_teacher)^2 + w_stft MR-STFT
    (+ w_mean MR-STFT of the T = 0 output, the sample the bundle serves at temperature 0,
    + w_dc its DC offset against the real segment's).

    The teacher is frozen (eval mode, no parameter gradients) and not registered, so DDP
    neither syncs nor saves it.
    """

    def __init__(
        self, student: IAFStudent, teacher: GaussianWaveNet, config: DistillationConfig
    ) -> None:
        super().__init__()
        self.student = student
        object.__setattr__(self, "teacher", teacher)  # frozen and deliberately unregistered
        self.config = config

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.config
        teacher: GaussianWaveNet = self.teacher  # type: ignore[assignment]
        real = batch["audio"]
        context = model_context(self.student, batch["mel"], batch.get("speaker"), real.shape[1])
        terms = distillation_terms(self.student, teacher, batch, cfg.temperature, context=context)
        if "loss" in terms:
            return {"loss": terms["loss"]}
        convergence, magnitude = multi_resolution_stft(terms["waveform"], real, cfg.stft_ffts)
        kl = terms["kl_closed"].mean() if cfg.kl == "closed" else terms["kl_mc"].mean()
        regulariser = terms["log_scale"].mean()
        loss = (
            cfg.kl_weight * kl
            + cfg.log_scale_weight * regulariser
            + cfg.stft_weight * (convergence + magnitude)
        )
        extra: dict[str, Tensor] = {}
        if cfg.mean_stft_weight > 0 or cfg.dc_weight > 0:  # the deterministic path (T = 0)
            mean_waveform = self.student.generate(context, temperature=0.0)
        if cfg.mean_stft_weight > 0:  # against the real segment
            mean_convergence, mean_magnitude = multi_resolution_stft(
                mean_waveform, real, cfg.stft_ffts
            )
            loss = loss + cfg.mean_stft_weight * (mean_convergence + mean_magnitude)
            extra["loss/mean_stft"] = (mean_convergence + mean_magnitude).detach()
        if cfg.dc_weight > 0:  # its DC offset, which no STFT loss resolves
            dc = dc_distance(mean_waveform, real)
            loss = loss + cfg.dc_weight * dc
            extra["loss/dc"] = dc.detach()
        return {
            **extra,
            "loss": loss,
            "loss/kl_closed": terms["kl_closed"].mean().detach(),
            "loss/kl_mc": terms["kl_mc"].mean().detach(),
            "loss/log_scale": regulariser.detach(),
            "loss/stft_convergence": convergence.detach(),
            "loss/stft_log_magnitude": magnitude.detach(),
        }

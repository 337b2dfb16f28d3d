"""Reverse-KL estimators for distillation (docs/architecture.md, distillation).

All per-sample figures are nats per sample (averaged over time), one value per sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.transforms import gaussian_log_prob


@dataclass(frozen=True)
class KLGuards:
    """Numerical guards: floors on both log-scales inside the KL and a per-step clip."""

    log_scale_floor: float = -15.0
    max_step_kl: float = 1e4


def gaussian_kl(
    mean_q: Tensor,
    log_scale_q: Tensor,
    mean_p: Tensor,
    log_scale_p: Tensor,
    guards: KLGuards | None = None,
) -> Tensor:
    """Elementwise ``KL(N(mean_q, s_q^2) || N(mean_p, s_p^2))`` in nats.

    ``log s_p - log s_q + (s_q^2 + (mean_q - mean_p)^2) / (2 s_p^2) - 1/2``, with both
    log-scales floored and each step clipped (guards).
    """
    guards = guards or KLGuards()
    log_q = log_scale_q.clamp_min(guards.log_scale_floor)
    log_p = log_scale_p.clamp_min(guards.log_scale_floor)
    ratio = torch.exp(2.0 * (log_q - log_p))
    standardised = (mean_q - mean_p) * torch.exp(-log_p)
    kl = log_p - log_q + 0.5 * (ratio + standardised.square()) - 0.5
    return kl.clamp(max=guards.max_step_kl)


def closed_form_kl(
    student_mean: Tensor,
    student_log_scale: Tensor,
    teacher_mean: Tensor,
    teacher_log_scale: Tensor,
    guards: KLGuards | None = None,
) -> Tensor:
    """ClariNet's per-step KL summed over time, averaged per sample: ``(B, T) x 4 -> (B,)``.

    The student's composed Gaussian ``N(mean_tot, s_tot^2)`` against the teacher's
    conditional at the student's own sample, both given the same past.
    """
    kl = gaussian_kl(student_mean, student_log_scale, teacher_mean, teacher_log_scale, guards)
    return kl.mean(1)


def monte_carlo_kl(
    student_log_prob: Tensor, waveform: Tensor, teacher_mean: Tensor, teacher_log_scale: Tensor
) -> Tensor:
    """Parallel WaveNet's estimate ``(log s(x) - log t(x)) / T`` per sequence ``(B,)``.

    Args:
        student_log_prob: ``(B,)`` the student's log-density of its sample (cached noise).
        waveform: ``(B, T)`` that sample.
        teacher_mean, teacher_log_scale: ``(B, T)`` the teacher's conditionals at it.
    """
    teacher_log_prob = gaussian_log_prob(waveform, teacher_mean, teacher_log_scale).sum(1)
    return (student_log_prob - teacher_log_prob) / waveform.shape[1]


def log_scale_regulariser(student_log_scale: Tensor, teacher_log_scale: Tensor) -> Tensor:
    """``(log s_student - log s_teacher)^2`` averaged per sample: ``(B, T) x 2 -> (B,)``."""
    return (student_log_scale - teacher_log_scale).square().mean(1)


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of a ``(N,)`` tensor (stderr 0 for N = 1)."""
    values = values.detach().double().flatten()
    if values.numel() == 0:
        raise ValueError("mean_and_stderr needs at least one value")
    mean = float(values.mean())
    if values.numel() < 2:
        return mean, 0.0
    return mean, float(values.std(unbiased=True)) / math.sqrt(values.numel())

"""Stateless maths of Gaussian autoregressive flows: no parameters, testable alone."""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

NumberT = TypeVar("NumberT", float, Tensor)

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise ``log N(x; mean, exp(log_scale)^2)`` in nats."""
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z * z - log_scale - LOG_SQRT_2PI


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """Elementwise ``log N(z; 0, 1)``."""
    return -0.5 * z * z - LOG_SQRT_2PI


def soft_bound(raw: Tensor, bound: float) -> Tensor:
    """``bound * tanh(raw / bound)``: identity near 0, smoothly limited to ``(-bound, bound)``."""
    return bound * torch.tanh(raw / bound)


def soft_floor(raw: Tensor, floor: float) -> Tensor:
    """``floor + softplus(raw - floor)``: ``raw`` above the floor, never below it."""
    return floor + F.softplus(raw - floor)


def compose_affine(
    mean_total: Tensor, log_scale_total: Tensor, mean: Tensor, log_scale: Tensor
) -> tuple[Tensor, Tensor]:
    """Append one affine step ``v -> mean + exp(log_scale) v`` to a running composition.

    If ``x = mean_total + exp(log_scale_total) z`` then applying the step gives
    ``x' = (mean_total exp(log_scale) + mean) + exp(log_scale_total + log_scale) z``.
    """
    return mean_total * torch.exp(log_scale) + mean, log_scale_total + log_scale


def delay(sequence: Tensor, previous: Tensor | None = None) -> Tensor:
    """``(B, C, T)`` -> the same sequence delayed by one step; ``previous`` ``(B, C)`` or zeros."""
    if previous is None:
        return F.pad(sequence[..., :-1], (1, 0))
    return torch.cat([previous[..., None], sequence[..., :-1]], dim=-1)


def bits_per_sample(nll_nats_per_sample: NumberT) -> NumberT:
    """16-bit audio on [-1, 1]: ``nll / ln 2 + 15`` (dequantisation bin of width 2^-15)."""
    return nll_nats_per_sample / math.log(2.0) + 15.0

"""Stateless maths of Gaussian autoregressive flows."""

from __future__ import annotations

import math

import pytest
import torch

from models.transforms import (
    bits_per_sample,
    compose_affine,
    gaussian_log_prob,
    soft_bound,
    soft_floor,
    standard_normal_log_prob,
)


def _values(seed, count=3, shape=(4, 20)):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(count)]


def test_gaussian_log_prob_matches_torch_distributions():
    x, mean, log_scale = _values(0)
    expected = torch.distributions.Normal(mean, log_scale.exp()).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_scale), expected)


def test_standard_normal_log_prob_matches_torch_distributions():
    (z,) = _values(1, count=1)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    torch.testing.assert_close(standard_normal_log_prob(z), expected)


def test_soft_bound_stays_inside_the_bound():
    raw = torch.linspace(-1e3, 1e3, 1001, dtype=torch.float64)
    assert bool((soft_bound(raw, 3.0).abs() <= 3.0).all())


def test_soft_bound_is_the_identity_near_zero():
    raw = torch.linspace(-1e-3, 1e-3, 11, dtype=torch.float64)
    torch.testing.assert_close(soft_bound(raw, 5.0), raw, rtol=1e-7, atol=0)


def test_soft_bound_is_strictly_increasing():
    out = soft_bound(torch.linspace(-20, 20, 401, dtype=torch.float64), 5.0)
    assert bool((out.diff() > 0).all())


def test_soft_floor_never_goes_below_the_floor():
    raw = torch.linspace(-1e3, 10, 1001, dtype=torch.float64)
    assert bool((soft_floor(raw, -7.0) >= -7.0).all())


def test_soft_floor_passes_values_well_above_the_floor():
    raw = torch.tensor([0.0, 3.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(soft_floor(raw, -40.0), raw, rtol=0, atol=1e-12)


def test_teacher_default_floor_lets_digital_silence_be_silent():
    # 16-bit dequantisation noise alone has log-scale about -11.6: some raw output must reach it.
    from models.config import TeacherConfig

    floor, target = TeacherConfig().log_scale_floor, -11.6
    raw = torch.tensor(floor + math.log(math.expm1(target - floor)), dtype=torch.float64)
    assert float(soft_floor(raw, floor)) == pytest.approx(target, abs=1e-12)


def test_compose_affine_equals_applying_the_steps_one_by_one():
    z, *steps = _values(2, count=7)
    means, log_scales = steps[:3], steps[3:]
    mean_total, log_scale_total = torch.zeros_like(z), torch.zeros_like(z)
    value = z
    for mean, log_scale in zip(means, log_scales, strict=True):
        value = mean + log_scale.exp() * value
        mean_total, log_scale_total = compose_affine(mean_total, log_scale_total, mean, log_scale)
    torch.testing.assert_close(mean_total + log_scale_total.exp() * z, value)
    torch.testing.assert_close(log_scale_total, sum(log_scales))


def test_bits_per_sample_of_16_bit_audio():
    assert bits_per_sample(0.0) == 15.0
    assert bits_per_sample(math.log(2.0)) == 16.0
    assert bits_per_sample(-15 * math.log(2.0)) == 0.0

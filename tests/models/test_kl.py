"""Reverse-KL estimators: the Gaussian KL, its guards, and MC vs closed form on real models."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from models.kl import (
    KLGuards,
    closed_form_kl,
    gaussian_kl,
    log_scale_regulariser,
    mean_and_stderr,
    monte_carlo_kl,
)
from models.student import IAFStudent
from tests.models.helpers import (
    VARIANT_IDS,
    VARIANTS,
    make_context,
    make_student,
    make_teacher,
    random_signal,
)


def _gaussians(seed, shape=(3, 50)):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(4)]


def test_gaussian_kl_matches_torch_distributions():
    mean_q, log_q, mean_p, log_p = _gaussians(0)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean_q, log_q.exp()),
        torch.distributions.Normal(mean_p, log_p.exp()),
    )
    torch.testing.assert_close(gaussian_kl(mean_q, log_q, mean_p, log_p), expected)


def test_gaussian_kl_of_a_gaussian_with_itself_is_zero():
    mean, log_scale, *_ = _gaussians(1)
    kl = gaussian_kl(mean, log_scale, mean, log_scale)
    torch.testing.assert_close(kl, torch.zeros_like(kl), rtol=0, atol=1e-14)


def test_gaussian_kl_is_non_negative():
    assert bool((gaussian_kl(*_gaussians(2)) >= 0).all())


def test_gaussian_kl_clips_each_step():
    guards = KLGuards(max_step_kl=3.0)
    zeros = torch.zeros(4, dtype=torch.float64)
    far = torch.tensor([0.0, 1.0, 10.0, 100.0], dtype=torch.float64)
    kl = gaussian_kl(far, zeros, zeros, zeros, guards)
    torch.testing.assert_close(kl, torch.tensor([0.0, 0.5, 3.0, 3.0], dtype=torch.float64))


def test_gaussian_kl_floors_both_log_scales():
    guards = KLGuards(log_scale_floor=-5.0)
    tiny = torch.tensor([-40.0], dtype=torch.float64)
    floor = torch.tensor([-5.0], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    torch.testing.assert_close(
        gaussian_kl(zero, tiny, zero, zero, guards), gaussian_kl(zero, floor, zero, zero, guards)
    )
    torch.testing.assert_close(
        gaussian_kl(zero, zero, zero, tiny, guards), gaussian_kl(zero, zero, zero, floor, guards)
    )


def test_closed_form_kl_averages_over_time():
    mean_q, log_q, mean_p, log_p = _gaussians(3)
    expected = gaussian_kl(mean_q, log_q, mean_p, log_p).mean(1)
    torch.testing.assert_close(closed_form_kl(mean_q, log_q, mean_p, log_p), expected)


def test_monte_carlo_kl_is_the_per_sample_log_ratio():
    x, mean_p, log_p, _ = _gaussians(4)
    student_log_prob = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    teacher = torch.distributions.Normal(mean_p, log_p.exp()).log_prob(x).sum(1)
    torch.testing.assert_close(
        monte_carlo_kl(student_log_prob, x, mean_p, log_p), (student_log_prob - teacher) / 50
    )


def test_log_scale_regulariser_is_the_mean_squared_difference():
    a, b, *_ = _gaussians(5)
    torch.testing.assert_close(log_scale_regulariser(a, b), (a - b).square().mean(1))


def test_mean_and_stderr():
    mean, stderr = mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert mean == pytest.approx(3.0)
    assert stderr == pytest.approx(math.sqrt(14.0 / 3.0) / 2.0)


def test_mean_and_stderr_of_one_value_has_zero_error():
    assert mean_and_stderr(torch.tensor([2.5])) == (2.5, 0.0)


def test_mean_and_stderr_rejects_no_values():
    with pytest.raises(ValueError, match="at least one"):
        mean_and_stderr(torch.tensor([]))


# --- MC and closed form on real models -------------------------------------------------------

DRAWS = 1000


@functools.cache
def _kl_case(variant, kernel_size):
    """A random student's sample and a random teacher's conditionals at it (no gradients).

    The teacher's log-scale head is damped so its scales stay near 1: an undamped random
    head can put them at the floor, where single steps exceed the KL clip and the clipped
    closed form no longer estimates the same thing as the unclipped Monte Carlo.
    """
    student = make_student(variant, kernel_size, std=0.3)
    teacher = make_teacher(variant, kernel_size, std=0.5)
    with torch.no_grad():
        head = teacher.flow.conditioner.net.head_out  # channels: mean, log-scale
        head.weight[1] *= 0.1
        head.bias[1] = 0.0
    student_context = make_context(student, variant, batch=DRAWS, frames=4)
    teacher_context = make_context(teacher, variant, batch=DRAWS, frames=4)
    with torch.no_grad():
        noise = random_signal(student_context, seed=41, scale=1.0)
        sample = student.sample(student_context, noise=noise)
        mean, log_scale = teacher.conditionals(sample.waveform, teacher_context)
    return sample, mean, log_scale


def _kl_estimates(variant, kernel_size):
    """Per-draw Monte Carlo and closed-form KL ``(DRAWS,)`` each."""
    sample, mean, log_scale = _kl_case(variant, kernel_size)
    closed = closed_form_kl(sample.mean, sample.log_scale, mean, log_scale)
    monte_carlo = monte_carlo_kl(
        IAFStudent.log_prob_of_sample(sample), sample.waveform, mean, log_scale
    )
    return monte_carlo, closed


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_monte_carlo_and_closed_form_kl_agree_within_4_standard_errors(variant, kernel_size):
    monte_carlo, closed = _kl_estimates(variant, kernel_size)
    # Paired draws: both estimate the same expectation, so their difference has mean zero.
    mean, stderr = mean_and_stderr(monte_carlo - closed)
    assert stderr > 0, "the estimates coincide: the check would be vacuous"
    assert abs(mean) <= 4 * stderr, f"mean difference {mean:.4g}, standard error {stderr:.4g}"


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_kl_guards_do_not_bind_in_the_agreement_check(variant):
    # Guard for the agreement test: clipping or flooring would bias the closed form only.
    sample, mean, log_scale = _kl_case(variant, 2)
    guards = KLGuards()
    unguarded = gaussian_kl(
        sample.mean, sample.log_scale, mean, log_scale, KLGuards(-math.inf, math.inf)
    )
    assert float(unguarded.max()) < guards.max_step_kl
    assert float(torch.minimum(sample.log_scale, log_scale).min()) > guards.log_scale_floor


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_kl_agreement_check_would_catch_a_bias_of_half_the_kl(variant):
    # Guard for the agreement test: the models must differ enough that a bias of half the KL
    # (a missing log-det term, a wrong sign) would be more than 4 standard errors.
    monte_carlo, closed = _kl_estimates(variant, 2)
    kl, _ = mean_and_stderr(closed)
    _, stderr = mean_and_stderr(monte_carlo - closed)
    assert kl > 8 * stderr, f"KL {kl:.4g}, standard error of the difference {stderr:.4g}"

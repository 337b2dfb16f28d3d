"""The teacher (MAF) invariants: causality, exact density, cached sampling, source-filter."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch.autograd.functional import jacobian

import models.wavenet
from models.flows import StepState
from models.lpc import LinearPrediction
from models.transforms import standard_normal_log_prob
from tests.models.helpers import (
    SOURCE_FILTER_VARIANTS,
    VARIANT_IDS,
    VARIANTS,
    make_context,
    make_teacher,
    random_signal,
)

KERNELS = pytest.mark.parametrize("kernel_size", [2, 3])
ALL_VARIANTS = pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)


@ALL_VARIANTS
@KERNELS
@pytest.mark.parametrize("position", [0, 9, 22])
def test_teacher_conditionals_ignore_the_present_and_future(variant, kernel_size, position):
    teacher = make_teacher(variant, kernel_size)
    context = make_context(teacher, variant)
    x = random_signal(context, seed=3)
    mean, log_scale = teacher.conditionals(x, context)
    perturbed = x.clone()
    perturbed[:, position:] += torch.randn_like(perturbed[:, position:])
    mean_p, log_scale_p = teacher.conditionals(perturbed, context)
    assert torch.equal(mean[:, : position + 1], mean_p[:, : position + 1])
    assert torch.equal(log_scale[:, : position + 1], log_scale_p[:, : position + 1])


@ALL_VARIANTS
@KERNELS
@pytest.mark.parametrize("position", [5, 9, 13])
def test_teacher_conditionals_depend_on_the_previous_sample(variant, kernel_size, position):
    # Some clip of the batch must feel x_t at t + 1 (one clip alone may sit in a dead ReLU).
    teacher = make_teacher(variant, kernel_size)
    context = make_context(teacher, variant, batch=4)
    x = random_signal(context, seed=3)
    perturbed = x.clone()
    perturbed[:, position] += 1.0
    mean, log_scale = teacher.conditionals(x, context)
    mean_p, log_scale_p = teacher.conditionals(perturbed, context)
    assert (mean[:, position + 1] != mean_p[:, position + 1]).any()
    assert (log_scale[:, position + 1] != log_scale_p[:, position + 1]).any()


@functools.cache
def _density_case(variant, kernel_size):
    """A teacher, a 16-sample context (B = 1), a signal and the autograd Jacobian dz/dx."""
    teacher = make_teacher(variant, kernel_size)
    context = make_context(teacher, variant, batch=1, frames=3)
    x = random_signal(context, seed=4)

    def to_noise(signal):
        return teacher.flow.inverse(signal, context).output[0]

    jac = jacobian(to_noise, x)[:, 0]  # (T, 1, T) -> (T, T)
    return teacher, context, x, jac


@ALL_VARIANTS
@KERNELS
def test_teacher_log_prob_equals_change_of_variables_with_autograd_jacobian(variant, kernel_size):
    teacher, context, x, jac = _density_case(variant, kernel_size)
    z = teacher.flow.inverse(x, context).output
    expected = standard_normal_log_prob(z).sum(1) + torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(teacher.log_prob(x, context), expected, rtol=0, atol=1e-10)


@ALL_VARIANTS
@KERNELS
def test_teacher_inverse_logabsdet_equals_autograd_slogdet(variant, kernel_size):
    teacher, context, x, jac = _density_case(variant, kernel_size)
    logabsdet = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(
        teacher.flow.inverse(x, context).logabsdet[0], logabsdet, rtol=0, atol=1e-10
    )


@ALL_VARIANTS
@KERNELS
def test_teacher_density_jacobian_is_lower_triangular(variant, kernel_size):
    *_, jac = _density_case(variant, kernel_size)
    assert torch.equal(jac.triu(1), torch.zeros_like(jac))


@ALL_VARIANTS
@KERNELS
def test_teacher_cached_sampling_matches_naive_to_1e12_float64(variant, kernel_size, monkeypatch):
    # The two paths do the same maths in a different order (one sample with carried state
    # against the whole prefix again), so they agree to rounding, not bit for bit. Gate inputs
    # computed 5 samples ahead make the cached path cross several of their boundaries.
    monkeypatch.setattr(models.wavenet, "SEQUENTIAL_CONDITIONING", 5)
    teacher = make_teacher(variant, kernel_size, std=0.2)
    context = make_context(teacher, variant, frames=4)  # T = 24
    noise = random_signal(context, seed=5, scale=1.0)
    cached = teacher.sample(context, noise=noise, cached=True)
    naive = teacher.sample(context, noise=noise, cached=False)
    scale = naive.abs().max()
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-12 * max(1.0, float(scale)))


@ALL_VARIANTS
def test_teacher_sample_inverts_to_its_noise(variant):
    teacher = make_teacher(variant, std=0.2)
    context = make_context(teacher, variant)
    noise = random_signal(context, seed=5, scale=1.0)
    x = teacher.sample(context, noise=noise)
    torch.testing.assert_close(teacher.flow.inverse(x, context).output, noise, rtol=0, atol=1e-9)


@ALL_VARIANTS
def test_teacher_sample_is_seeded_by_its_generator(variant):
    teacher = make_teacher(variant, std=0.2)
    context = make_context(teacher, variant, frames=3)
    first = teacher.sample(context, generator=torch.Generator().manual_seed(7))
    second = teacher.sample(context, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize("variant", SOURCE_FILTER_VARIANTS, ids=str)
@KERNELS
def test_source_filter_teacher_with_a0_g1_rho0_equals_plain_teacher(variant, kernel_size):
    filtered = make_teacher(variant, kernel_size, preemphasis=0.0)
    plain_variant = dataclasses.replace(variant, name="plain", source_filter=False)
    plain = make_teacher(plain_variant, kernel_size)
    plain.load_state_dict(filtered.state_dict())
    context = make_context(filtered, variant)
    assert context.lpc is not None
    context.lpc = LinearPrediction(
        coefficients=torch.zeros_like(context.lpc.coefficients),
        gain=torch.ones_like(context.lpc.gain),
    )
    plain_context = make_context(plain, plain_variant)
    x = random_signal(context, seed=6)
    torch.testing.assert_close(
        filtered.log_prob(x, context), plain.log_prob(x, plain_context), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("variant", SOURCE_FILTER_VARIANTS, ids=str)
def test_source_filter_teacher_mean_holds_the_lpc_prediction(variant):
    # With the network's output zeroed, mean_t = rho x_{t-1} - sum_k a_k y_{t-k} exactly (on
    # the residual r = x - h, plus h, for a teacher with the prior).
    teacher = make_teacher(variant)
    torch.nn.init.zeros_(teacher.flow.conditioner.net.head_out.weight)
    torch.nn.init.zeros_(teacher.flow.conditioner.net.head_out.bias)
    context = make_context(teacher, variant, frames=3)
    signal = random_signal(context, seed=6)
    shift = context.prior if variant.prior and variant.prior_shift else torch.zeros_like(signal)
    x = signal - shift  # what the source-filter structure runs on
    rho = teacher.config.source_filter.preemphasis
    previous = torch.nn.functional.pad(x, (1, 0))[:, :-1]
    y = x - rho * previous
    a = context.lpc.coefficients
    order = a.shape[-1]
    padded = torch.nn.functional.pad(y, (order, 0))
    expected = torch.empty_like(x)
    for t in range(x.shape[1]):
        block = t // context.hop
        past = padded[:, t : t + order].flip(-1)  # y_{t-1} .. y_{t-p}
        expected[:, t] = rho * previous[:, t] - (a[:, block] * past).sum(-1)
    mean, _ = teacher.conditionals(signal, context)
    torch.testing.assert_close(mean, expected + shift, rtol=0, atol=1e-12)


@ALL_VARIANTS
@pytest.mark.parametrize("weight_norm", [False, True], ids=["no-wn", "wn"])
def test_teacher_log_prob_gradient_reaches_every_parameter(variant, weight_norm):
    teacher = make_teacher(variant, weight_norm=weight_norm).train()
    context = make_context(teacher, variant, batch=3)
    x = random_signal(context, seed=8)
    teacher.log_prob(x, context).sum().backward()
    missing = [
        name
        for name, p in teacher.named_parameters()
        if p.grad is None or not bool(p.grad.abs().sum() > 0)
    ]
    assert missing == []


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[4]], ids=str)
def test_teacher_log_scale_stays_above_its_floor_for_large_weights(variant):
    teacher = make_teacher(variant, std=5.0)
    context = make_context(teacher, variant)
    _, log_scale = teacher.conditionals(random_signal(context, seed=17, scale=10.0), context)
    assert float(log_scale.detach().min()) >= teacher.config.log_scale_floor  # softplus underflows


@ALL_VARIANTS
def test_teacher_state_dict_round_trip_gives_identical_log_prob(variant):
    teacher = make_teacher(variant)
    clone = make_teacher(variant, seed=99)
    clone.load_state_dict(teacher.state_dict())
    context = make_context(teacher, variant)
    x = random_signal(context, seed=9)
    assert torch.equal(teacher.log_prob(x, context), clone.log_prob(x, context))


# --- bad input -------------------------------------------------------------------------------


@ALL_VARIANTS
def test_teacher_log_prob_rejects_nan(variant):
    teacher = make_teacher(variant)
    context = make_context(teacher, variant)
    x = random_signal(context, seed=9)
    x[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        teacher.log_prob(x, context)


@ALL_VARIANTS
@pytest.mark.parametrize("shape_change", ["length", "batch", "rank"])
def test_teacher_log_prob_rejects_a_waveform_that_does_not_match_the_context(variant, shape_change):
    teacher = make_teacher(variant)
    context = make_context(teacher, variant)
    x = random_signal(context, seed=9)
    bad = {"length": x[:, :-1], "batch": x[:1], "rank": x[:, None]}[shape_change]
    with pytest.raises(ValueError, match="shape"):
        teacher.log_prob(bad, context)


@ALL_VARIANTS
@pytest.mark.parametrize("chunk", [1, 5, 8, 13])
def test_teacher_conditionals_chunk_by_chunk_equal_one_pass(variant, chunk):
    # The conditioner carries its state (the stack's left context, the filter's history, the
    # excitation's lag history) from chunk to chunk: the same code that samples one at a time.
    teacher = make_teacher(variant, std=0.2)
    context = make_context(teacher, variant, frames=5)  # T = 32
    x = random_signal(context, seed=3)
    mean, log_scale = teacher.conditionals(x, context)
    state, means, log_scales = StepState(), [], []
    for start in range(0, x.shape[1], chunk):
        m, s = teacher.flow.conditionals(x[:, start : start + chunk], context, state)
        means.append(m)
        log_scales.append(s)
    torch.testing.assert_close(torch.cat(means, 1), mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat(log_scales, 1), log_scale, rtol=0, atol=1e-12)


def test_maf_sampling_refuses_a_stream():
    variant = VARIANTS[0]
    teacher = make_teacher(variant)
    context = make_context(teacher, variant)
    with pytest.raises(ValueError, match="no stream"):
        teacher.flow(random_signal(context, seed=1), context, state=StepState())


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[4]], ids=str)
@pytest.mark.parametrize("change", ["longer", "shorter", "batch"])
def test_teacher_sample_rejects_noise_that_does_not_match_the_context(variant, change):
    teacher = make_teacher(variant)
    context = make_context(teacher, variant)
    noise = random_signal(context, seed=1, scale=1.0)
    bad = {
        "longer": torch.cat([noise, noise[:, :5]], 1),
        "shorter": noise[:, :-3],
        "batch": noise[:1],  # would broadcast over the batch
    }[change]
    with pytest.raises(ValueError, match="noise has shape"):
        teacher.sample(context, noise=bad)


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[4]], ids=str)
def test_teacher_sample_rejects_nan_noise(variant):
    teacher = make_teacher(variant)
    context = make_context(teacher, variant)
    noise = random_signal(context, seed=1, scale=1.0)
    noise[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        teacher.sample(context, noise=noise)


def test_teacher_sample_rejects_a_negative_temperature():
    teacher = make_teacher(VARIANTS[0])
    with pytest.raises(ValueError, match="temperature"):
        teacher.sample(make_context(teacher, VARIANTS[0]), temperature=-0.5)

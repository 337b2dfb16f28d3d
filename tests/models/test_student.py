"""The student (IAF) invariants: causality, inversion, cached-noise density, composition,
streaming."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.autograd.functional import jacobian

import models.wavenet
from models.conditioning import interpolate_frames
from models.config import StudentConfig
from models.student import IAFStudent
from tests.models.helpers import (
    HOP,
    VARIANT_IDS,
    VARIANTS,
    make_context,
    make_student,
    random_mel,
    random_signal,
    speaker_ids,
)

KERNELS = pytest.mark.parametrize("kernel_size", [2, 3])
CONDITIONING_ONLY = ("excitation", "gain", "prior")  # steps that read the conditioning only


def steps(student):
    """Every step of the student, in sampling order."""
    return [student.flows.step(name) for name in student.flows.names()]


ALL_VARIANTS = pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)


def _student_case(variant, kernel_size=2, batch=2, frames=4):
    student = make_student(variant, kernel_size)
    context = make_context(student, variant, batch=batch, frames=frames)
    noise = random_signal(context, seed=11, scale=1.0)
    return student, context, noise


# --- causality -------------------------------------------------------------------------------


@ALL_VARIANTS
@KERNELS
@pytest.mark.parametrize("position", [0, 9, 22])
def test_every_student_flow_step_ignores_the_present_and_future_of_its_input(
    variant, kernel_size, position
):
    student, context, u = _student_case(variant, kernel_size)
    perturbed = u.clone()
    perturbed[:, position:] += torch.randn_like(perturbed[:, position:])
    for index, flow in enumerate(steps(student)):
        step, step_p = flow(u, context), flow(perturbed, context)
        past = slice(0, position + 1)
        assert torch.equal(step.mean[:, past], step_p.mean[:, past]), f"flow {index} mean"
        assert torch.equal(step.log_scale[:, past], step_p.log_scale[:, past]), f"flow {index}"
        assert torch.equal(step.output[:, :position], step_p.output[:, :position]), f"flow {index}"


@ALL_VARIANTS
@KERNELS
@pytest.mark.parametrize("position", [5, 9, 13])
def test_student_wavenet_and_synthesis_flows_depend_on_the_previous_input(
    variant, kernel_size, position
):
    # Some clip of the batch must feel u_t at t + 1 (one clip alone may sit in a dead ReLU).
    student, context, u = _student_case(variant, kernel_size, batch=4)
    perturbed = u.clone()
    perturbed[:, position] += 1.0
    # The gain and mixed-excitation flows depend on the conditioning only (no autoregressive
    # part); every other flow must read u_{t-1}.
    flows = [student.flows.step(n) for n in student.flows.names() if n not in CONDITIONING_ONLY]
    for index, flow in enumerate(flows):
        step, step_p = flow(u, context), flow(perturbed, context)
        assert (step.mean[:, position + 1] != step_p.mean[:, position + 1]).any(), f"flow {index}"


@ALL_VARIANTS
@KERNELS
@pytest.mark.parametrize("position", [0, 13])
def test_student_sample_and_composed_gaussian_ignore_the_present_and_future_noise(
    variant, kernel_size, position
):
    student, context, noise = _student_case(variant, kernel_size)
    perturbed = noise.clone()
    perturbed[:, position:] += torch.randn_like(perturbed[:, position:])
    sample, sample_p = (
        student.sample(context, noise=noise),
        student.sample(context, noise=perturbed),
    )
    assert torch.equal(sample.waveform[:, :position], sample_p.waveform[:, :position])
    assert torch.equal(sample.mean[:, : position + 1], sample_p.mean[:, : position + 1])
    assert torch.equal(sample.log_scale[:, : position + 1], sample_p.log_scale[:, : position + 1])


# --- inversion and density -------------------------------------------------------------------


@ALL_VARIANTS
@KERNELS
@pytest.mark.parametrize("cached", [True, False], ids=["cached", "naive"])
def test_student_inversion_recovers_the_noise(variant, kernel_size, cached, monkeypatch):
    # cross the boundaries of the gate inputs computed ahead when one sample runs at a time
    monkeypatch.setattr(models.wavenet, "SEQUENTIAL_CONDITIONING", 5)
    student, context, noise = _student_case(variant, kernel_size)
    x = student.generate(context, noise=noise)
    recovered, _ = student.inverse(x, context, cached=cached)
    torch.testing.assert_close(recovered, noise, rtol=0, atol=1e-10)


@ALL_VARIANTS
@KERNELS
def test_cached_noise_log_prob_equals_density_by_inversion(variant, kernel_size):
    student, context, noise = _student_case(variant, kernel_size)
    sample = student.sample(context, noise=noise)
    torch.testing.assert_close(
        IAFStudent.log_prob_of_sample(sample),
        student.log_prob(sample.waveform, context),
        rtol=0,
        atol=1e-9,
    )


@ALL_VARIANTS
@pytest.mark.parametrize("temperature", [0.5, 1.3])
def test_cached_noise_log_prob_equals_density_by_inversion_at_a_temperature(variant, temperature):
    student = make_student(variant)
    context = make_context(student, variant)
    generator = torch.Generator().manual_seed(12)
    sample = student.sample(context, temperature=temperature, generator=generator)
    torch.testing.assert_close(
        IAFStudent.log_prob_of_sample(sample),
        student.log_prob(sample.waveform, context),
        rtol=0,
        atol=1e-9,
    )


@functools.cache
def _generation_jacobian(variant, kernel_size):
    """The student, a 16-sample context (B = 1), noise and the autograd Jacobian dx/dz0."""
    student, context, noise = _student_case(variant, kernel_size, batch=1, frames=3)

    def to_waveform(z):
        return student.generate(context, noise=z)[0]

    return student, context, noise, jacobian(to_waveform, noise)[:, 0]  # (T, T)


@ALL_VARIANTS
@KERNELS
def test_cached_noise_log_prob_equals_change_of_variables_with_autograd_jacobian(
    variant, kernel_size
):
    student, context, noise, jac = _generation_jacobian(variant, kernel_size)
    sample = student.sample(context, noise=noise)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(noise).sum(1)
    expected = standard - torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(IAFStudent.log_prob_of_sample(sample), expected, rtol=0, atol=1e-10)


@ALL_VARIANTS
@KERNELS
def test_student_generation_jacobian_is_lower_triangular(variant, kernel_size):
    *_, jac = _generation_jacobian(variant, kernel_size)
    assert torch.equal(jac.triu(1), torch.zeros_like(jac))


@ALL_VARIANTS
@KERNELS
def test_student_generation_jacobian_diagonal_is_the_composed_scale(variant, kernel_size):
    student, context, noise, jac = _generation_jacobian(variant, kernel_size)
    sample = student.sample(context, noise=noise)
    torch.testing.assert_close(jac.diagonal(), sample.log_scale[0].exp(), rtol=0, atol=1e-12)


# --- the composed Gaussian -------------------------------------------------------------------


@ALL_VARIANTS
@KERNELS
def test_composed_gaussian_reproduces_the_waveform_of_the_flows_applied_one_by_one(
    variant, kernel_size
):
    student, context, noise = _student_case(variant, kernel_size)
    value = noise
    for flow in steps(student):
        value = flow(value, context).output
    sample = student.sample(context, noise=noise)
    composed = sample.mean + torch.exp(sample.log_scale) * sample.noise
    torch.testing.assert_close(composed, value, rtol=0, atol=1e-12)


@ALL_VARIANTS
def test_composed_log_scale_is_the_sum_of_the_flows_log_scales(variant):
    student, context, noise = _student_case(variant)
    value, total = noise, torch.zeros_like(noise)
    for flow in steps(student):
        step = flow(value, context)
        value, total = step.output, total + step.log_scale
    torch.testing.assert_close(
        student.sample(context, noise=noise).log_scale, total, rtol=0, atol=1e-12
    )


@ALL_VARIANTS
def test_sample_waveform_equals_generate(variant):
    student, context, noise = _student_case(variant)
    torch.testing.assert_close(
        student.sample(context, noise=noise).waveform,
        student.generate(context, noise=noise),
        rtol=0,
        atol=0,
    )


# --- streaming -------------------------------------------------------------------------------


STREAM_CASES = [(2, chunk) for chunk in (1, 3, HOP, 2 * HOP, 13, 100)] + [(3, 3), (3, 13)]


@ALL_VARIANTS
@pytest.mark.parametrize("kernel_size,chunk", STREAM_CASES, ids=lambda v: str(v))
def test_streaming_chunk_by_chunk_equals_one_full_pass(variant, kernel_size, chunk):
    student, context, noise = _student_case(variant, kernel_size, frames=6)  # T = 40
    chunks = list(student.stream(context, noise, chunk))
    assert [c.shape[1] for c in chunks[:-1]] == [chunk] * (len(chunks) - 1)
    torch.testing.assert_close(
        torch.cat(chunks, dim=1), student.generate(context, noise=noise), rtol=0, atol=1e-12
    )


@ALL_VARIANTS
def test_a_clip_generated_in_a_batch_equals_the_clip_generated_alone(variant):
    # Within float64 rounding: conv kernels may sum in another order for another batch size.
    student, context, noise = _student_case(variant, batch=3, frames=6)
    batched = student.generate(context, noise=noise)
    mel = random_mel(3, 6, seed=2) if variant.conditional else None  # make_context's mel
    speakers = speaker_ids(3) if variant.speakers else None
    for index in range(3):
        speaker = None if speakers is None else speakers[index : index + 1]
        if mel is None:
            single = student.context(num_samples=context.num_samples, speaker=speaker, batch=1)
        else:
            single = student.context(mel=mel[index : index + 1], speaker=speaker)
        torch.testing.assert_close(
            student.generate(single, noise=noise[index : index + 1]),
            batched[index : index + 1],
            rtol=0,
            atol=1e-12,
        )


# --- gradients, parameters, seeding -----------------------------------------------------------


@ALL_VARIANTS
@pytest.mark.parametrize("weight_norm", [False, True], ids=["no-wn", "wn"])
def test_student_gradient_reaches_every_parameter(variant, weight_norm):
    student = make_student(variant, weight_norm=weight_norm).train()
    context = make_context(student, variant, batch=3)
    sample = student.sample(context, noise=random_signal(context, seed=13, scale=1.0))
    loss = IAFStudent.log_prob_of_sample(sample).sum() + sample.waveform.square().sum()
    loss.backward()
    missing = [
        name
        for name, p in student.named_parameters()
        if p.grad is None or not bool(p.grad.abs().sum() > 0)
    ]
    assert missing == []


@ALL_VARIANTS
def test_fresh_student_flows_start_as_the_identity(variant):
    fresh = IAFStudent(make_student(variant).config, make_student(variant).mel_config).double()
    context = make_context(fresh, variant)
    u = random_signal(context, seed=14)
    for flow in fresh.wavenet_steps:
        assert torch.equal(flow(u, context).output, u)


def test_fresh_plain_student_scale_starts_at_init_log_scale():
    variant = VARIANTS[0]
    config = make_student(variant).config
    fresh = IAFStudent(config, make_student(variant).mel_config).double()
    context = make_context(fresh, variant)
    sample = fresh.sample(context, noise=random_signal(context, seed=15, scale=1.0))
    torch.testing.assert_close(
        sample.log_scale, torch.full_like(sample.log_scale, config.init_log_scale)
    )


@pytest.mark.parametrize(
    "variant", [v for v in VARIANTS if v.source_filter and not v.excitation], ids=str
)
def test_fresh_source_filter_student_scale_starts_at_the_lpc_gain(variant):
    fresh = IAFStudent(make_student(variant).config, make_student(variant).mel_config).double()
    context = make_context(fresh, variant)
    sample = fresh.sample(context, noise=random_signal(context, seed=15, scale=1.0))
    gain = context.lpc.gain.repeat_interleave(context.hop, dim=1)  # (B, N) -> (B, N hop)
    torch.testing.assert_close(sample.log_scale, gain.log(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[4]], ids=str)
def test_student_flow_log_scales_stay_inside_their_bound_for_large_weights(variant):
    student = make_student(variant, std=5.0)
    context = make_context(student, variant)
    u = random_signal(context, seed=16, scale=10.0)
    bound = student.config.log_scale_bound
    for flow in student.wavenet_steps:
        log_scale = flow(u, context).log_scale.detach()
        assert float(log_scale.abs().max()) <= bound  # tanh saturates to 1.0


@ALL_VARIANTS
def test_student_generate_is_seeded_by_its_generator(variant):
    student, context, _ = _student_case(variant)
    first = student.generate(context, generator=torch.Generator().manual_seed(3))
    second = student.generate(context, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


@ALL_VARIANTS
def test_student_temperature_scales_the_noise(variant):
    student, context, _ = _student_case(variant)
    cold = student.sample(context, 0.5, generator=torch.Generator().manual_seed(3))
    warm = student.sample(context, 1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(cold.noise, 0.5 * warm.noise, rtol=0, atol=0)


# --- bad input -------------------------------------------------------------------------------


@ALL_VARIANTS
def test_student_rejects_noise_of_the_wrong_shape(variant):
    student, context, noise = _student_case(variant)
    with pytest.raises(ValueError, match="noise has shape"):
        student.generate(context, noise=noise[:, :-1])


@ALL_VARIANTS
def test_student_rejects_nan_noise(variant):
    student, context, noise = _student_case(variant)
    noise[1, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        student.sample(context, noise=noise)


@ALL_VARIANTS
def test_student_inverse_rejects_a_waveform_of_the_wrong_shape(variant):
    student, context, noise = _student_case(variant)
    with pytest.raises(ValueError, match="x has shape"):
        student.inverse(noise[:1], context)


@ALL_VARIANTS
def test_student_inverse_rejects_nan(variant):
    student, context, noise = _student_case(variant)
    noise[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        student.log_prob(noise, context)


@pytest.mark.parametrize("chunk", [0, -4])
def test_student_stream_rejects_a_non_positive_chunk(chunk):
    student, context, noise = _student_case(VARIANTS[0])
    with pytest.raises(ValueError, match="chunk"):
        next(student.stream(context, noise, chunk))


def test_student_rejects_a_negative_temperature():
    student, context, _ = _student_case(VARIANTS[0])
    with pytest.raises(ValueError, match="temperature"):
        student.generate(context, temperature=-0.1)


EXCITATION_VARIANTS = [v for v in VARIANTS if v.excitation]


@pytest.mark.parametrize("variant", EXCITATION_VARIANTS, ids=str)
def test_fresh_mixed_excitation_is_voiced_pulses_plus_unvoiced_noise(variant):
    # Untrained, the first flow maps z0 to sqrt(v) pulses + sqrt(1 - v (1 - floor)) z0 with
    # the pitch tracker's voicing v, and the whole student's scale is that times the gain.
    fresh = IAFStudent(make_student(variant).config, make_student(variant).mel_config).double()
    context = make_context(fresh, variant)
    noise = random_signal(context, seed=21, scale=1.0)
    voiced = interpolate_frames(context.voicing[:, None], 0, context.num_samples, context.hop)[:, 0]
    floor = fresh.config.excitation_noise_floor
    expected = torch.sqrt(voiced) * context.pulses + torch.sqrt(1 - voiced * (1 - floor)) * noise
    torch.testing.assert_close(fresh.flows.step("excitation")(noise, context).output, expected)
    sample = fresh.sample(context, noise=noise)
    gain = context.lpc.gain.repeat_interleave(context.hop, dim=1)
    torch.testing.assert_close(
        sample.log_scale, gain.log() + 0.5 * torch.log1p(-voiced * (1 - floor)), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("variant", EXCITATION_VARIANTS, ids=str)
def test_mixed_excitation_ignores_its_input_history_and_learns_the_voicing(variant):
    student, context, u = _student_case(variant, 2)
    flow = student.flows.step("excitation")
    perturbed = u.clone()
    perturbed[:, 5] += 1.0
    step, step_p = flow(u, context), flow(perturbed, context)
    assert torch.equal(step.mean, step_p.mean) and torch.equal(step.log_scale, step_p.log_scale)
    # the learned voicing correction receives gradients through the whole sample
    sample = student.sample(context, noise=u)
    (sample.waveform.square().sum() + IAFStudent.log_prob_of_sample(sample).sum()).backward()
    correction = flow.conditioner.correction
    assert correction.weight.grad is not None and bool(correction.weight.grad.abs().sum() > 0)


def test_mixed_excitation_needs_pitch():
    with pytest.raises(ValueError, match="mixed_excitation needs pitch"):
        StudentConfig(mixed_excitation=True)

"""The mel-inversion prior: its waveform's length and alignment, its start at the mel's
pseudo-inverse magnitude, and its place in the student (an exact shift) and the teacher."""

from __future__ import annotations

import dataclasses

import torch

from models.config import MelConfig, PriorConfig
from models.mel import MelFrontEnd
from models.prior import MelInversionPrior, mel_pseudo_inverse
from tests.models.helpers import VARIANTS, make_context, make_student, make_teacher, random_signal

PRIOR = next(v for v in VARIANTS if v.prior and v.source_filter)
MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=20)


def _prior(**overrides):
    config = PriorConfig(enabled=True, n_fft=256, channels=8, layers=2, **overrides)
    return MelInversionPrior(config, MEL).double()


def test_prior_waveform_spans_the_frame_centres():
    features = torch.randn(3, 20, 11, dtype=torch.float64)
    assert _prior()(features).shape == (3, 10 * 64)


def test_a_fresh_prior_starts_at_the_pseudo_inverse_magnitude():
    front_end = MelFrontEnd(MEL).double()
    audio = torch.randn(2, 1280, dtype=torch.float64) * 0.1
    features = front_end(audio)
    prior = _prior()
    _, log_magnitude = prior.spectrum(features)
    mel = front_end.denormalise(features)
    expected = torch.log((mel_pseudo_inverse(MEL, 256).double() @ mel).abs().clamp_min(1e-5))
    torch.testing.assert_close(log_magnitude, expected.clamp(max=8.0))


def test_the_pseudo_inverse_recovers_a_magnitude_that_the_filterbank_maps_back_to_the_mel():
    front_end = MelFrontEnd(MEL).double()
    audio = torch.randn(1, 2048, dtype=torch.float64) * 0.1
    mel = front_end.denormalise(front_end(audio))  # (1, 20, M)
    magnitude = mel_pseudo_inverse(MEL, 256).double() @ mel
    back = front_end.filterbank.double().T @ magnitude
    torch.testing.assert_close(back, mel, rtol=1e-6, atol=1e-9)


def test_the_student_with_a_prior_is_the_residual_flows_shifted_by_h():
    student = make_student(PRIOR)
    context = make_context(student, PRIOR, frames=5)
    noise = random_signal(context, seed=3, scale=1.0)
    sample = student.sample(context, noise=noise)
    names = student.flows.names()
    assert names[-1] == "prior"
    residual = noise
    for name in names[:-1]:
        residual = student.flows.step(name)(residual, context).output
    torch.testing.assert_close(sample.waveform, residual + context.prior, rtol=0, atol=1e-12)
    # the shift is in the composed mean, not in the scale
    without = student.flows.step("prior")(residual, context)
    assert torch.equal(without.log_scale, torch.zeros_like(residual))


def test_the_teacher_with_a_prior_scores_x_as_the_residual_x_minus_h():
    # shifting the waveform and the prior together leaves the teacher's density unchanged
    teacher = make_teacher(PRIOR)
    context = make_context(teacher, PRIOR, frames=5)
    x = random_signal(context, seed=4)
    shifted = context.prior + 0.3 * torch.sin(torch.arange(x.shape[1], dtype=x.dtype))
    other = type(context)(**{**context.__dict__, "prior": shifted})
    residual = x - context.prior
    other_x = residual + shifted
    # the source channel h differs, so compare with the channel held fixed
    other.source = context.source
    torch.testing.assert_close(
        teacher.log_prob(x, context), teacher.log_prob(other_x, other), rtol=0, atol=1e-9
    )


def test_the_teacher_without_the_shift_scores_x_as_the_shifted_teacher_scores_x_plus_h():
    # prior_shift=False changes only where h enters: the same weights score x exactly as the
    # shifted teacher scores x + h (h still the same source channel in both)
    noshift = next(v for v in VARIANTS if v.prior and not v.prior_shift)
    teacher = make_teacher(noshift)
    shifted = make_teacher(dataclasses.replace(noshift, prior_shift=True))
    shifted.load_state_dict(teacher.state_dict())
    context = make_context(teacher, noshift, frames=5)
    x = random_signal(context, seed=5)
    mean, log_scale = teacher.conditionals(x, context)
    mean_shifted, log_scale_shifted = shifted.conditionals(x + context.prior, context)
    torch.testing.assert_close(mean + context.prior, mean_shifted, rtol=0, atol=1e-10)
    torch.testing.assert_close(log_scale, log_scale_shifted, rtol=0, atol=1e-10)
    assert not torch.allclose(mean, mean_shifted)  # the switch is not a no-op

"""Conditioning: the per-batch context, its validation, the upsampler and interpolation."""

from __future__ import annotations

import pytest
import torch

from models.conditioning import Upsampler, interpolate_frames
from models.config import StudentConfig, TeacherConfig, UpsamplerConfig
from tests.models.helpers import (
    HOP,
    N_MELS,
    N_SPEAKERS,
    VARIANT_IDS,
    VARIANTS,
    make_student,
    make_teacher,
    random_mel,
    speaker_ids,
)

COND = [v for v in VARIANTS if v.conditional]
UNCOND = [v for v in VARIANTS if not v.conditional]
SPEAKERS = [v for v in VARIANTS if v.speakers]


# --- interpolation ---------------------------------------------------------------------------


def _interpolate_reference(frames, t0, t1, hop):
    last = frames.shape[-1] - 1
    out = []
    for t in range(t0, t1):
        left = min(t // hop, last)
        right = min(left + 1, last)
        weight = (t % hop) / hop
        out.append(frames[..., left] * (1 - weight) + frames[..., right] * weight)
    return torch.stack(out, -1)


@pytest.mark.parametrize("t0,t1", [(0, 24), (0, 1), (3, 17), (8, 16), (20, 40), (31, 33)], ids=str)
def test_interpolate_frames_is_linear_between_frame_centres(t0, t1):
    frames = torch.randn(2, 3, 4, dtype=torch.float64)  # centres at 0, 8, 16, 24
    torch.testing.assert_close(
        interpolate_frames(frames, t0, t1, HOP),
        _interpolate_reference(frames, t0, t1, HOP),
        rtol=0,
        atol=1e-14,
    )


def test_interpolate_frames_hits_every_frame_centre_exactly():
    frames = torch.randn(1, 2, 5, dtype=torch.float64)
    dense = interpolate_frames(frames, 0, 4 * HOP + 1, HOP)
    assert torch.equal(dense[..., ::HOP], frames)


def test_interpolate_frames_of_an_empty_range_is_empty():
    assert interpolate_frames(torch.randn(1, 2, 3), 5, 5, HOP).shape == (1, 2, 0)


def test_interpolate_then_project_equals_project_then_interpolate():
    frames = torch.randn(2, 3, 4, dtype=torch.float64)
    project = torch.nn.Conv1d(3, 5, 1).double()
    torch.testing.assert_close(
        project(interpolate_frames(frames, 0, 24, HOP)),
        interpolate_frames(project(frames), 0, 24, HOP),
    )


# --- the upsampler ---------------------------------------------------------------------------


def test_upsampler_keeps_frames_and_adds_channels():
    upsampler = Upsampler(UpsamplerConfig(channels=6, layers=2), n_mels=N_MELS, n_speakers=2)
    out = upsampler(torch.randn(3, N_MELS, 7), torch.tensor([0, 1, 1]), frames=7)
    assert out is not None and out.shape == (3, 6, 7)


def test_unconditional_upsampler_without_speakers_gives_nothing():
    upsampler = Upsampler(UpsamplerConfig(), n_mels=0, n_speakers=0)
    assert upsampler(None, None, frames=4) is None and upsampler.out_channels == 0


def test_speaker_only_upsampler_depends_on_the_speaker():
    upsampler = Upsampler(UpsamplerConfig(channels=4), n_mels=0, n_speakers=3)
    out = upsampler(None, torch.tensor([0, 2]), frames=3)
    assert out is not None and out.shape == (2, 4, 3)
    assert not torch.equal(out[0], out[1])


# --- contexts --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", COND, ids=str)
@pytest.mark.parametrize("frames", [2, 5])
def test_conditional_context_describes_frames_minus_one_hops(variant, frames):
    student = make_student(variant)
    speaker = speaker_ids(3) if variant.speakers else None
    context = student.context(mel=random_mel(3, frames, seed=1), speaker=speaker)
    assert (context.batch, context.num_samples, context.hop) == (3, (frames - 1) * HOP, HOP)
    assert context.frames is not None and context.frames.shape[-1] == frames
    assert (context.lpc is not None) == variant.source_filter


@pytest.mark.parametrize("variant", UNCOND, ids=str)
@pytest.mark.parametrize("samples", [1, 8, 13])
def test_unconditional_context_covers_the_requested_samples(variant, samples):
    student = make_student(variant)
    speaker = speaker_ids(2) if variant.speakers else None
    context = student.context(num_samples=samples, speaker=speaker, batch=2)
    assert (context.batch, context.num_samples) == (2, samples)
    if context.frames is not None:
        assert (context.frames.shape[-1] - 1) * HOP >= samples


@pytest.mark.parametrize("variant", COND, ids=str)
def test_context_rejects_a_sample_count_that_does_not_match_the_hop(variant):
    student = make_student(variant)
    speaker = speaker_ids(2) if variant.speakers else None
    with pytest.raises(ValueError, match="mel frames describe 24 samples at hop 8"):
        student.context(mel=random_mel(2, 4, seed=1), num_samples=25, speaker=speaker)


@pytest.mark.parametrize("variant", COND, ids=str)
def test_conditional_context_requires_a_mel(variant):
    student = make_student(variant)
    with pytest.raises(ValueError, match="conditional"):
        student.context(num_samples=24, speaker=speaker_ids(1) if variant.speakers else None)


@pytest.mark.parametrize("variant", COND, ids=str)
def test_context_rejects_a_mel_with_the_wrong_number_of_bands(variant):
    student = make_student(variant)
    with pytest.raises(ValueError, match="mel must be"):
        student.context(mel=torch.zeros(1, N_MELS + 2, 4, dtype=torch.float64))


@pytest.mark.parametrize("variant", COND, ids=str)
def test_context_rejects_nan_in_the_mel(variant):
    student = make_student(variant)
    mel = random_mel(1, 4, seed=1)
    mel[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        student.context(mel=mel, speaker=speaker_ids(1) if variant.speakers else None)


@pytest.mark.parametrize("variant", UNCOND, ids=str)
def test_unconditional_context_rejects_a_mel(variant):
    student = make_student(variant)
    with pytest.raises(ValueError, match="unconditional"):
        student.context(mel=random_mel(1, 4, seed=1), num_samples=24)


@pytest.mark.parametrize("variant", UNCOND, ids=str)
@pytest.mark.parametrize("samples", [None, 0, -8])
def test_unconditional_context_needs_a_positive_sample_count(variant, samples):
    student = make_student(variant)
    with pytest.raises(ValueError, match="num_samples > 0"):
        student.context(num_samples=samples, speaker=speaker_ids(1) if variant.speakers else None)


@pytest.mark.parametrize("variant", SPEAKERS, ids=str)
def test_speaker_model_requires_a_speaker(variant):
    student = make_student(variant)
    mel = random_mel(1, 4, seed=1) if variant.conditional else None
    with pytest.raises(ValueError, match="pass a speaker id"):
        student.context(mel=mel, num_samples=None if mel is not None else 24)


@pytest.mark.parametrize("variant", SPEAKERS, ids=str)
@pytest.mark.parametrize("ids", [[-1], [N_SPEAKERS], [0, N_SPEAKERS + 5]], ids=str)
def test_speaker_model_rejects_ids_out_of_range(variant, ids):
    student = make_student(variant)
    speaker = torch.tensor(ids)
    mel = random_mel(len(ids), 4, seed=1) if variant.conditional else None
    with pytest.raises(ValueError, match="speaker ids must lie in"):
        student.context(mel=mel, num_samples=None if mel is not None else 24, speaker=speaker)


@pytest.mark.parametrize("variant", [v for v in SPEAKERS if v.conditional], ids=str)
def test_speaker_batch_must_match_the_mel_batch(variant):
    student = make_student(variant)
    with pytest.raises(ValueError, match="speaker has batch 3, the mel has 2"):
        student.context(mel=random_mel(2, 4, seed=1), speaker=speaker_ids(3))


@pytest.mark.parametrize("variant", SPEAKERS, ids=str)
def test_speaker_ids_must_be_one_dimensional(variant):
    student = make_student(variant)
    mel = random_mel(2, 4, seed=1) if variant.conditional else None
    with pytest.raises(ValueError, match=r"\(B,\) tensor"):
        student.context(
            mel=mel, num_samples=None if mel is not None else 24, speaker=torch.tensor([[0], [1]])
        )


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.speakers], ids=str)
def test_model_without_speakers_rejects_a_speaker(variant):
    student = make_student(variant)
    mel = random_mel(1, 4, seed=1) if variant.conditional else None
    with pytest.raises(ValueError, match="no speakers"):
        student.context(
            mel=mel, num_samples=None if mel is not None else 24, speaker=torch.tensor([0])
        )


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_teacher_and_student_contexts_agree_on_batch_and_length(variant):
    teacher, student = make_teacher(variant), make_student(variant)
    speaker = speaker_ids(2) if variant.speakers else None
    if variant.conditional:
        mel = random_mel(2, 4, seed=1)
        contexts = [m.context(mel=mel, speaker=speaker) for m in (teacher, student)]
    else:
        contexts = [m.context(num_samples=24, speaker=speaker, batch=2) for m in (teacher, student)]
    assert {(c.batch, c.num_samples, c.hop) for c in contexts} == {(2, 24, HOP)}


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config_class", [TeacherConfig, StudentConfig])
def test_source_filter_requires_conditioning(config_class):
    with pytest.raises(ValueError, match="needs conditioning"):
        config_class(conditional=False)


@pytest.mark.parametrize("config_class", [TeacherConfig, StudentConfig])
def test_model_configs_reject_unknown_keys(config_class):
    with pytest.raises(ValueError, match="extra"):
        config_class(unknown_setting=3)


def test_upsampler_config_rejects_an_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        UpsamplerConfig(kernel_size=4)


def test_configs_are_frozen():
    config = StudentConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.flows = 2  # type: ignore[misc]

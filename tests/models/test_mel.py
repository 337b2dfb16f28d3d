"""The one log-mel front end: shapes, normalisation, and refusal of bad input."""

from __future__ import annotations

import pytest
import torch
import torchaudio

from models.config import MelConfig
from models.mel import MelFrontEnd, check_finite

MEL = MelConfig(sample_rate=8000, n_fft=64, hop_length=8, n_mels=8)


def _audio(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(*shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("samples", [33, 40, 41, 47, 48, 200])
def test_front_end_gives_one_frame_per_hop_plus_one(samples):
    features = MelFrontEnd(MEL)(_audio(3, samples).float())
    assert features.shape == (3, MEL.n_mels, samples // MEL.hop_length + 1)
    assert features.shape[-1] == MEL.num_frames(samples)


def test_front_end_batches_a_single_waveform():
    audio = _audio(100).float()
    front = MelFrontEnd(MEL)
    assert torch.equal(front(audio), front(audio[None]))


def test_front_end_equals_torchaudio_slaney_magnitude_mel_then_log_normalisation():
    audio = _audio(2, 120).float()
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=8000,
        n_fft=64,
        hop_length=8,
        n_mels=8,
        power=1.0,
        norm="slaney",
        mel_scale="slaney",
        center=True,
        pad_mode="reflect",
    )(audio)
    expected = (torch.log(reference.clamp_min(MEL.log_floor)) + MEL.norm_offset) / MEL.norm_scale
    torch.testing.assert_close(MelFrontEnd(MEL)(audio), expected)


def test_front_end_features_follow_the_input_dtype():
    assert MelFrontEnd(MEL)(_audio(1, 100)).dtype == torch.float64


def test_silence_gives_the_floor_everywhere():
    features = MelFrontEnd(MEL)(torch.zeros(1, 100))
    floor = (torch.log(torch.tensor(MEL.log_floor)) + MEL.norm_offset) / MEL.norm_scale
    torch.testing.assert_close(features, torch.full_like(features, float(floor)))


def test_denormalise_inverts_normalise_above_the_floor():
    front = MelFrontEnd(MEL)
    mel = torch.rand(2, MEL.n_mels, 5, dtype=torch.float64) + MEL.log_floor
    torch.testing.assert_close(front.denormalise(front.normalise(mel)), mel)


def test_filterbank_and_window_shapes():
    front = MelFrontEnd(MEL)
    assert front.filterbank.shape == (MEL.n_fft // 2 + 1, MEL.n_mels)
    assert front.window.shape == (MEL.window,)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=str)
def test_front_end_rejects_non_finite_audio(bad):
    audio = _audio(2, 100).float()
    audio[1, 50] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        MelFrontEnd(MEL)(audio)


@pytest.mark.parametrize("samples", [0, 1, 32])
def test_front_end_rejects_audio_too_short_for_the_window(samples):
    with pytest.raises(ValueError, match="too short"):
        MelFrontEnd(MEL)(torch.zeros(1, samples))


@pytest.mark.parametrize("shape", [(1, 1, 100), (2, 2, 2, 100)])
def test_front_end_rejects_more_than_two_dimensions(shape):
    with pytest.raises(ValueError, match=r"\(B, T\) or \(T,\)"):
        MelFrontEnd(MEL)(torch.zeros(shape))


def test_check_features_batches_a_single_mel():
    mel = torch.zeros(MEL.n_mels, 4)
    assert MelFrontEnd(MEL).check_features(mel).shape == (1, MEL.n_mels, 4)


@pytest.mark.parametrize(
    "shape", [(1, MEL.n_mels + 1, 4), (4,), (1, 1, MEL.n_mels, 4)], ids=["bands", "1d", "4d"]
)
def test_check_features_rejects_the_wrong_shape(shape):
    with pytest.raises(ValueError, match="mel must be"):
        MelFrontEnd(MEL).check_features(torch.zeros(shape))


def test_check_features_rejects_a_single_frame():
    with pytest.raises(ValueError, match="at least 2 frames"):
        MelFrontEnd(MEL).check_features(torch.zeros(1, MEL.n_mels, 1))


def test_check_features_rejects_nan():
    mel = torch.zeros(1, MEL.n_mels, 4)
    mel[0, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        MelFrontEnd(MEL).check_features(mel)


def test_check_finite_names_the_tensor():
    with pytest.raises(ValueError, match="^noise contains"):
        check_finite("noise", torch.tensor([0.0, float("nan")]))


# --- the config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"win_length": 128}, "exceeds n_fft"),
        ({"win_length": 32, "hop_length": 40}, "exceeds the window"),
        ({"f_max": 5000.0}, "Nyquist"),
        ({"f_min": 4000.0}, "below f_max"),
        ({"bogus": 1}, "bogus"),
    ],
    ids=["window", "hop", "nyquist", "f-range", "unknown-key"],
)
def test_mel_config_rejects_inconsistent_values(changes, message):
    with pytest.raises(ValueError, match=message):
        MelConfig(**{"sample_rate": 8000, "n_fft": 64, "hop_length": 8, **changes})


def test_mel_config_derives_the_window_and_upper_frequency():
    assert (MEL.window, MEL.upper_frequency) == (64, 4000.0)
    assert MelConfig(n_fft=64, win_length=48, hop_length=8).window == 48

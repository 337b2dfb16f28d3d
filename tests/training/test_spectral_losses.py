"""The spectral losses the prior trains with: zero exactly at the target, invariant where
they should be (a 2 pi phase wrap), and they move the prior toward the real audio."""

from __future__ import annotations

import math

import pytest
import torch

from models.config import MelConfig, PriorConfig
from models.mel import MelFrontEnd
from models.prior import MelInversionPrior
from training.config import PriorTrainingConfig
from training.objectives.prior import PriorObjective, mel_scale_front_ends, prior_terms
from training.objectives.spectral import (
    anti_wrapped,
    complex_stft,
    consistency_distance,
    dc_distance,
    log_mel_distance,
    phase_losses,
)

MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=20)


def _audio(seed: int, length: int = 2048) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 8000
    tone = torch.sin(2 * math.pi * 220 * t) + 0.3 * torch.sin(2 * math.pi * 660 * t)
    return (0.2 * tone + 0.01 * torch.randn(length, generator=generator))[None]


def _prior_case() -> tuple[MelInversionPrior, MelFrontEnd, dict[str, torch.Tensor]]:
    """A small seeded prior, its front end and a batch of two tones-plus-noise segments."""
    torch.manual_seed(0)
    prior = MelInversionPrior(PriorConfig(enabled=True, n_fft=256, channels=16, layers=2), MEL)
    front_end = MelFrontEnd(MEL)
    audio = torch.cat([_audio(1), _audio(2)])
    return prior, front_end, {"audio": audio[:, :1984], "mel": front_end(audio)[..., :32]}


def test_anti_wrapped_distance_ignores_whole_turns():
    angles = torch.tensor([0.0, 2 * math.pi, -4 * math.pi, 0.5, 0.5 + 2 * math.pi, math.pi])
    torch.testing.assert_close(
        anti_wrapped(angles), torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, math.pi]), atol=1e-6, rtol=0
    )


def test_phase_losses_vanish_for_the_same_spectrum_and_for_a_whole_turn():
    spectrum = torch.randn(2, 9, 7, dtype=torch.complex64)
    assert float(phase_losses(spectrum, spectrum)) == pytest.approx(0.0, abs=1e-6)
    turned = spectrum * torch.exp(torch.tensor(2j * math.pi))
    assert float(phase_losses(turned, spectrum)) == pytest.approx(0.0, abs=1e-5)
    assert float(phase_losses(spectrum * 1j, spectrum)) > 1.0  # a quarter turn everywhere


def test_log_mel_distance_is_zero_at_the_target_and_grows_with_the_error():
    front_end = MelFrontEnd(MEL)
    audio = _audio(0)
    assert float(log_mel_distance(audio, audio, front_end)) == 0.0
    assert float(log_mel_distance(0.5 * audio, audio, front_end)) == pytest.approx(
        math.log(2.0), rel=1e-3
    )


def test_dc_distance_is_an_offsets_size_relative_to_the_targets_rms_and_blind_to_speech():
    audio = torch.cat([_audio(3, 4000), _audio(4, 4000)])  # 220 + 660 Hz tones and noise
    rms = float(audio.square().mean().sqrt())
    assert float(dc_distance(audio, audio)) == 0.0
    offsets = torch.tensor([[3e-3], [-1e-3]])
    assert float(dc_distance(audio + offsets, audio)) == pytest.approx(2e-3 / rms, rel=1e-3)
    # what speech-band content differs by is not an offset: a 100 Hz hum, 10 % of the level
    hum = 0.02 * torch.sin(2 * math.pi * 100 * torch.arange(4000) / 8000)
    assert float(dc_distance(audio + hum, audio)) < 1e-3 * float(dc_distance(audio + 0.02, audio))


def test_consistency_is_zero_for_a_real_signals_stft_and_sees_a_made_up_phase():
    prior, _, batch = _prior_case()
    n_fft, hop = prior.config.n_fft, MEL.hop_length
    window = prior.window
    audio = batch["audio"][:, : 31 * hop]  # 32 frames centred hop apart

    def stft(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True)

    inner = slice(n_fft // 2 // hop, 32 - n_fft // 2 // hop)
    spectrum = stft(audio)
    again = stft(prior.waveform(spectrum))
    assert float(consistency_distance(spectrum[..., inner], again[..., inner])) < 1e-5
    scrambled = spectrum.abs() * torch.exp(1j * 6.283 * torch.rand(spectrum.shape))
    again = stft(prior.waveform(scrambled))
    assert float(consistency_distance(scrambled[..., inner], again[..., inner])) > 0.3


def test_the_priors_consistency_term_is_added_with_its_weight():
    prior, front_end, batch = _prior_case()
    with torch.no_grad():
        plain = prior_terms(prior, batch, PriorTrainingConfig(), front_end)
        weighted = prior_terms(prior, batch, PriorTrainingConfig(consistency_weight=3.0), front_end)
        spectrum, _ = prior.spectrum(batch["mel"])
        again = torch.stft(
            prior.waveform(spectrum), prior.config.n_fft, MEL.hop_length, window=prior.window,
            center=True, return_complex=True,
        )  # fmt: skip
    assert "consistency" not in plain
    edge = prior.config.n_fft // 2 // MEL.hop_length
    inner = slice(edge, spectrum.shape[-1] - edge)
    term = float(consistency_distance(spectrum[..., inner], again[..., inner]))
    assert 0 < term < 2  # a fresh head's spectrum is no signal's
    assert float(weighted["consistency"]) == pytest.approx(term, rel=1e-6)
    torch.testing.assert_close(weighted["loss"], plain["loss"] + 3.0 * weighted["consistency"])


@pytest.mark.parametrize(
    "weights",
    [{}, {"magnitude_weight": 1.0, "phase_weight": 1.0}, {"consistency_weight": 1.0}],
)
def test_a_few_steps_of_the_prior_objective_lower_it(weights):
    prior, front_end, batch = _prior_case()
    config = PriorTrainingConfig(**weights)
    optimizer = torch.optim.Adam(prior.parameters(), lr=3e-3)
    first = float(prior_terms(prior, batch, config, front_end)["loss"].detach())
    for _ in range(30):
        loss = prior_terms(prior, batch, config, front_end)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(prior_terms(prior, batch, config, front_end)["loss"].detach()) < 0.8 * first


def test_the_priors_dc_term_is_the_dc_distance_of_its_waveform_added_with_its_weight():
    prior, front_end, batch = _prior_case()
    with torch.no_grad():
        plain = prior_terms(prior, batch, PriorTrainingConfig(), front_end)
        weighted = prior_terms(prior, batch, PriorTrainingConfig(dc_weight=7.0), front_end)
        waveform = prior(batch["mel"])
    assert "dc" not in plain
    term = float(dc_distance(waveform, batch["audio"][:, : waveform.shape[1]]))
    assert term > 0
    assert float(weighted["dc"]) == pytest.approx(term, rel=1e-6)
    torch.testing.assert_close(weighted["loss"], plain["loss"] + 7.0 * weighted["dc"])


def test_the_mel_term_averages_the_front_end_and_every_extra_scale():
    prior, front_end, batch = _prior_case()
    config = PriorTrainingConfig(mel_scales=((128, 10), (512, 40)))
    scales = mel_scale_front_ends(MEL, config.mel_scales)
    assert [(s.config.n_fft, s.config.hop_length, s.config.n_mels) for s in scales] == [
        (128, 32, 10),
        (512, 128, 40),
    ]
    with torch.no_grad():
        terms = prior_terms(prior, batch, config, front_end, scales)
        waveform = prior(batch["mel"])
        real = batch["audio"][:, : waveform.shape[1]]
        each = [float(log_mel_distance(waveform, real, fe)) for fe in (front_end, *scales)]
        assert float(terms["mel"]) == pytest.approx(sum(each) / 3, rel=1e-5)
        assert len(set(round(e, 6) for e in each)) == 3  # the scales see different errors
        objective = PriorObjective(prior, config, MEL)  # builds the same scales itself
        assert float(objective(batch)["loss/mel"]) == pytest.approx(float(terms["mel"]), rel=1e-5)


@pytest.mark.parametrize("scale", [(8, 4), (256, 200), (256, 0)])
def test_an_impossible_mel_scale_is_refused_in_one_line(scale):
    with pytest.raises(ValueError, match="prior_training.mel_scales"):
        PriorTrainingConfig(mel_scales=(scale,))


def test_the_phase_term_averages_the_head_and_every_extra_resolution():
    prior, front_end, batch = _prior_case()
    head_only = PriorTrainingConfig(phase_weight=1.0, phase_terms=("group_delay",))
    config = head_only.model_copy(update={"phase_ffts": (128, 512)})
    with torch.no_grad():
        head = float(prior_terms(prior, batch, head_only, front_end)["phase"])
        waveform = prior(batch["mel"])
        real = batch["audio"][:, : waveform.shape[1]]
        each = [head]
        for size in (128, 512):
            predicted, target = complex_stft(waveform, size), complex_stft(real, size)
            kept = slice(2, target.shape[-1] - 2)
            each.append(
                float(phase_losses(predicted[..., kept], target[..., kept], ("group_delay",)))
            )
        assert float(prior_terms(prior, batch, config, front_end)["phase"]) == pytest.approx(
            sum(each) / 3, rel=1e-5
        )
        assert len(set(round(e, 6) for e in each)) == 3  # each resolution sees its own error
        # the real segment against itself: no phase error at any resolution
        same = complex_stft(real, 128)
        assert float(phase_losses(same, same, ("group_delay",))) == pytest.approx(0.0, abs=1e-6)


def test_a_phase_resolution_too_small_is_refused_in_one_line():
    with pytest.raises(ValueError, match="prior_training.phase_ffts"):
        PriorTrainingConfig(phase_ffts=(8,))

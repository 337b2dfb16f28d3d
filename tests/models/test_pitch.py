"""Pitch from the mel: the lagged inputs stay strictly causal and stream exactly; the source
channels and the estimator do what they say."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import MelConfig, PitchConfig, StudentConfig, TeacherConfig
from models.mel import MelFrontEnd
from models.pitch import (
    PitchTrack,
    band_limited_pulses,
    delayed_lag_taps,
    estimate_pitch,
    history_length,
    lagged,
    lagged_taps,
    periodic_source,
    pitch_lag,
    source_channels,
    voicing,
)
from tests.models.helpers import (
    PITCH_VARIANTS,
    VARIANTS,
    make_context,
    make_student,
    make_teacher,
    random_signal,
)

FEW = settings(max_examples=25, deadline=None, derandomize=True)


def _lagged_reference(sequence, lag, t0=0, history=None):
    """``sequence_{t - lag_t}`` by linear interpolation, one sample at a time."""
    past = [] if history is None else history.T.tolist()
    values = past + sequence.T.tolist()  # time-major lists of per-batch values
    offset = len(past)
    out = torch.zeros_like(sequence)
    for b in range(sequence.shape[0]):
        for i in range(sequence.shape[1]):
            position = i + offset - float(lag[b, i])
            low = math.floor(position)
            fraction = position - low

            def at(index, b=b):
                return values[index][b] if index >= 0 else 0.0

            out[b, i] = at(low) * (1 - fraction) + at(low + 1) * fraction
    return out


def _sequence_and_lag(batch, steps, seed, max_lag=9.0):
    generator = torch.Generator().manual_seed(seed)
    sequence = torch.randn(batch, steps, generator=generator, dtype=torch.float64)
    lag = 2.0 + (max_lag - 2.0) * torch.rand(batch, steps, generator=generator, dtype=torch.float64)
    return sequence, lag


@FEW
@given(steps=st.integers(1, 30), seed=st.integers(0, 2**16), integer=st.booleans())
def test_lagged_matches_a_sample_by_sample_reference(steps, seed, integer):
    sequence, lag = _sequence_and_lag(2, steps, seed)
    if integer:
        lag = lag.round()
    torch.testing.assert_close(
        lagged(sequence, lag), _lagged_reference(sequence, lag), rtol=0, atol=1e-14
    )


@pytest.mark.parametrize("position", [0, 5, 17])
def test_lagged_reads_only_the_strict_past(position):
    sequence, lag = _sequence_and_lag(2, 24, seed=1)
    perturbed = sequence.clone()
    perturbed[:, position:] += 1.0
    out, out_p = lagged(sequence, lag), lagged(perturbed, lag)
    assert torch.equal(out[:, : position + 1], out_p[:, : position + 1])


@pytest.mark.parametrize("sizes", [[1] * 24, [5, 7, 12], [11, 13]], ids=["ones", "5-7-12", "11-13"])
def test_lagged_in_chunks_with_history_equals_one_pass(sizes):
    sequence, lag = _sequence_and_lag(2, 24, seed=2)
    history = sequence.new_zeros(2, history_length(lag))
    pieces, start = [], 0
    for size in sizes:
        chunk = sequence[:, start : start + size]
        pieces.append(lagged(chunk, lag[:, start : start + size], start, history))
        history = torch.cat([history, chunk], 1)[:, -history.shape[1] :]
        start += size
    torch.testing.assert_close(torch.cat(pieces, 1), lagged(sequence, lag), rtol=0, atol=1e-14)


@pytest.mark.parametrize("sizes", [[1] * 20, [6, 14]], ids=["ones", "6-14"])
def test_lag_taps_from_the_delayed_variable_equal_lag_taps_of_the_variable(sizes):
    # A conditioner gets v delayed by one; its taps v_{t-P+k} must be the same values.
    sequence, lag = _sequence_and_lag(3, 20, seed=3)
    lag = lag + 1.0  # P - k >= 2 for k = 1
    offsets = [-1, 0, 1]
    delayed = torch.nn.functional.pad(sequence[:, :-1], (1, 0))
    history, pieces, start = None, [], 0
    for size in sizes:
        taps, history = delayed_lag_taps(
            delayed[:, start : start + size], lag, offsets, start, history
        )
        pieces.append(taps)
        start += size
    expected = lagged_taps(sequence, lag, offsets)
    torch.testing.assert_close(torch.cat(pieces, 2), expected, rtol=0, atol=1e-14)


def test_pitch_lag_is_the_period_at_frame_centres_and_at_least_two_samples():
    f0 = torch.tensor([[100.0, 200.0, 5000.0]], dtype=torch.float64)
    track = PitchTrack(f0=f0, salience=torch.zeros_like(f0))
    lag = pitch_lag(track, hop=4, num_samples=9, sample_rate=8000)
    assert lag.shape == (1, 9)
    assert lag[0, 0].item() == pytest.approx(80.0) and lag[0, 4].item() == pytest.approx(40.0)
    assert float(lag.min()) >= 2.0


def test_periodic_source_shape_and_silence_when_unvoiced():
    config = PitchConfig(enabled=True, source_harmonics=3)
    f0 = torch.full((2, 4), 150.0, dtype=torch.float64)
    unvoiced = PitchTrack(f0=f0, salience=torch.full_like(f0, -100.0))
    source = periodic_source(unvoiced, hop=8, num_samples=24, sample_rate=8000, config=config)
    assert source.channels.shape == (2, source_channels(config), 24)
    assert source.pulses.shape == (2, 24)
    assert source.voicing.shape == (2, 4)
    # Every channel but the last (log-F0) is scaled by the voicing, here ~0.
    assert float(source.channels[:, :-1].abs().max()) < 1e-30


def test_periodic_source_first_harmonic_has_the_pitch_period():
    config = PitchConfig(enabled=True, source_harmonics=1)
    f0 = torch.full((1, 11), 200.0, dtype=torch.float64)  # a period of 40 samples at 8 kHz
    track = PitchTrack(f0=f0, salience=torch.full_like(f0, 100.0))
    source = periodic_source(track, hop=40, num_samples=400, sample_rate=8000, config=config)
    sine = source.channels[0, 0]
    torch.testing.assert_close(sine[40:], sine[:-40], rtol=0, atol=1e-9)
    pulses = source.pulses[0]
    torch.testing.assert_close(pulses[40:], pulses[:-40], rtol=0, atol=1e-6)
    peaks = torch.nonzero(pulses > 0.5 * float(pulses.max()))[:, 0]
    assert len(peaks) == 10 and bool((peaks % 40 == peaks[0] % 40).all())  # one per period


def test_band_limited_pulses_have_unit_power_and_no_harmonic_above_nyquist():
    rate, f0 = 8000, 230.0
    phase = torch.remainder(
        2 * math.pi * f0 * torch.arange(1, 8001, dtype=torch.float64) / rate, 2 * math.pi
    )
    pulses = band_limited_pulses(phase, torch.full_like(phase, f0), rate)
    assert abs(float(pulses.square().mean()) - 1.0) < 1e-2
    spectrum = torch.fft.rfft(pulses).abs()
    harmonics = int(rate / 2 // f0)
    bins = torch.arange(1, harmonics + 1) * int(f0)  # 1 Hz bins over one second
    assert float(spectrum[bins].min()) > 0.5 * float(spectrum[bins].max())
    others = torch.ones_like(spectrum, dtype=torch.bool)
    others[bins] = False
    others[0] = False
    # an aliased harmonic above Nyquist would land between the harmonics
    assert float(spectrum[others].max()) < 1e-6 * float(spectrum.max())


def test_voicing_is_a_logistic_around_the_threshold():
    config = PitchConfig(voicing_threshold=0.5, voicing_width=0.1)
    out = voicing(torch.tensor([-10.0, 0.5, 10.0]), config)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 1.0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("f0", [110.0, 180.0, 260.0])
def test_estimate_pitch_finds_the_fundamental_of_a_harmonic_tone(f0):
    mel_config = MelConfig()  # the real 8 kHz, 80-mel front end
    front = MelFrontEnd(mel_config).double()
    t = torch.arange(4000, dtype=torch.float64) / mel_config.sample_rate
    tone = sum(0.8**k * torch.sin(2 * math.pi * k * f0 * t) for k in range(1, 15))
    features = front(0.05 * tone)
    track = estimate_pitch(features, mel_config, PitchConfig(enabled=True), front.filterbank)
    middle = track.f0[0, 5:-5]  # frames away from the reflect-padded edges
    assert float(torch.log2(middle / f0).abs().median()) < 0.1


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_context_carries_pitch_exactly_for_pitch_models(variant):
    student = make_student(variant)
    context = make_context(student, variant, batch=2, frames=4)
    if variant.pitch:
        channels = source_channels(student.config.pitch) + int(variant.prior)  # h: one more
        assert context.source is not None and context.source.shape == (2, channels, 24)
        assert context.lag is not None and context.lag.shape == (2, 24)
    else:
        assert context.lag is None
        assert context.source is None if not variant.prior else context.source.shape[1] == 1


@pytest.mark.parametrize("variant", PITCH_VARIANTS, ids=str)
def test_pitch_models_reject_a_context_without_pitch(variant):
    student, teacher = make_student(variant), make_teacher(variant)
    student_context = make_context(student, variant)
    teacher_context = make_context(teacher, variant)
    student_context.lag, teacher_context.lag = None, None
    with pytest.raises(ValueError, match="no pitch"):
        student.generate(student_context, noise=random_signal(student_context, seed=1))
    with pytest.raises(ValueError, match="no pitch"):
        teacher.log_prob(random_signal(teacher_context, seed=1), teacher_context)


@pytest.mark.parametrize("config_class", [TeacherConfig, StudentConfig])
def test_pitch_needs_a_conditional_model(config_class):
    with pytest.raises(ValueError, match="pitch comes from the mel"):
        config_class(conditional=False, source_filter={"enabled": False}, pitch={"enabled": True})


def test_pitch_config_rejects_an_empty_range():
    with pytest.raises(ValueError, match="f0_min"):
        PitchConfig(f0_min=300.0, f0_max=200.0)


@pytest.mark.parametrize("variant", [VARIANTS[0], *PITCH_VARIANTS], ids=str)
def test_pitch_lagged_input_reaches_beyond_the_direct_receptive_field(variant):
    # The direct input v_{t-1} reaches back `field` samples; with a lag of about 6 samples,
    # v_s still reaches the mean at s + field + 1 through v_{t-P} -- but only with pitch.
    student = make_student(variant)
    context = make_context(student, variant, frames=6)
    field = student.config.wavenet.receptive_field
    flow = student.wavenet_steps[0]
    u = random_signal(context, seed=4)  # B = 2: one clip may sit in a dead ReLU, not both
    perturbed = u.clone()
    source = 5
    perturbed[:, source] += 1.0
    target = source + field + 1
    changed = flow(u, context).mean[:, target] != flow(perturbed, context).mean[:, target]
    assert bool(changed.any()) == variant.pitch


def test_viterbi_finds_a_best_banded_path_by_brute_force():
    """The frame loop (NumPy) returns a path whose score is the best over every path with
    moves of at most ``band`` candidates, each move charged its log-frequency distance."""
    import itertools

    from models.pitch import _viterbi

    generator = torch.Generator().manual_seed(0)
    log_candidates = torch.log2(torch.linspace(100, 400, 5))
    step = float((log_candidates[1:] - log_candidates[:-1]).mean())
    for trial in range(30):
        frames, band = 4, 1 + trial % 2
        score = torch.randint(-2, 3, (2, frames, 5), generator=generator).float()
        if trial % 3 == 0:
            score = torch.randn(2, frames, 5, generator=generator)
        path = _viterbi(score, log_candidates, 0.08, band)
        assert path.shape == (2, frames) and path.dtype == torch.int64

        def value(b: int, p: tuple[int, ...], s: torch.Tensor = score, n: int = frames) -> float:
            moves = sum(abs(p[i + 1] - p[i]) * step / 0.08 for i in range(n - 1))
            return float(sum(s[b, i, p[i]] for i in range(n))) - moves

        for b in range(2):
            best = max(
                value(b, p)
                for p in itertools.product(range(5), repeat=frames)
                if all(abs(p[i + 1] - p[i]) <= band for i in range(frames - 1))
            )
            assert value(b, tuple(path[b].tolist())) == pytest.approx(best, abs=1e-4)

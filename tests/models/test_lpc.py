"""Linear prediction from the mel and the time-varying filters built on it."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.config import MelConfig, SourceFilterConfig
from models.lpc import (
    all_pole_reference,
    block_index,
    impulse_response,
    levinson_durbin,
    linear_prediction,
    pad_frames,
    per_sample,
    time_varying_fir,
)
from models.mel import MelFrontEnd
from models.student import IAFStudent
from tests.models.helpers import (
    HOP,
    SOURCE_FILTER_VARIANTS,
    TINY_MEL,
    make_context,
    make_student,
    random_mel,
    student_config,
)

FEW = settings(max_examples=25, deadline=None, derandomize=True)


def _autocorrelation(signal, order):
    """Biased autocorrelation ``r_0 .. r_order`` of ``(..., N)``: a positive definite Toeplitz."""
    n = signal.shape[-1]
    return torch.stack(
        [(signal[..., : n - k] * signal[..., k:]).sum(-1) / n for k in range(order + 1)], -1
    )


def _toeplitz(r):
    """The ``(..., p, p)`` matrix ``R_ij = r_|i-j|`` of the normal equations from ``r_0 .. r_p``."""
    order = r.shape[-1] - 1
    index = (torch.arange(order)[:, None] - torch.arange(order)[None, :]).abs()
    return r[..., index]  # (..., p, p)


def _stable_denominators(batch, order, seed):
    generator = torch.Generator().manual_seed(seed)
    signal = torch.randn(batch, 64, generator=generator, dtype=torch.float64)
    signal = signal.cumsum(-1)  # strongly coloured, so the filters have long responses
    a, _ = levinson_durbin(_autocorrelation(signal, order))
    return a


def _roots(a):
    """Roots of ``z^p + a_1 z^{p-1} + ... + a_p`` per row, via the companion matrix."""
    order = a.shape[-1]
    companion = torch.zeros(*a.shape[:-1], order, order, dtype=a.dtype)
    companion[..., 0, :] = -a
    companion[..., 1:, :-1] = torch.eye(order - 1, dtype=a.dtype)
    return torch.linalg.eigvals(companion)


# --- Levinson-Durbin -------------------------------------------------------------------------


@FEW
@given(order=st.integers(1, 10), length=st.integers(12, 80), seed=st.integers(0, 2**16))
def test_levinson_durbin_matches_a_direct_solve_of_the_normal_equations(order, length, seed):
    generator = torch.Generator().manual_seed(seed)
    signal = torch.randn(3, length, generator=generator, dtype=torch.float64).cumsum(-1)
    r = _autocorrelation(signal, order)
    a, _ = levinson_durbin(r)
    direct = torch.linalg.solve(_toeplitz(r), -r[..., 1:, None])[..., 0]
    torch.testing.assert_close(a, direct, rtol=1e-8, atol=1e-8)


@FEW
@given(order=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_levinson_durbin_error_is_the_prediction_error_power(order, seed):
    generator = torch.Generator().manual_seed(seed)
    r = _autocorrelation(torch.randn(2, 50, generator=generator, dtype=torch.float64), order)
    a, error = levinson_durbin(r)
    torch.testing.assert_close(error, r[..., 0] + (a * r[..., 1:]).sum(-1), rtol=1e-10, atol=0)


@FEW
@given(order=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_levinson_durbin_gives_a_minimum_phase_predictor(order, seed):
    a = _stable_denominators(4, order, seed)
    assert bool((_roots(a).abs() < 1.0).all())


def test_levinson_durbin_accepts_extra_batch_dimensions():
    r = _autocorrelation(torch.randn(2, 3, 40, dtype=torch.float64), 4)
    a, error = levinson_durbin(r)
    assert a.shape == (2, 3, 4) and error.shape == (2, 3)


# --- impulse response and the all-pole reference ---------------------------------------------


@pytest.mark.parametrize("order", [1, 4, 9])
@pytest.mark.parametrize("taps", [3, 40])
def test_impulse_response_equals_the_all_pole_filter_run_on_an_impulse(order, taps):
    d = _stable_denominators(3, order, seed=order)
    impulse = torch.zeros(3, taps + 1, dtype=torch.float64)
    impulse[:, 0] = 1.0
    reference = all_pole_reference(impulse, d)
    torch.testing.assert_close(reference[:, 0], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(impulse_response(d, taps), reference[:, 1:], rtol=0, atol=1e-12)


def _long_fir_student():
    """A source-filter student with 64 FIR taps, enough that truncation is a small effect."""
    config = student_config(SOURCE_FILTER_VARIANTS[0])
    source_filter = config.source_filter.model_copy(update={"fir_taps": 64})
    return IAFStudent(config.model_copy(update={"source_filter": source_filter}), TINY_MEL).double()


def _constant_filter_context(student, frames):
    """A context whose every block has the same filter (one mel frame repeated)."""
    mel = random_mel(2, 2, seed=31)[..., :1].expand(-1, -1, frames).contiguous()
    return student.context(mel=mel)


def _synthesis_denominator(context, preemphasis):
    """``D(z) = A(z) (1 - rho z^-1)`` of block 0, coefficients ``d_1 .. d_{p+1}``."""
    a = context.lpc.coefficients[:, 0]
    full = torch.nn.functional.pad(a, (1, 0), value=1.0)  # 1, a_1 .. a_p
    return (
        torch.nn.functional.pad(full, (0, 1)) - preemphasis * torch.nn.functional.pad(full, (1, 0))
    )[:, 1:]


def test_fir_synthesis_flow_equals_the_all_pole_filter_before_truncation_matters():
    # For t <= J every tap of 1/D(z) the recursion would use is in the FIR, so they are equal.
    student = _long_fir_student()
    taps = student.config.source_filter.fir_taps
    context = _constant_filter_context(student, frames=taps // HOP + 1)  # T = J samples
    excitation = torch.randn(2, context.num_samples, dtype=torch.float64)
    synthesis = student.flows.step("synthesis")
    denominator = _synthesis_denominator(context, student.config.source_filter.preemphasis)
    torch.testing.assert_close(
        synthesis(excitation, context).output,
        all_pole_reference(excitation, denominator),
        rtol=0,
        atol=1e-12,
    )


def test_fir_synthesis_flow_equals_the_all_pole_filter_within_the_truncation_bound():
    student = _long_fir_student()
    taps = student.config.source_filter.fir_taps
    context = _constant_filter_context(student, frames=4 * taps // HOP + 1)  # T = 4 J
    excitation = torch.randn(2, context.num_samples, dtype=torch.float64)
    denominator = _synthesis_denominator(context, student.config.source_filter.preemphasis)
    difference = student.flows.step("synthesis")(excitation, context).output - all_pole_reference(
        excitation, denominator
    )
    # x_t - y_t = -sum_{j > J} h_j e_{t-j}, so |x_t - y_t| <= max|e| sum_{j > J} |h_j|.
    tail = impulse_response(denominator, 4 * taps)[:, taps:].abs().sum(-1)
    bound = tail * excitation.abs().amax(-1) + 1e-12
    assert bool((difference.abs().amax(-1) <= bound).all())


def test_truncation_bound_of_the_fir_synthesis_check_is_not_vacuous():
    # Guard for the test above: the bound must be small relative to the signal.
    student = _long_fir_student()
    taps = student.config.source_filter.fir_taps
    context = _constant_filter_context(student, frames=4 * taps // HOP + 1)
    denominator = _synthesis_denominator(context, student.config.source_filter.preemphasis)
    response = impulse_response(denominator, 4 * taps).abs()
    assert bool((response[:, taps:].sum(-1) < 0.1 * response[:, :taps].sum(-1)).all())


# --- the time-varying FIR: block path, gather path, reference --------------------------------


def _fir_reference(signal, taps, hop, t0, history):
    order = taps.shape[-1]
    padded = torch.cat([history, signal], dim=1)
    out = torch.zeros_like(signal)
    for i in range(signal.shape[1]):
        block = min((t0 + i) // hop, taps.shape[1] - 1)
        past = padded[:, i : i + order].flip(-1)  # lag 1 .. J
        out[:, i] = (taps[:, block] * past).sum(-1)
    return out


def _fir_case(hop, blocks, order, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    signal = torch.randn(2, steps, generator=generator, dtype=torch.float64)
    taps = torch.randn(2, blocks, order, generator=generator, dtype=torch.float64)
    history = torch.randn(2, order, generator=generator, dtype=torch.float64)
    return signal, taps, history


@pytest.mark.parametrize(
    "t0,steps",
    [(0, 24), (8, 16), (16, 8), (0, 8)],
    ids=["whole", "from-block-1", "last-block", "first-block"],
)
def test_time_varying_fir_block_path_matches_the_reference(t0, steps):
    hop, blocks, order = 8, 3, 5
    signal, taps, history = _fir_case(hop, blocks, order, steps, seed=t0 + steps)
    torch.testing.assert_close(
        time_varying_fir(signal, taps, hop, t0, history),
        _fir_reference(signal, taps, hop, t0, history),
        rtol=0,
        atol=1e-13,
    )


@pytest.mark.parametrize(
    "t0,steps",
    [(3, 16), (0, 13), (5, 7), (16, 16), (24, 8)],
    ids=["t0-unaligned", "length-unaligned", "both-unaligned", "past-the-end", "after-the-end"],
)
def test_time_varying_fir_gather_path_matches_the_reference(t0, steps):
    hop, blocks, order = 8, 3, 5
    signal, taps, history = _fir_case(hop, blocks, order, steps, seed=t0 + steps)
    torch.testing.assert_close(
        time_varying_fir(signal, taps, hop, t0, history),
        _fir_reference(signal, taps, hop, t0, history),
        rtol=0,
        atol=1e-13,
    )


@FEW
@given(
    hop=st.integers(1, 6),
    blocks=st.integers(1, 5),
    order=st.integers(1, 12),
    t0=st.integers(0, 30),
    steps=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_time_varying_fir_matches_the_reference_anywhere(hop, blocks, order, t0, steps, seed):
    signal, taps, history = _fir_case(hop, blocks, order, steps, seed)
    torch.testing.assert_close(
        time_varying_fir(signal, taps, hop, t0, history),
        _fir_reference(signal, taps, hop, t0, history),
        rtol=0,
        atol=1e-12,
    )


def test_time_varying_fir_in_chunks_equals_one_pass():
    hop, blocks, order = 4, 6, 7
    signal, taps, _ = _fir_case(hop, blocks, order, 24, seed=5)
    zeros = torch.zeros(2, order, dtype=torch.float64)
    whole = time_varying_fir(signal, taps, hop, 0, zeros)
    pieces, history, start = [], zeros, 0
    for size in (4, 3, 9, 8):
        chunk = signal[:, start : start + size]
        pieces.append(time_varying_fir(chunk, taps, hop, start, history))
        history = torch.cat([history, chunk], 1)[:, -order:]
        start += size
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-13)


def test_block_index_and_per_sample_clamp_to_the_last_block():
    assert block_index(5, 14, 4, 3, torch.device("cpu")).tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 2]
    values = torch.tensor([[10.0, 20.0]])
    assert per_sample(values, 0, 5, 2).tolist() == [[10.0, 10.0, 20.0, 20.0, 20.0]]


def test_pad_frames_repeats_the_last_frame_and_never_truncates():
    features = torch.arange(6.0).reshape(1, 2, 3)
    padded = pad_frames(features, 5)
    assert padded.shape == (1, 2, 5)
    assert torch.equal(padded[..., 3:], features[..., 2:].expand(-1, -1, 2))
    assert torch.equal(pad_frames(features, 2), features)


# --- linear prediction from the mel ----------------------------------------------------------


SF = SourceFilterConfig(order=6, fir_taps=20)
MEL = MelConfig(sample_rate=8000, n_fft=64, hop_length=8, n_mels=8)


def _lpc(features, config=SF, with_impulse=True):
    front = MelFrontEnd(MEL).double()
    return linear_prediction(
        features, MEL, config, front.filterbank, front.window, with_impulse=with_impulse
    )


def test_linear_prediction_shapes_are_per_block():
    lpc = _lpc(random_mel(2, 5, seed=1))
    assert lpc.coefficients.shape == (2, 4, SF.order)
    assert lpc.gain.shape == (2, 4)
    assert lpc.impulse is not None and lpc.impulse.shape == (2, 4, SF.fir_taps)


def test_linear_prediction_without_impulse_leaves_it_out():
    assert _lpc(random_mel(1, 3, seed=1), with_impulse=False).impulse is None


def test_linear_prediction_filters_are_minimum_phase():
    lpc = _lpc(random_mel(3, 6, seed=2))
    assert bool((_roots(lpc.coefficients).abs() < 1.0).all())


def test_linear_prediction_gain_respects_its_floor_on_silence():
    silence = torch.full((1, MEL.n_mels, 3), -10.0, dtype=torch.float64)  # far below the floor
    lpc = _lpc(silence)
    assert bool(torch.isfinite(lpc.coefficients).all())
    assert bool((lpc.gain >= SF.gain_floor * (1 - 1e-12)).all())


def test_linear_prediction_impulse_is_the_response_of_synthesis_and_deemphasis():
    lpc = _lpc(random_mel(1, 3, seed=3))
    a = lpc.coefficients[0, 0]
    full = torch.cat([torch.ones(1, dtype=a.dtype), a])
    # D(z) = A(z)(1 - rho z^-1) by polynomial multiplication (a convolution).
    d = torch.nn.functional.conv1d(
        torch.nn.functional.pad(full, (1, 1))[None, None],
        torch.tensor([[[-SF.preemphasis, 1.0]]], dtype=a.dtype),
    )[0, 0]
    torch.testing.assert_close(
        lpc.impulse[0, 0], impulse_response(d[1:], SF.fir_taps), rtol=0, atol=1e-12
    )


def test_linear_prediction_is_a_function_of_neighbouring_frames_only():
    features = random_mel(1, 6, seed=4)
    changed = features.clone()
    changed[..., 5] += 1.0  # the last frame only touches the last block
    first, second = _lpc(features), _lpc(changed)
    assert torch.equal(first.coefficients[:, :4], second.coefficients[:, :4])
    assert not torch.equal(first.coefficients[:, 4], second.coefficients[:, 4])


def test_linear_prediction_finds_a_strong_resonance():
    # An AR(2) resonance at 1 kHz (r = 0.95): the predictor's pole angle must land near it.
    mel_config = MelConfig(sample_rate=8000, n_fft=512, hop_length=128, n_mels=40)
    front = MelFrontEnd(mel_config).double()
    radius, angle = 0.95, 2 * math.pi * 1000 / 8000
    generator = torch.Generator().manual_seed(0)
    white = torch.randn(4096, generator=generator, dtype=torch.float64)
    signal = torch.zeros_like(white)
    for t in range(2, white.numel()):
        signal[t] = (
            white[t] + 2 * radius * math.cos(angle) * signal[t - 1] - radius**2 * signal[t - 2]
        )
    features = front(0.01 * signal)
    config = SourceFilterConfig(order=2, preemphasis=0.0, fir_taps=8)
    lpc = linear_prediction(features, mel_config, config, front.filterbank, front.window)
    roots = _roots(lpc.coefficients[0, 10:20])
    assert float((roots.angle().abs() - angle).abs().max()) < 0.15


@pytest.mark.parametrize("variant", SOURCE_FILTER_VARIANTS, ids=str)
def test_student_and_teacher_contexts_share_the_same_filters(variant):
    from tests.models.helpers import make_teacher

    student, teacher = make_student(variant), make_teacher(variant)
    student_lpc = make_context(student, variant).lpc
    teacher_lpc = make_context(teacher, variant).lpc
    assert torch.equal(student_lpc.coefficients, teacher_lpc.coefficients)
    assert torch.equal(student_lpc.gain, teacher_lpc.gain)
    assert teacher_lpc.impulse is None and student_lpc.impulse is not None

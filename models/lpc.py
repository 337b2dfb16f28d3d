"""Linear prediction from the log-mel, and the time-varying filters built on it.

The mel holds the spectral envelope. Per block of ``hop`` samples (between two frame
centres) we map the two neighbouring mel frames back to an approximate power spectrum
(normalised transpose of the filterbank), fold in the pre-emphasis response, take the
autocorrelation by inverse FFT, apply a Gaussian lag window and a white-noise
correction, and solve the normal equations by Levinson-Durbin. This gives per block
``A(z) = 1 + sum_k a_k z^-k`` and the residual gain ``g``.

References: Makhoul, "Linear prediction: a tutorial review" (1975); lag windowing as
in ITU-T G.729; the source-filter structure of docs/architecture.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import MelConfig, SourceFilterConfig


@dataclass
class LinearPrediction:
    """Per-block filters for a batch; block ``i`` covers samples ``[i hop, (i+1) hop)``.

    Attributes:
        coefficients: ``(B, N, p)`` the ``a_k`` of ``A(z)`` for the pre-emphasised signal.
        gain: ``(B, N)`` residual standard deviation per sample.
        impulse: ``(B, N, J)`` taps ``h_1..h_J`` of the truncated impulse response of
            ``1 / (A(z) (1 - rho z^-1))`` (``h_0 = 1`` is implicit), or None.
    """

    coefficients: Tensor
    gain: Tensor
    impulse: Tensor | None = None

    @staticmethod
    def stack(parts: list[LinearPrediction | None]) -> LinearPrediction | None:
        """Single-request filters padded along blocks (last block repeated) into one batch."""
        present = [p for p in parts if p is not None]
        if not present:
            return None
        if len(present) != len(parts):
            raise ValueError("some requests have linear prediction and some do not")
        length = max(p.gain.shape[1] for p in present)

        def padded(values: list[Tensor | None]) -> Tensor | None:
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise ValueError("some requests have impulse responses and some do not")
            return torch.cat([_pad_blocks(v, length) for v in values if v is not None])

        coefficients = padded([p.coefficients for p in present])
        gain = padded([p.gain for p in present])
        assert coefficients is not None and gain is not None
        return LinearPrediction(coefficients, gain, padded([p.impulse for p in present]))


def _pad_blocks(values: Tensor, blocks: int) -> Tensor:
    """``(1, N, ...)`` -> ``(1, blocks, ...)`` by repeating the last block."""
    extra = blocks - values.shape[1]
    if extra <= 0:
        return values
    return torch.cat([values, values[:, -1:].expand(-1, extra, *values.shape[2:])], dim=1)


def levinson_durbin(autocorr: Tensor) -> tuple[Tensor, Tensor]:
    """Solve the Toeplitz normal equations for every row of ``autocorr``.

    Args:
        autocorr: ``(..., p + 1)`` autocorrelation ``r_0 .. r_p`` (``r_0 > 0``).

    Returns:
        ``a`` ``(..., p)`` with ``A(z) = 1 + sum_k a_k z^-k`` minimising the prediction
        error, and that error power ``(...)``.
    """
    order = autocorr.shape[-1] - 1
    a = autocorr.new_zeros(*autocorr.shape[:-1], order)
    error = autocorr[..., 0]
    for i in range(order):
        # acc = r_{i+1} + sum_{j<i} a_j r_{i-j}
        acc = autocorr[..., i + 1]
        if i > 0:
            acc = acc + (a[..., :i] * autocorr[..., 1 : i + 1].flip(-1)).sum(-1)
        reflection = -acc / error
        previous = a[..., :i].clone()
        a = a.clone()
        a[..., :i] = previous + reflection.unsqueeze(-1) * previous.flip(-1)
        a[..., i] = reflection
        error = error * (1.0 - reflection * reflection)
    return a, error


def mel_power_spectrum(mel: Tensor, filterbank: Tensor) -> Tensor:
    """Approximate power spectrum from linear mel magnitudes (normalised transpose).

    Each band's magnitude is spread back over its frequencies as the band's mean, and
    overlapping bands are averaged with the filter weights.

    Args:
        mel: ``(B, n_mels, M)`` linear mel magnitudes.
        filterbank: ``(F, n_mels)``.

    Returns:
        ``(B, M, F)`` power spectrum.
    """
    band_area = filterbank.sum(0).clamp_min(1e-12)  # (n_mels,)
    band_mean = mel.transpose(1, 2) / band_area  # (B, M, n_mels)
    weight = filterbank.sum(1).clamp_min(1e-12)  # (F,)
    magnitude = band_mean @ filterbank.T / weight  # (B, M, F)
    return magnitude.square()


def impulse_response(denominator: Tensor, taps: int) -> Tensor:
    """Taps ``h_1..h_taps`` of ``1 / D(z)`` with ``D(z) = 1 + sum_k d_k z^-k``.

    Args:
        denominator: ``(..., q)`` the coefficients ``d_1..d_q``.
        taps: how many taps after ``h_0 = 1`` to return.

    Returns:
        ``(..., taps)``.
    """
    q = denominator.shape[-1]
    history = [torch.ones_like(denominator[..., 0])]
    for n in range(1, taps + 1):
        terms = min(n, q)
        past = torch.stack(history[n - terms : n][::-1], dim=-1)  # h_{n-1} .. h_{n-terms}
        history.append(-(denominator[..., :terms] * past).sum(-1))
    return torch.stack(history[1:], dim=-1)


def linear_prediction(
    features: Tensor,
    mel_config: MelConfig,
    config: SourceFilterConfig,
    filterbank: Tensor,
    window: Tensor,
    with_impulse: bool = False,
) -> LinearPrediction:
    """Per-block linear prediction from normalised log-mel features.

    Args:
        features: ``(B, n_mels, M)`` normalised log-mel (``M >= 2``).
        mel_config: the front end that produced ``features``.
        config: order, pre-emphasis, lag window, noise floor, FIR length.
        filterbank: ``(F, n_mels)`` the front end's mel filterbank.
        window: ``(win_length,)`` the front end's analysis window.
        with_impulse: also compute the truncated synthesis impulse response.

    Returns:
        Filters for the ``M - 1`` blocks between consecutive frame centres.
    """
    mel = torch.exp(features * mel_config.norm_scale - mel_config.norm_offset)
    power = mel_power_spectrum(mel, filterbank.to(features.dtype))  # (B, M, F)
    n_freq = power.shape[-1]
    omega = torch.linspace(0.0, math.pi, n_freq, dtype=power.dtype, device=power.device)
    rho = config.preemphasis
    emphasis = 1.0 + rho * rho - 2.0 * rho * torch.cos(omega)  # |1 - rho e^{-jw}|^2
    power = power * emphasis
    block_power = 0.5 * (power[:, :-1] + power[:, 1:])  # (B, M-1, F): between frame centres
    autocorr = torch.fft.irfft(block_power, n=mel_config.n_fft, dim=-1)[..., : config.order + 1]
    lags = torch.arange(config.order + 1, dtype=power.dtype, device=power.device)
    lag_window = torch.exp(
        -0.5 * (2.0 * math.pi * config.lag_window_hz * lags / mel_config.sample_rate) ** 2
    )
    white_noise = torch.ones_like(lags)
    white_noise[0] = 1.0 + config.noise_floor  # a tiny white-noise floor keeps R well posed
    autocorr = autocorr * lag_window * white_noise
    autocorr[..., 0] = autocorr[..., 0].clamp_min(1e-20)
    a, error = levinson_durbin(autocorr)
    window_energy = window.to(features.dtype).square().sum()
    gain = torch.sqrt((error / window_energy).clamp_min(config.gain_floor**2))
    impulse = None
    if with_impulse:
        # D(z) = A(z) (1 - rho z^-1): synthesis and de-emphasis in one filter.
        ones = torch.ones_like(a[..., :1])
        full = torch.cat([ones, a], dim=-1)
        denom = torch.cat([full, torch.zeros_like(ones)], dim=-1) - rho * torch.cat(
            [torch.zeros_like(ones), full], dim=-1
        )
        impulse = impulse_response(denom[..., 1:], config.fir_taps)
    return LinearPrediction(coefficients=a, gain=gain, impulse=impulse)


def block_index(t0: int, t1: int, hop: int, blocks: int, device: torch.device) -> Tensor:
    """Block of each sample in ``[t0, t1)``, clamped to the last block."""
    return (torch.arange(t0, t1, device=device) // hop).clamp_max(blocks - 1)


def per_sample(values: Tensor, t0: int, t1: int, hop: int) -> Tensor:
    """Per-block ``(B, N, ...)`` values -> per-sample ``(B, t1 - t0, ...)``."""
    index = block_index(t0, t1, hop, values.shape[1], values.device)
    return values.index_select(1, index)


def time_varying_fir(delayed: Tensor, taps: Tensor, hop: int, t0: int, history: Tensor) -> Tensor:
    """``out_t = sum_{j=1..J} taps_j(block(t)) * s_{t-j}`` over a chunk, strictly causal in ``s``.

    The filter runs over ``history`` followed by the chunk: ``out_i = sum_j taps_j(block(t0 + i))
    * padded[i + H - j]`` with ``H`` the history length. With ``H = J`` and the chunk of ``s``
    itself that is the formula above. A flow's conditioner gets ``s`` delayed by one
    (``delayed_t = s_{t-1}``): with ``H = J - 1`` delayed values before the chunk, the same
    call gives the same ``out_t`` (causal in ``delayed``, including its current sample).

    Args:
        delayed: ``(B, T)`` the chunk (of ``s``, or of ``s`` delayed), starting at ``t0``.
        taps: ``(B, N, J)`` per-block taps (``taps[..., j-1]`` multiplies lag ``j`` of ``s``).
        hop: samples per block.
        t0: absolute index of ``delayed[:, 0]``.
        history: ``(B, J)`` values of ``s`` or ``(B, J - 1)`` delayed values before the chunk
            (zeros at the start).

    Returns:
        ``(B, T)``.
    """
    batch, steps = delayed.shape
    order = taps.shape[-1]
    padded = torch.cat([history, delayed], dim=1)  # (B, H + T)
    windows = padded.unfold(1, order, 1)[:, :steps]  # (B, T, J)
    windows = windows.flip(-1)  # lag 1 of s first
    if t0 % hop == 0 and steps % hop == 0 and t0 // hop + steps // hop <= taps.shape[1]:
        first = t0 // hop
        blocks = steps // hop
        block_taps = taps[:, first : first + blocks]  # (B, n, J)
        grouped = windows.reshape(batch, blocks, hop, order)  # (B, n, hop, J)
        # One (1, J) x (J, hop) product per block on a row-major copy: einsum (which contracts
        # a batch of one by another path) or the odd strides flip gives a short unfold would
        # make a sample's last bits depend on its batch and chunking.
        rows = block_taps.reshape(batch * blocks, 1, order)
        columns = grouped.contiguous().reshape(batch * blocks, hop, order).transpose(1, 2)
        return torch.bmm(rows, columns).reshape(batch, steps)
    sample_taps = per_sample(taps, t0, t0 + steps, hop)  # (B, T, J)
    return (windows * sample_taps).sum(-1)


def all_pole_reference(excitation: Tensor, denominator: Tensor) -> Tensor:
    """Run ``1 / D(z)`` sample by sample (a slow reference for tests).

    Args:
        excitation: ``(B, T)``.
        denominator: ``(B, q)`` constant coefficients ``d_1..d_q``.
    """
    batch, steps = excitation.shape
    q = denominator.shape[-1]
    out = excitation.new_zeros(batch, steps + q)
    for t in range(steps):
        past = out[:, t : t + q].flip(-1)  # y_{t-1} .. y_{t-q}
        out[:, t + q] = excitation[:, t] - (denominator * past).sum(-1)
    return out[:, q:]


def pad_frames(features: Tensor, frames: int) -> Tensor:
    """Extend ``(B, C, M)`` to ``frames`` frames by repeating the last one."""
    extra = frames - features.shape[-1]
    if extra <= 0:
        return features
    return F.pad(features, (0, extra), mode="replicate")

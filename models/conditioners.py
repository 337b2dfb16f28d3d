"""The student's conditioners: what each IAF step computes its mean and log-scale from.

Each is a ``models.flows.Conditioner``: a function of the variable delayed by one, the context,
the chunk's position and what the previous chunk left (``past``), so the same code runs a
whole clip, a stream's chunk, or one sample of the sequential inversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from models.conditioning import Context, interpolate_frames
from models.config import WaveNetConfig
from models.flows import Conditioner
from models.folding import fold
from models.lpc import per_sample, time_varying_fir
from models.pitch import delayed_lag_taps
from models.transforms import soft_bound
from models.wavenet import StackMatrices, StackState, WaveNet, rows_of, run_stack


@dataclass
class WaveNetPast:
    """A WaveNet conditioner's carried state: the stack's left context and the lag history."""

    stack: StackState = field(default_factory=StackState)
    lag_history: Tensor | None = None


def split_head(out: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """A stack's ``(n B, 2)`` output -> two ``(B, n)`` sequences."""
    first, second = out.reshape(-1, batch, 2).permute(2, 1, 0)  # (2, B, n)
    return first, second


class WaveNetConditioner(Conditioner):
    """A student flow's conditioner: WaveNet over ``v_<t`` -> mean, soft-bounded log-scale.

    Inputs are ``v_{t-1}`` and, with ``lag_input``, ``v_{t-P_t+k}`` around one pitch period
    back (``P_t - k >= 2``, still strictly the past). The head starts at zero, so the flow starts
    as the identity.
    """

    def __init__(
        self,
        net: WaveNet,
        log_scale_bound: float,
        lag_offsets: list[int] | None = None,
        folded: StackMatrices | None = None,
    ) -> None:
        super().__init__()
        self.lag_offsets = list(lag_offsets or [])
        if net.in_channels != 1 + len(self.lag_offsets):
            raise ValueError(f"the stack reads {net.in_channels} inputs, not 1 + lag taps")
        self.net = net
        self.log_scale_bound = log_scale_bound
        self.folded_matrices = folded

    @classmethod
    def build(
        cls,
        config: WaveNetConfig,
        frame_channels: int,
        source_channels: int,
        log_scale_bound: float,
        lag_offsets: list[int] | None = None,
    ) -> WaveNetConditioner:
        """A fresh conditioner (its head at zero: the flow starts as the identity)."""
        inputs = 1 + len(lag_offsets or [])
        net = WaveNet(config, inputs, 2, frame_channels, source_channels)
        return cls(net, log_scale_bound, lag_offsets)

    def folded(self) -> WaveNetConditioner:
        """The same conditioner running its weights folded (``models.folding``), for inference."""
        return WaveNetConditioner(self.net, self.log_scale_bound, self.lag_offsets, fold(self.net))

    def forward(
        self, delayed: Tensor, context: Context, position: int = 0, past: Any = None
    ) -> tuple[Tensor, Tensor, WaveNetPast]:
        past = past if past is not None else WaveNetPast()
        inputs = delayed[:, None]  # (B, 1, n): v_{t-1}
        if self.lag_offsets:
            if context.lag is None:
                raise ValueError("this flow reads pitch-lagged inputs: the context has no pitch")
            taps, past.lag_history = delayed_lag_taps(
                delayed, context.lag, self.lag_offsets, position, past.lag_history
            )
            inputs = torch.cat([inputs, taps.to(delayed.dtype)], dim=1)  # (B, 1 + taps, n)
        batch = delayed.shape[0]
        matrices = self.folded_matrices or self.net.matrices()
        out = run_stack(
            matrices, rows_of(inputs), context.conditioning, position, batch, past.stack
        )
        mean, raw = split_head(out, batch)
        return mean, soft_bound(raw, self.log_scale_bound), past

    def flops_per_sample(self, hop: int) -> float:
        return self.net.flops_per_sample(hop)


class ExcitationConditioner(Conditioner):
    """Mixed excitation from the mel's pitch: ``mean = sqrt(v_t) p_t``, ``scale = sqrt(1 - v_t)``.

    ``p`` is the unit-power band-limited pulse train and ``v`` the voicing (the pitch
    tracker's, corrected by a learned per-frame logit that starts at zero), so the step keeps
    the excitation's power at 1 and, on ``z^0``, makes a harmonic-plus-noise source. Mean and
    scale depend on the conditioning only: an exact IAF step with log-det ``sum log scale``.
    The scale never drops below ``sqrt(noise_floor)``.
    """

    def __init__(self, frame_channels: int, noise_floor: float) -> None:
        super().__init__()
        self.noise_floor = noise_floor
        self.correction = nn.Conv1d(frame_channels, 1, 1) if frame_channels > 0 else None
        if self.correction is not None:
            nn.init.zeros_(self.correction.weight)
            nn.init.zeros_(self.correction.bias)  # type: ignore[arg-type]

    def frame_voicing(self, context: Context) -> Tensor:
        """The corrected voicing per frame ``(B, M)``."""
        if context.voicing is None or context.pulses is None:
            raise ValueError("the mixed-excitation flow needs the pitch source in the context")
        logit = torch.logit(context.voicing.clamp(1e-4, 1 - 1e-4))
        if self.correction is not None and context.frames is not None:
            logit = logit + self.correction(context.frames)[:, 0]
        return torch.sigmoid(logit)

    def forward(
        self, delayed: Tensor, context: Context, position: int = 0, past: Any = None
    ) -> tuple[Tensor, Tensor, None]:
        end = position + delayed.shape[1]
        voicing = self.frame_voicing(context)[:, None]  # (B, 1, M)
        voiced = interpolate_frames(voicing, position, end, context.hop)[:, 0].to(delayed.dtype)
        assert context.pulses is not None
        mean = torch.sqrt(voiced) * context.pulses[:, position:end].to(delayed.dtype)
        log_scale = 0.5 * torch.log1p(-voiced * (1.0 - self.noise_floor))
        return mean, log_scale, None

    def flops_per_sample(self, hop: int) -> float:
        frames = 0 if self.correction is None else self.correction.in_channels
        return 2.0 * frames / hop + 6.0  # the frame-rate logit; interpolation, sqrt(v) p, scale


class GainConditioner(Conditioner):
    """``mean = 0``, ``log_scale = log g_t``: the gain from linear prediction, or one learned
    log-scale (initialised near the data's standard deviation) when there is no filter."""

    def __init__(self, source_filter: bool, init_log_scale: float) -> None:
        super().__init__()
        self.source_filter = source_filter
        self.log_scale = None if source_filter else nn.Parameter(torch.tensor(init_log_scale))

    def forward(
        self, delayed: Tensor, context: Context, position: int = 0, past: Any = None
    ) -> tuple[Tensor, Tensor, None]:
        zeros = torch.zeros_like(delayed)
        if self.log_scale is None:
            if context.lpc is None:
                raise ValueError("the source-filter gain needs linear prediction in the context")
            end = position + delayed.shape[1]
            log_gain = torch.log(per_sample(context.lpc.gain, position, end, context.hop))
            return zeros, log_gain.to(delayed.dtype), None
        return zeros, self.log_scale.to(delayed.dtype).expand_as(delayed), None


class SynthesisConditioner(Conditioner):
    """The parallel FIR synthesis flow: ``x_t = e_t + sum_j h_j(block(t)) e_{t-j}``.

    ``h`` is the truncated impulse response of ``1 / (A(z)(1 - rho z^-1))``: linear
    prediction synthesis and de-emphasis in one step with unit Jacobian.
    """

    def __init__(self, taps: int) -> None:
        super().__init__()
        self.taps = taps

    def forward(
        self, delayed: Tensor, context: Context, position: int = 0, past: Any = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if context.lpc is None or context.lpc.impulse is None:
            raise ValueError("the synthesis flow needs the impulse response in the context")
        taps = context.lpc.impulse.to(delayed.dtype)
        history = (
            past if past is not None else delayed.new_zeros(delayed.shape[0], taps.shape[-1] - 1)
        )
        mean = time_varying_fir(delayed, taps, context.hop, position, history)
        carried = torch.cat([history, delayed], dim=1)[:, delayed.shape[1] :]
        return mean, torch.zeros_like(delayed), carried

    def flops_per_sample(self, hop: int) -> float:
        return 2.0 * self.taps


class PriorConditioner(Conditioner):
    """The mel-inversion prior as a flow step: ``x_t = h_t + u_t``.

    ``h`` is the prior's waveform from the whole mel (in the context): a mean that depends on
    the conditioning only and a scale of 1, so an exact IAF step with log-determinant 0; the
    steps before it model ``x - h``.
    """

    def forward(
        self, delayed: Tensor, context: Context, position: int = 0, past: Any = None
    ) -> tuple[Tensor, Tensor, None]:
        if context.prior is None:
            raise ValueError("the prior step needs the prior's waveform in the context")
        mean = context.prior[:, position : position + delayed.shape[1]].to(delayed.dtype)
        return mean, torch.zeros_like(delayed), None

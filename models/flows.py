"""One affine autoregressive step, run as MAF or IAF, and the conditioners that drive it.

A step maps ``u -> x = mean_t + exp(log_scale_t) * u_t``. What the conditioner reads
is the direction (Papamakarios et al., 2017; Kingma et al., 2016):

* ``"maf"`` reads the *output* ``x_<t``: density (x -> u) is one parallel pass, sampling
  (u -> x) is sequential. The teacher.
* ``"iaf"`` reads the *input* ``u_<t``: sampling is one parallel pass, density of an
  external x is sequential. Every student flow.

The sequential direction runs a conditioner's incremental interface: ``next()`` gives
``(mean_t, log_scale_t)`` from what was pushed so far, ``push(v_t)`` records the next
value. ``cached=False`` uses a naive incremental that recomputes the whole prefix per
sample (the slow reference the cached queues are tested against).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from models.conditioning import Context, interpolate_frames, sample_conditioning
from models.config import WaveNetConfig
from models.lpc import per_sample, time_varying_fir
from models.pitch import history_length, lagged_taps, lagged_value_taps
from models.transforms import delay, soft_bound
from models.wavenet import WaveNet, WaveNetQueues, WaveNetStream

Direction = Literal["maf", "iaf"]


@dataclass
class Stream:
    """State carried between chunks of a parallel (IAF) pass: absolute position and history."""

    t: int = 0
    last: Tensor | None = None  # (B,) previous sample of the variable
    history: Tensor | None = None  # (B, J) last J samples, for FIR conditioners
    lag_history: Tensor | None = None  # (B, H) last H samples, for pitch-lagged inputs
    net: WaveNetStream = field(default_factory=WaveNetStream)


class Incremental(Protocol):
    def next(self) -> tuple[Tensor, Tensor]: ...

    def push(self, value: Tensor) -> None: ...


class ARConditioner(nn.Module):
    """Maps the strict past of a sequence ``v`` to ``(mean, log_scale)`` at every step."""

    def forward(
        self, v: Tensor, context: Context, stream: Stream | None = None
    ) -> tuple[Tensor, Tensor]:
        """``v`` ``(B, T)`` -> mean, log_scale ``(B, T)``; step t reads ``v_<t`` only."""
        raise NotImplementedError

    def incremental(self, context: Context, like: Tensor, cached: bool = True) -> Incremental:
        """An incremental view of this conditioner (naive by default)."""
        return NaiveIncremental(self, context, like)


class NaiveIncremental:
    """Recomputes the conditioner over the whole prefix for every new sample: O(T^2)."""

    def __init__(self, conditioner: ARConditioner, context: Context, like: Tensor) -> None:
        self.conditioner = conditioner
        self.context = context
        self.values: list[Tensor] = []
        self.like = like

    def next(self) -> tuple[Tensor, Tensor]:
        batch = self.context.batch
        prefix = torch.stack([*self.values, self.like.new_zeros(batch)], dim=1)  # (B, t+1)
        mean, log_scale = self.conditioner(prefix, self.context)
        return mean[:, -1], log_scale[:, -1]

    def push(self, value: Tensor) -> None:
        self.values.append(value)


@dataclass
class FlowStep:
    """Result of one step: the output, ``log|det J|`` per sequence ``(B,)``, and the
    per-step ``mean`` and ``log_scale`` ``(B, T)`` it used."""

    output: Tensor
    logabsdet: Tensor
    mean: Tensor
    log_scale: Tensor


class AffineAutoregressive(nn.Module):
    """``x_t = mean_t + exp(log_scale_t) u_t`` with the conditioner reading ``u`` (IAF) or
    ``x`` (MAF). ``forward`` is u -> x, ``inverse`` is x -> u; each is parallel in one
    direction and sequential in the other."""

    def __init__(self, conditioner: ARConditioner, direction: Direction) -> None:
        super().__init__()
        if direction not in ("maf", "iaf"):
            raise ValueError(f"direction must be 'maf' or 'iaf', got {direction!r}")
        self.conditioner = conditioner
        self.direction = direction

    def forward(
        self, u: Tensor, context: Context, stream: Stream | None = None, cached: bool = True
    ) -> FlowStep:
        """u -> x. Parallel for IAF (optionally one chunk of a stream), sequential for MAF."""
        if self.direction == "iaf":
            mean, log_scale = self.conditioner(u, context, stream)
            x = mean + torch.exp(log_scale) * u
            return FlowStep(x, log_scale.sum(1), mean, log_scale)
        if stream is not None:
            raise ValueError("a MAF step samples sequentially; it takes no stream")
        return self._sequential(u, context, cached, sampling=True)

    def inverse(self, x: Tensor, context: Context, cached: bool = True) -> FlowStep:
        """x -> u. Parallel for MAF, sequential for IAF. ``logabsdet`` is of x -> u."""
        if self.direction == "maf":
            mean, log_scale = self.conditioner(x, context)
            u = (x - mean) * torch.exp(-log_scale)
            return FlowStep(u, -log_scale.sum(1), mean, log_scale)
        return self._sequential(x, context, cached, sampling=False)

    def _sequential(
        self, given: Tensor, context: Context, cached: bool, sampling: bool
    ) -> FlowStep:
        inc = self.conditioner.incremental(context, given, cached)
        outs, means, log_scales = [], [], []
        for t in range(given.shape[1]):
            mean, log_scale = inc.next()
            if sampling:  # MAF forward: the conditioner reads the output
                out = mean + torch.exp(log_scale) * given[:, t]
                inc.push(out)
            else:  # IAF inverse: the conditioner reads the recovered input
                out = (given[:, t] - mean) * torch.exp(-log_scale)
                inc.push(out)
            outs.append(out)
            means.append(mean)
            log_scales.append(log_scale)
        log_scale_all = torch.stack(log_scales, dim=1)
        sign = 1.0 if sampling else -1.0
        return FlowStep(
            torch.stack(outs, dim=1),
            sign * log_scale_all.sum(1),
            torch.stack(means, dim=1),
            log_scale_all,
        )


class WaveNetConditioner(ARConditioner):
    """A student flow's conditioner: WaveNet over ``v_<t`` -> mean, soft-bounded log-scale.

    Inputs are ``v_{t-1}`` and, with ``lag_input``, ``v_{t-P_t+k}`` around one pitch period
    back (``P_t - k >= 2`` from the context, so still strictly the past). The head starts at zero,
    so the flow starts as the identity.
    """

    def __init__(
        self,
        config: WaveNetConfig,
        cond_channels: int,
        log_scale_bound: float,
        lag_input: bool = False,
        lag_offsets: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.lag_offsets = (lag_offsets or [0]) if lag_input else []
        in_channels = 1 + len(self.lag_offsets)
        self.net = WaveNet(config, in_channels, out_channels=2, cond_channels=cond_channels)
        self.log_scale_bound = log_scale_bound
        self.lag_input = lag_input

    def _inputs(self, v: Tensor, context: Context, stream: Stream | None, t0: int) -> Tensor:
        previous = None if stream is None or stream.last is None else stream.last[:, None]
        inputs = delay(v[:, None], previous)  # (B, 1, T): v_{t-1}
        if not self.lag_input:
            return inputs
        if context.lag is None:
            raise ValueError("this flow reads pitch-lagged inputs: the context has no pitch")
        lag = context.lag[:, t0 : t0 + v.shape[1]]
        history = None
        if stream is not None:
            if stream.lag_history is None:
                stream.lag_history = v.new_zeros(v.shape[0], history_length(context.lag))
            history = stream.lag_history
            stream.lag_history = torch.cat([history, v], dim=1)[:, -history.shape[1] :]
        taps = lagged_taps(v, lag, self.lag_offsets, t0, history)  # (B, taps, T)
        return torch.cat([inputs, taps], dim=1)  # (B, 1 + taps, T)

    def forward(
        self, v: Tensor, context: Context, stream: Stream | None = None
    ) -> tuple[Tensor, Tensor]:
        t0 = 0 if stream is None else stream.t
        steps = v.shape[1]
        inputs = self._inputs(v, context, stream, t0)
        cond = sample_conditioning(context, t0, t0 + steps)
        out = self.net(inputs, cond, None if stream is None else stream.net)
        if stream is not None:
            stream.t = t0 + steps
            stream.last = v[:, -1]
        mean, raw = out.unbind(1)  # (B, 2, T) -> 2 x (B, T)
        return mean, soft_bound(raw, self.log_scale_bound)

    def incremental(self, context: Context, like: Tensor, cached: bool = True) -> Incremental:
        if not cached:
            return super().incremental(context, like, cached)
        return _QueuedFlow(self, context, like)


class _QueuedFlow:
    """A student flow's conditioner one sample at a time, through the WaveNet queues."""

    def __init__(self, conditioner: WaveNetConditioner, context: Context, like: Tensor) -> None:
        self.conditioner = conditioner
        self.context = context
        self.runner = QueuedWaveNet(conditioner.net, context, like)
        self.values = like.new_zeros(context.batch, context.num_samples)
        self.t = 0

    def next(self) -> tuple[Tensor, Tensor]:
        t = self.t
        previous = self.values[:, t - 1] if t > 0 else self.values.new_zeros(self.context.batch)
        inputs = previous[:, None]
        if self.conditioner.lag_input:
            assert self.context.lag is not None
            lag = self.context.lag[:, t]
            taps = lagged_value_taps(self.values, t, lag, self.conditioner.lag_offsets)
            inputs = torch.cat([inputs, taps], dim=-1)
        mean, raw = self.runner(inputs).unbind(-1)  # (B, 2) -> 2 x (B,)
        return mean, soft_bound(raw, self.conditioner.log_scale_bound)

    def push(self, value: Tensor) -> None:
        self.values[:, self.t] = value
        self.t += 1


class ExcitationConditioner(ARConditioner):
    """Mixed excitation from the mel's pitch: ``mean = sqrt(v_t) p_t``, ``scale = sqrt(1 - v_t)``.

    ``p`` is the unit-power band-limited pulse train and ``v`` the voicing (the pitch
    tracker's, corrected by a learned per-frame logit that starts at zero), so the step keeps
    the excitation's power at 1 and, on ``z^0``, makes a harmonic-plus-noise source. Mean and
    scale depend on the conditioning only: an exact IAF step with log-det ``sum log scale``.
    The scale never drops below ``sqrt(noise_floor)``.
    """

    def __init__(self, cond_channels: int, noise_floor: float) -> None:
        super().__init__()
        self.noise_floor = noise_floor
        self.correction = nn.Conv1d(cond_channels, 1, 1) if cond_channels > 0 else None
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
        self, v: Tensor, context: Context, stream: Stream | None = None
    ) -> tuple[Tensor, Tensor]:
        t0 = 0 if stream is None else stream.t
        steps = v.shape[1]
        if stream is not None:
            stream.t = t0 + steps
        voiced = interpolate_frames(
            self.frame_voicing(context)[:, None], t0, t0 + steps, context.hop
        )
        voiced = voiced[:, 0].to(v.dtype)  # (B, T)
        assert context.pulses is not None
        mean = torch.sqrt(voiced) * context.pulses[:, t0 : t0 + steps].to(v.dtype)
        log_scale = 0.5 * torch.log1p(-voiced * (1.0 - self.noise_floor))
        return mean, log_scale


class GainConditioner(ARConditioner):
    """``mean = 0``, ``log_scale = log g_t``: the gain from linear prediction, or one learned
    log-scale (initialised near the data's standard deviation) when there is no filter."""

    def __init__(self, source_filter: bool, init_log_scale: float) -> None:
        super().__init__()
        self.source_filter = source_filter
        self.log_scale = None if source_filter else nn.Parameter(torch.tensor(init_log_scale))

    def forward(
        self, v: Tensor, context: Context, stream: Stream | None = None
    ) -> tuple[Tensor, Tensor]:
        t0 = 0 if stream is None else stream.t
        steps = v.shape[1]
        if stream is not None:
            stream.t = t0 + steps
        if self.log_scale is None:
            if context.lpc is None:
                raise ValueError("the source-filter gain needs linear prediction in the context")
            log_gain = torch.log(per_sample(context.lpc.gain, t0, t0 + steps, context.hop))
            return torch.zeros_like(v), log_gain.to(v.dtype)
        return torch.zeros_like(v), self.log_scale.to(v.dtype).expand_as(v)


class SynthesisConditioner(ARConditioner):
    """The parallel FIR synthesis flow: ``x_t = e_t + sum_j h_j(block(t)) e_{t-j}``.

    ``h`` is the truncated impulse response of ``1 / (A(z)(1 - rho z^-1))``: linear
    prediction synthesis and de-emphasis in one step with unit Jacobian.
    """

    def forward(
        self, v: Tensor, context: Context, stream: Stream | None = None
    ) -> tuple[Tensor, Tensor]:
        if context.lpc is None or context.lpc.impulse is None:
            raise ValueError("the synthesis flow needs the impulse response in the context")
        taps = context.lpc.impulse.to(v.dtype)
        order = taps.shape[-1]
        t0 = 0 if stream is None else stream.t
        if stream is None or stream.history is None:
            history = v.new_zeros(v.shape[0], order)
        else:
            history = stream.history
        mean = time_varying_fir(v, taps, context.hop, t0, history)
        if stream is not None:
            stream.t = t0 + v.shape[1]
            stream.history = torch.cat([history, v], dim=1)[:, -order:]
        return mean, torch.zeros_like(v)


class QueuedWaveNet:
    """Incremental WaveNet evaluation with per-layer queues and chunked conditioning."""

    chunk = 512

    def __init__(self, net: WaveNet, context: Context, like: Tensor) -> None:
        self.net = net
        self.context = context
        self.queues: WaveNetQueues = net.start_queues(context.batch, like)
        self.cond: Tensor | None = None
        self.cond_start = 0

    def __call__(self, inputs: Tensor) -> Tensor:
        """``(B, in_channels)`` for the current sample -> ``(B, out_channels)``."""
        t = self.queues.t
        cond_t = None
        if self.net.cond_projection is not None:
            if self.cond is None or t >= self.cond_start + self.cond.shape[-1]:
                end = max(min(t + self.chunk, self.context.num_samples), t + 1)
                features = sample_conditioning(self.context, t, end)
                assert features is not None
                self.cond = self.net.project_cond(features).detach()  # (B, G L, chunk)
                self.cond_start = t
            cond_t = self.cond[..., t - self.cond_start]
        return self.net.step(inputs, cond_t, self.queues)

"""The teacher: a Gaussian WaveNet, i.e. a masked autoregressive flow over samples.

    x_t = mean_t(x_<t, c) + exp(log_scale_t(x_<t, c)) z_t,   z_t ~ N(0, 1)

Source-filter form (docs/architecture.md): with ``y`` the pre-emphasised signal
``y_t = x_t - rho x_{t-1}``, per-block prediction coefficients ``a`` and gain ``g`` from
the mel, and the excitation ``eps_t = (y_t + sum_k a_k y_{t-k}) / g_t``:

    mean_t = rho x_{t-1} - sum_k a_k y_{t-k} + g_t mean_net,t
    log_scale_t = softfloor(log g_t + log_scale_net,t)

The network reads ``(x, eps)`` of the past. With ``rho = 0``, ``a = 0`` and ``g = 1`` this
is exactly the plain teacher (``eps = x``), which is how the plain model is built.
References: van den Oord et al. (2016); Ping et al., "ClariNet" (2018).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from models.conditioning import ConditionedModel, Context
from models.config import MelConfig, TeacherConfig
from models.flows import AffineAutoregressive, Conditioner
from models.lpc import per_sample, time_varying_fir
from models.mel import check_finite
from models.pitch import delayed_lag_taps
from models.transforms import gaussian_log_prob, soft_floor
from models.wavenet import StackState, WaveNet, rows_of


@dataclass
class TeacherPast:
    """What the teacher's conditioner carries between chunks (one sample, when sampling)."""

    stack: StackState = field(default_factory=StackState)
    delayed: Tensor | None = None  # (B,) the last x_{t-1}
    emphasised: Tensor | None = None  # (B, p - 1) the last y_{t-1}
    prediction: Tensor | None = None  # (B,) the last prediction
    gain: Tensor | None = None  # (B,) the last gain
    lag_history: Tensor | None = None


class TeacherConditioner(Conditioner):
    """Reads ``x_<t`` (and the excitation it implies) -> mean, log-scale of ``x_t``.

    With the mel-inversion prior it models the residual ``r = x - h`` (``h`` the prior's
    waveform, conditioning): everything below runs on ``r`` and the mean gets ``h_t`` back, an
    exact shift, so the step is still one MAF over ``x``; ``h`` is also a source channel.
    With ``prior_shift`` off it models ``x`` itself and reads ``h`` only as that channel.

    On the delayed input ``d_t = x_{t-1}``: ``y'_t = d_t - rho d_{t-1}`` (= ``y_{t-1}``),
    the prediction ``p_t = -sum_k a_k y_{t-k}``, the excitation
    ``eps_{t-1} = (y'_t - p_{t-1}) / g_{t-1}``; the network reads ``(x_{t-1}, eps_{t-1})`` and,
    with pitch, ``eps_{t-P_t+k}``.
    """

    def __init__(self, config: TeacherConfig, frame_channels: int, source_channels: int) -> None:
        super().__init__()
        lag_input = config.pitch.enabled and config.pitch.lag_input
        self.lag_offsets = config.pitch.lag_offsets if lag_input else []
        self.net = WaveNet(
            config.wavenet, 2 + len(self.lag_offsets), 2, frame_channels, source_channels
        )
        self.source_filter = config.source_filter if config.source_filter.enabled else None
        self.log_scale_floor = config.log_scale_floor
        self.models_residual = config.prior.enabled and config.prior_shift

    def forward(
        self, delayed: Tensor, context: Context, position: int = 0, past: Any = None
    ) -> tuple[Tensor, Tensor, TeacherPast]:
        past = past if past is not None else TeacherPast()
        batch, steps = delayed.shape
        zero = delayed.new_zeros(batch)
        shift = None
        if self.models_residual:  # the MAF over x is a MAF over r = x - h, shifted by h
            if context.prior is None:
                raise ValueError("this teacher models x - h: the context needs the prior")
            prior = context.prior.to(delayed.dtype)
            shift = prior[:, position : position + steps]
            before = prior[:, position - 1] if position > 0 else zero
            delayed = delayed - torch.cat([before[:, None], shift[:, :-1]], dim=1)  # r_{t-1}
        log_gain = None
        if self.source_filter is not None:
            if context.lpc is None:
                raise ValueError("the source-filter teacher needs linear prediction")
            rho = self.source_filter.preemphasis
            before = past.delayed if past.delayed is not None else zero
            emphasised = delayed - rho * torch.cat([before[:, None], delayed[:, :-1]], dim=1)
            coefficients = context.lpc.coefficients.to(delayed.dtype)
            history = past.emphasised
            if history is None:
                history = delayed.new_zeros(batch, coefficients.shape[-1] - 1)
            prediction = time_varying_fir(emphasised, -coefficients, context.hop, position, history)
            end = position + steps
            gain = per_sample(context.lpc.gain, position, end, context.hop).to(delayed.dtype)
            last_prediction = past.prediction if past.prediction is not None else zero
            last_gain = past.gain if past.gain is not None else gain[:, 0]
            # eps_{t-1} = (y_{t-1} - p_{t-1}) / g_{t-1}: zero at t = 0 (y_{-1} = p_{-1} = 0)
            excitation = (
                emphasised - torch.cat([last_prediction[:, None], prediction[:, :-1]], 1)
            ) / (torch.cat([last_gain[:, None], gain[:, :-1]], dim=1))
            base = rho * delayed + prediction
            log_gain = torch.log(gain)
            past.emphasised = torch.cat([history, emphasised], dim=1)[:, steps:]
            past.prediction, past.gain = prediction[:, -1], gain[:, -1]
        else:
            excitation, base, gain = delayed, torch.zeros_like(delayed), torch.ones_like(delayed)
        past.delayed = delayed[:, -1]
        features = torch.stack([delayed, excitation], dim=1)  # (B, 2, n): x_{t-1}, eps_{t-1}
        if self.lag_offsets:
            if context.lag is None:
                raise ValueError("this teacher reads pitch-lagged inputs: the context has no pitch")
            taps, past.lag_history = delayed_lag_taps(
                excitation, context.lag, self.lag_offsets, position, past.lag_history
            )  # eps_{t-P_t+k}
            features = torch.cat([features, taps], dim=1)  # (B, 2 + taps, n)
        out = self.net(rows_of(features), context.conditioning, position, batch, past.stack)
        mean_net, log_scale_net = out.reshape(steps, batch, 2).permute(2, 1, 0)  # 2 x (B, n)
        raw = log_scale_net if log_gain is None else log_gain + log_scale_net
        mean = base + gain * mean_net
        if shift is not None:
            mean = mean + shift
        return mean, soft_floor(raw, self.log_scale_floor), past


class GaussianWaveNet(ConditionedModel):
    """The teacher (MAF). Density is one parallel pass; sampling is autoregressive.

    Args:
        config: network, conditioning and source-filter settings.
        mel: the front end whose features condition the model.
    """

    config: TeacherConfig

    def __init__(self, config: TeacherConfig, mel: MelConfig) -> None:
        super().__init__(config, mel)
        conditioner = TeacherConditioner(config, *self.conditioning_channels())
        self.flow = AffineAutoregressive(conditioner, "maf")

    def _check_waveform(self, x: Tensor, context: Context) -> None:
        if x.dim() != 2:
            raise ValueError(f"x must be (B, T), got shape {tuple(x.shape)}")
        if x.shape != (context.batch, context.num_samples):
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the conditioning describes "
                f"({context.batch}, {context.num_samples})"
            )
        check_finite("x", x)

    def conditionals(self, x: Tensor, context: Context) -> tuple[Tensor, Tensor]:
        """Per-step Gaussian ``(mean, log_scale)`` ``(B, T)`` of ``x_t`` given ``x_<t``."""
        self._check_waveform(x, context)
        return self.flow.conditionals(x, context)

    def log_prob(self, x: Tensor, context: Context) -> Tensor:
        """``log t(x)`` in nats per sequence ``(B,)``, one parallel pass."""
        mean, log_scale = self.conditionals(x, context)
        return gaussian_log_prob(x, mean, log_scale).sum(1)

    @torch.no_grad()
    def sample(
        self,
        context: Context,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        cached: bool = True,
    ) -> Tensor:
        """Autoregressive sampling ``(B, T)``; ``cached=False`` is the naive O(T^2) reference."""
        noise = self.noise_for(context, temperature, generator, noise)
        return self.flow(noise, context, cached=cached).output

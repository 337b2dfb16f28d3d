"""The teacher: a Gaussian WaveNet, i.e. a masked autoregressive flow over samples.

    x_t = mean_t(x_<t, c) + exp(log_scale_t(x_<t, c)) z_t,   z_t ~ N(0, 1)

Source-filter form (ARCHITECTURE.md): with ``y`` the pre-emphasised signal
``y_t = x_t - rho x_{t-1}``, per-block prediction coefficients ``a`` and gain ``g`` from
the mel, and the excitation ``eps_t = (y_t + sum_k a_k y_{t-k}) / g_t``:

    mean_t = rho x_{t-1} - sum_k a_k y_{t-k} + g_t mean_net,t
    log_scale_t = softfloor(log g_t + log_scale_net,t)

The network reads ``(x, eps)`` of the past. With ``rho = 0``, ``a = 0`` and ``g = 1`` this
is exactly the plain teacher (``eps = x``), which is how the plain model is built.
References: van den Oord et al. (2016); Ping et al., "ClariNet" (2018).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.conditioning import Context, Upsampler, conditioning_channels, make_context
from models.config import MelConfig, TeacherConfig
from models.flows import (
    AffineAutoregressive,
    ARConditioner,
    Incremental,
    QueuedWaveNet,
    Stream,
    sample_conditioning,
)
from models.lpc import per_sample, time_varying_fir
from models.mel import MelFrontEnd, check_finite
from models.pitch import lagged_taps, lagged_value_taps
from models.transforms import delay, gaussian_log_prob, soft_floor
from models.wavenet import WaveNet


class TeacherConditioner(ARConditioner):
    """Reads ``x_<t`` (and the excitation it implies) -> mean, log-scale of ``x_t``."""

    def __init__(self, config: TeacherConfig, cond_channels: int) -> None:
        super().__init__()
        self.lag_input = config.pitch.enabled and config.pitch.lag_input
        self.lag_offsets = config.pitch.lag_offsets if self.lag_input else []
        in_channels = 2 + len(self.lag_offsets)
        self.net = WaveNet(
            config.wavenet, in_channels=in_channels, out_channels=2, cond_channels=cond_channels
        )
        self.source_filter = config.source_filter if config.source_filter.enabled else None
        self.log_scale_floor = config.log_scale_floor

    def forward(
        self, v: Tensor, context: Context, stream: Stream | None = None
    ) -> tuple[Tensor, Tensor]:
        if stream is not None:
            raise ValueError("the teacher's density pass is never streamed")
        x = v
        steps = x.shape[1]
        previous = delay(x[:, None])[:, 0]  # x_{t-1}
        if self.source_filter is not None:
            if context.lpc is None:
                raise ValueError("the source-filter teacher needs linear prediction")
            rho = self.source_filter.preemphasis
            y = x - rho * previous
            coefficients = context.lpc.coefficients.to(x.dtype)
            history = x.new_zeros(x.shape[0], coefficients.shape[-1])
            prediction = time_varying_fir(y, -coefficients, context.hop, 0, history)
            gain = per_sample(context.lpc.gain, 0, steps, context.hop).to(x.dtype)
            excitation = (y - prediction) / gain
            base = rho * previous + prediction
            log_gain = torch.log(gain)
        else:
            excitation, base, gain, log_gain = x, torch.zeros_like(x), torch.ones_like(x), None
        features = delay(torch.stack([x, excitation], dim=1))  # (B, 2, T) of the past
        if self.lag_input:
            if context.lag is None:
                raise ValueError("this teacher reads pitch-lagged inputs: the context has no pitch")
            lag = context.lag[:, :steps]
            past_period = lagged_taps(excitation, lag, self.lag_offsets)  # eps_{t-P_t+k}
            features = torch.cat([features, past_period], dim=1)  # (B, 2 + taps, T)
        cond = sample_conditioning(context, 0, steps)
        mean_net, log_scale_net = self.net(features, cond).unbind(1)  # (B, 2, T) -> 2 x (B, T)
        raw = log_scale_net if log_gain is None else log_gain + log_scale_net
        return base + gain * mean_net, soft_floor(raw, self.log_scale_floor)

    def incremental(self, context: Context, like: Tensor, cached: bool = True) -> Incremental:
        if not cached:
            return super().incremental(context, like, cached)
        return _QueuedTeacher(self, context, like)


class _QueuedTeacher:
    """The teacher one sample at a time: WaveNet queues plus the filter's short history."""

    def __init__(self, conditioner: TeacherConditioner, context: Context, like: Tensor) -> None:
        self.conditioner = conditioner
        self.context = context
        self.runner = QueuedWaveNet(conditioner.net, context, like)
        batch = context.batch
        self.features = like.new_zeros(batch, 2)
        self.previous = like.new_zeros(batch)
        self.t = 0
        sf = conditioner.source_filter
        self.order = 0 if sf is None else sf.order
        self.y_history = like.new_zeros(batch, max(self.order, 1))  # y_{t-1} .. y_{t-p}
        self.prediction = like.new_zeros(batch)
        self.gain = like.new_ones(batch)
        self.excitations = like.new_zeros(batch, context.num_samples)

    def next(self) -> tuple[Tensor, Tensor]:
        inputs = self.features
        if self.conditioner.lag_input:
            assert self.context.lag is not None
            lag = self.context.lag[:, self.t]
            offsets = self.conditioner.lag_offsets
            inputs = torch.cat(
                [inputs, lagged_value_taps(self.excitations, self.t, lag, offsets)], -1
            )
        mean_net, log_scale_net = self.runner(inputs).unbind(-1)
        sf = self.conditioner.source_filter
        floor = self.conditioner.log_scale_floor
        if sf is None:
            return mean_net, soft_floor(log_scale_net, floor)
        assert self.context.lpc is not None
        lpc = self.context.lpc
        block = min(self.t // self.context.hop, lpc.gain.shape[1] - 1)
        coefficients = lpc.coefficients[:, block].to(self.previous.dtype)  # (B, p)
        self.gain = lpc.gain[:, block].to(self.previous.dtype)
        self.prediction = -(coefficients * self.y_history).sum(-1)
        base = sf.preemphasis * self.previous + self.prediction
        mean = base + self.gain * mean_net
        return mean, soft_floor(torch.log(self.gain) + log_scale_net, floor)

    def push(self, value: Tensor) -> None:
        sf = self.conditioner.source_filter
        if sf is None:
            excitation = value
        else:
            y = value - sf.preemphasis * self.previous
            excitation = (y - self.prediction) / self.gain
            self.y_history = torch.cat([y[:, None], self.y_history[:, :-1]], dim=1)
        self.features = torch.stack([value, excitation], dim=-1)
        self.excitations[:, self.t] = excitation
        self.previous = value
        self.t += 1


class GaussianWaveNet(nn.Module):
    """The teacher (MAF). Density is one parallel pass; sampling is autoregressive.

    Args:
        config: network, conditioning and source-filter settings.
        mel: the front end whose features condition the model.
    """

    def __init__(self, config: TeacherConfig, mel: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.mel_config = mel
        self.front_end = MelFrontEnd(mel)
        n_mels = mel.n_mels if config.conditional else 0
        self.upsampler = Upsampler(config.upsampler, n_mels, config.n_speakers)
        self.pitch = config.pitch if config.pitch.enabled else None
        conditioner = TeacherConditioner(config, conditioning_channels(self.upsampler, self.pitch))
        self.flow = AffineAutoregressive(conditioner, "maf")

    @property
    def hop_length(self) -> int:
        return self.mel_config.hop_length

    def context(
        self,
        mel: Tensor | None = None,
        num_samples: int | None = None,
        speaker: Tensor | None = None,
        batch: int = 1,
    ) -> Context:
        """Conditioning for a batch: ``mel`` ``(B, n_mels, M)`` -> ``(M - 1) hop`` samples."""
        sf = self.config.source_filter if self.config.source_filter.enabled else None
        return make_context(
            self.front_end, self.upsampler, sf, self.pitch, mel, num_samples, speaker, batch, False
        )

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
        return self.flow.conditioner(x, context)

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
        if noise is None:
            if temperature < 0:
                raise ValueError("temperature must be >= 0")
            param = next(self.parameters())
            noise = torch.randn(
                context.batch,
                context.num_samples,
                generator=generator,
                dtype=param.dtype,
                device=param.device,
            )
            noise = noise * temperature
        if noise.shape != (context.batch, context.num_samples):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, expected "
                f"({context.batch}, {context.num_samples})"
            )
        check_finite("noise", noise)
        return self.flow(noise, context, cached=cached).output

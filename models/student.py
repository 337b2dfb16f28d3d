"""The student: an inverse autoregressive flow that generates a whole waveform in one pass.

    z^0 ~ N(0, I) (times a temperature at inference)
    z^k_t = z^{k-1}_t exp(log_scale_k,t) + mean_k,t,   both functions of z^{k-1}_<t and c

Flows, in order: optionally a mixed-excitation flow (pulses at the mel's pitch plus noise,
by voicing); ``flows`` WaveNet flows; a gain flow (``log_scale = log g_t`` from
linear prediction, or one learned log-scale for the plain model); and, for source-filter
models, the FIR synthesis flow with the filter of the teacher. Every step's mean and
log-scale at ``t`` depend on ``z^0_<t`` only, so the whole student is one Gaussian per
step given the past: ``x_t = mean_tot,t + exp(log_scale_tot,t) z^0_t``, and its density of
its own sample comes from the cached noise with no inversion (Ping et al., 2018;
van den Oord et al., "Parallel WaveNet", 2017).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from models.conditioning import Context, Upsampler, conditioning_channels, make_context
from models.config import MelConfig, StudentConfig
from models.flows import (
    AffineAutoregressive,
    ExcitationConditioner,
    GainConditioner,
    Stream,
    SynthesisConditioner,
    WaveNetConditioner,
)
from models.mel import MelFrontEnd, check_finite
from models.transforms import compose_affine, standard_normal_log_prob


@dataclass
class StudentSample:
    """A student sample and the cache its density needs, all ``(B, T)``.

    Attributes:
        waveform: x.
        noise: z^0, the flows' input (already scaled by the temperature).
        mean: composed mean_tot,t.
        log_scale: composed log_scale_tot,t.
    """

    waveform: Tensor
    noise: Tensor
    mean: Tensor
    log_scale: Tensor


class IAFStudent(nn.Module):
    """The parallel student (IAF).

    Args:
        config: flows, network, conditioning and source-filter settings.
        mel: the front end whose features condition the model.
    """

    def __init__(self, config: StudentConfig, mel: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.mel_config = mel
        self.front_end = MelFrontEnd(mel)
        n_mels = mel.n_mels if config.conditional else 0
        self.upsampler = Upsampler(config.upsampler, n_mels, config.n_speakers)
        self.pitch = config.pitch if config.pitch.enabled else None
        cond_channels = conditioning_channels(self.upsampler, self.pitch)
        lag_input = self.pitch is not None and self.pitch.lag_input
        sf = config.source_filter.enabled
        steps: list[AffineAutoregressive] = []
        if config.mixed_excitation:
            excitation = ExcitationConditioner(
                self.upsampler.out_channels, config.excitation_noise_floor
            )
            steps.append(AffineAutoregressive(excitation, "iaf"))
        steps += [
            AffineAutoregressive(
                WaveNetConditioner(
                    config.wavenet,
                    cond_channels,
                    config.log_scale_bound,
                    lag_input,
                    config.pitch.lag_offsets,
                ),
                "iaf",
            )
            for _ in range(config.flows)
        ]
        steps.append(AffineAutoregressive(GainConditioner(sf, config.init_log_scale), "iaf"))
        if sf:
            steps.append(AffineAutoregressive(SynthesisConditioner(), "iaf"))
        self.flows = nn.ModuleList(steps)

    @property
    def steps(self) -> list[AffineAutoregressive]:
        """The flows in sampling order (WaveNet flows, gain, synthesis)."""
        return [cast(AffineAutoregressive, flow) for flow in self.flows]

    @property
    def leading_steps(self) -> list[AffineAutoregressive]:
        """Steps before the WaveNet flows (the mixed-excitation flow, if any)."""
        return self.steps[: int(self.config.mixed_excitation)]

    @property
    def wavenet_steps(self) -> list[AffineAutoregressive]:
        """The WaveNet flows."""
        first = int(self.config.mixed_excitation)
        return self.steps[first : first + self.config.flows]

    @property
    def tail_steps(self) -> list[AffineAutoregressive]:
        """Steps after the WaveNet flows: gain, then synthesis (source-filter models)."""
        return self.steps[int(self.config.mixed_excitation) + self.config.flows :]

    @property
    def gain(self) -> GainConditioner:
        conditioner = self.tail_steps[0].conditioner
        assert isinstance(conditioner, GainConditioner)
        return conditioner

    @property
    def hop_length(self) -> int:
        return self.mel_config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

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
            self.front_end, self.upsampler, sf, self.pitch, mel, num_samples, speaker, batch, True
        )

    def draw_noise(
        self, context: Context, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``z^0`` ``(B, T)``: standard normal noise times ``temperature``."""
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
        return noise * temperature

    def _check_noise(self, noise: Tensor, context: Context) -> None:
        if noise.shape != (context.batch, context.num_samples):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, expected "
                f"({context.batch}, {context.num_samples})"
            )
        check_finite("noise", noise)

    def sample(
        self,
        context: Context,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> StudentSample:
        """One parallel pass ``z^0 -> x`` with the composed per-step Gaussian cached."""
        if noise is None:
            noise = self.draw_noise(context, temperature, generator)
        self._check_noise(noise, context)
        value = noise
        mean = torch.zeros_like(noise)
        log_scale = torch.zeros_like(noise)
        for flow in self.flows:
            step = flow(value, context)
            value = step.output
            mean, log_scale = compose_affine(mean, log_scale, step.mean, step.log_scale)
        return StudentSample(waveform=value, noise=noise, mean=mean, log_scale=log_scale)

    @staticmethod
    def log_prob_of_sample(sample: StudentSample) -> Tensor:
        """``log s(x)`` ``(B,)`` of the student's own sample from its cached noise (no inversion).

        ``sum_t [log N(z^0_t; 0, 1) - log_scale_tot,t]``: the untempered model's density.
        """
        return (standard_normal_log_prob(sample.noise) - sample.log_scale).sum(1)

    def generate(
        self,
        context: Context,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Inference: the waveform ``(B, T)`` only, with no cache kept."""
        if noise is None:
            noise = self.draw_noise(context, temperature, generator)
        self._check_noise(noise, context)
        value = noise
        for flow in self.flows:
            value = flow(value, context).output
        return value

    def stream(self, context: Context, noise: Tensor, chunk: int) -> Iterator[Tensor]:
        """Generate chunk by chunk with carried state: the concatenation equals ``generate``.

        Args:
            context: conditioning for the whole clip.
            noise: ``(B, T)`` the clip's z^0.
            chunk: samples per chunk (a multiple of ``hop`` is fastest).
        """
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        self._check_noise(noise, context)
        streams = [Stream() for _ in self.flows]
        for start in range(0, context.num_samples, chunk):
            value = noise[:, start : start + chunk]
            for flow, state in zip(self.flows, streams, strict=True):
                value = flow(value, context, stream=state).output
            yield value

    def inverse(self, x: Tensor, context: Context, cached: bool = True) -> tuple[Tensor, Tensor]:
        """The slow sequential ``x -> z^0`` (verification and analysis only).

        Returns:
            ``z^0`` ``(B, T)`` and ``log|det dz^0/dx|`` ``(B,)``.
        """
        if x.shape != (context.batch, context.num_samples):
            raise ValueError(
                f"x has shape {tuple(x.shape)}, expected ({context.batch}, {context.num_samples})"
            )
        check_finite("x", x)
        value = x
        logabsdet = x.new_zeros(x.shape[0])
        for flow in reversed(self.steps):
            step = flow.inverse(value, context, cached=cached)
            value = step.output
            logabsdet = logabsdet + step.logabsdet
        return value, logabsdet

    def log_prob(self, x: Tensor, context: Context) -> Tensor:
        """``log s(x)`` ``(B,)`` of any waveform, by inversion and change of variables."""
        noise, logabsdet = self.inverse(x, context)
        return standard_normal_log_prob(noise).sum(1) + logabsdet

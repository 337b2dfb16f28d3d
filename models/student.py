"""The student: an inverse autoregressive flow that generates a whole waveform in one pass.

    z^0 ~ N(0, I) (times a temperature at inference)
    z^k_t = z^{k-1}_t exp(log_scale_k,t) + mean_k,t,   both functions of z^{k-1}_<t and c

Steps, by name and in order: ``excitation`` (optional: pulses at the mel's pitch plus noise,
by voicing), ``wavenet_1`` ... ``wavenet_K``, ``gain`` (``log_scale = log g_t`` from linear
prediction, or one learned log-scale for the plain model) and, for source-filter models,
``synthesis`` (the FIR synthesis filter of the teacher) and, with the mel-inversion prior,
``prior`` (``x = h(c) + u``: a shift by the prior's waveform). Every step's mean and log-scale at
``t`` depend on ``z^0_<t`` only, so the whole student is one Gaussian per step given the past:
``x_t = mean_tot,t + exp(log_scale_tot,t) z^0_t``, and its density of its own sample comes
from the cached noise with no inversion (Ping et al., 2018; van den Oord et al., "Parallel
WaveNet", 2017). The cascade itself is ``models.flows.FlowSequence``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.conditioners import (
    ExcitationConditioner,
    GainConditioner,
    PriorConditioner,
    SynthesisConditioner,
    WaveNetConditioner,
)
from models.conditioning import ConditionedModel, Context
from models.config import MelConfig, StudentConfig
from models.flows import AffineAutoregressive, Conditioner, FlowSequence
from models.transforms import standard_normal_log_prob


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


def wavenet_name(index: int) -> str:
    """The name of the ``index``-th (from 0) WaveNet flow."""
    return f"wavenet_{index + 1}"


def student_step_names(config: StudentConfig) -> list[str]:
    """The student's steps in sampling order."""
    names = ["excitation"] if config.mixed_excitation else []
    names += [wavenet_name(i) for i in range(config.flows)]
    names.append("gain")
    if config.source_filter.enabled:
        names.append("synthesis")
    if config.prior.enabled:
        names.append("prior")
    return names


class IAFStudent(ConditionedModel):
    """The parallel student (IAF).

    Args:
        config: flows, network, conditioning and source-filter settings.
        mel: the front end whose features condition the model.
    """

    with_impulse = True
    config: StudentConfig

    def __init__(self, config: StudentConfig, mel: MelConfig) -> None:
        super().__init__(config, mel)
        frame_channels, source_channels = self.conditioning_channels()
        lag_offsets = config.pitch.lag_offsets if self.pitch and self.pitch.lag_input else []
        sf = config.source_filter.enabled
        conditioners: dict[str, Conditioner] = {}
        if config.mixed_excitation:
            conditioners["excitation"] = ExcitationConditioner(
                frame_channels, config.excitation_noise_floor
            )
        for index in range(config.flows):
            conditioners[wavenet_name(index)] = WaveNetConditioner.build(
                config.wavenet,
                frame_channels,
                source_channels,
                config.log_scale_bound,
                lag_offsets,
            )
        conditioners["gain"] = GainConditioner(sf, config.init_log_scale)
        if sf:
            conditioners["synthesis"] = SynthesisConditioner(config.source_filter.fir_taps)
        if config.prior.enabled:
            conditioners["prior"] = PriorConditioner()
        self.flows = FlowSequence(
            {name: AffineAutoregressive(c, "iaf") for name, c in conditioners.items()}
        )

    @property
    def wavenet_steps(self) -> list[AffineAutoregressive]:
        """The WaveNet flows, in order."""
        return [self.flows.step(wavenet_name(i)) for i in range(self.config.flows)]

    @property
    def gain(self) -> GainConditioner:
        conditioner = self.flows.step("gain").conditioner
        assert isinstance(conditioner, GainConditioner)
        return conditioner

    def sample(
        self,
        context: Context,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> StudentSample:
        """One parallel pass ``z^0 -> x`` with the composed per-step Gaussian cached."""
        noise = self.noise_for(context, temperature, generator, noise)
        result = self.flows.run(noise, context, compose=True)
        assert result.mean is not None and result.log_scale is not None
        return StudentSample(result.output, noise, result.mean, result.log_scale)

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
        noise = self.noise_for(context, temperature, generator, noise)
        return self.flows.run(noise, context).output

    def stream(self, context: Context, noise: Tensor, chunk: int) -> Iterator[Tensor]:
        """Generate chunk by chunk with carried state: the concatenation equals ``generate``.

        Args:
            context: conditioning for the whole clip.
            noise: ``(B, T)`` the clip's z^0.
            chunk: samples per chunk (a multiple of ``hop`` is fastest).
        """
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        return self.flows.stream(self.noise_for(context, noise=noise), context, chunk)

    def inverse(self, x: Tensor, context: Context, cached: bool = True) -> tuple[Tensor, Tensor]:
        """The slow sequential ``x -> z^0`` (verification and analysis only).

        Returns:
            ``z^0`` ``(B, T)`` and ``log|det dz^0/dx|`` ``(B,)``.
        """
        if x.shape != (context.batch, context.num_samples):
            raise ValueError(
                f"x has shape {tuple(x.shape)}, expected ({context.batch}, {context.num_samples})"
            )
        return self.flows.inverse(x, context, cached)

    def log_prob(self, x: Tensor, context: Context) -> Tensor:
        """``log s(x)`` ``(B,)`` of any waveform, by inversion and change of variables."""
        noise, logabsdet = self.inverse(x, context)
        return standard_normal_log_prob(noise).sum(1) + logabsdet

    def flops_per_sample(self) -> dict[str, float]:
        """Multiply-adds x 2 per generated sample: every step by name, the upsampler, total.

        The per-clip analysis (linear prediction, pitch) is context, not counted.
        """
        hop = self.hop_length
        counts = self.flows.flops_per_sample(hop)
        if self.prior is not None:
            counts["prior_network"] = self.prior.flops_per_sample()
        counts["upsampler"] = sum(
            2.0 * m.in_channels * m.out_channels * m.kernel_size[0] / hop
            for m in self.upsampler.modules()
            if isinstance(m, nn.Conv1d)
        )
        counts["total"] = sum(counts.values())
        return counts


def upgrade_state_dict(state: dict[str, Tensor], config: StudentConfig) -> dict[str, Tensor]:
    """A student state dict from distilwave 0.1.0 (steps numbered ``flows.0`` ...) with the
    steps' names instead; a current one is returned unchanged."""
    names = student_step_names(config)
    upgraded = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "flows" and parts[1].isdigit():
            index = int(parts[1])
            if index >= len(names):
                raise ValueError(f"weights name flow {index}; this configuration has {len(names)}")
            key = ".".join(["flows", names[index], *parts[2:]])
        upgraded[key] = value
    return upgraded

"""Tiny model factories shared by the models test suite.

Every factory builds a model small enough that the O(T^2) references stay cheap, and
``randomise`` replaces the zero-initialised heads (which make fresh flows the identity) by
random weights so that means and scales really depend on the past.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from models.conditioning import Context
from models.config import (
    MelConfig,
    PitchConfig,
    PriorConfig,
    SourceFilterConfig,
    StudentConfig,
    TeacherConfig,
    UpsamplerConfig,
    WaveNetConfig,
)
from models.student import IAFStudent
from models.teacher import GaussianWaveNet

HOP = 8
N_MELS = 8
N_SPEAKERS = 3
TINY_MEL = MelConfig(sample_rate=8000, n_fft=64, hop_length=HOP, n_mels=N_MELS)
TINY_UPSAMPLER = UpsamplerConfig(channels=4, layers=1, kernel_size=3, speaker_dim=2)


@dataclass(frozen=True)
class Variant:
    """One model family the invariants must hold for."""

    name: str
    conditional: bool
    source_filter: bool
    speakers: bool
    pitch: bool = False
    excitation: bool = False  # the student's mixed-excitation flow, and 3 pitch-lag taps
    prior: bool = False  # the mel-inversion prior: the student's last step x = h + u
    flows: int = 2  # the student's WaveNet flows
    prior_shift: bool = True  # the teacher models x - h (else x, reading h as a channel only)

    def __str__(self) -> str:
        return self.name


VARIANTS = [
    Variant("plain-cond", conditional=True, source_filter=False, speakers=False),
    Variant("plain-cond-spk", conditional=True, source_filter=False, speakers=True),
    Variant("plain-uncond", conditional=False, source_filter=False, speakers=False),
    Variant("plain-uncond-spk", conditional=False, source_filter=False, speakers=True),
    Variant("sf", conditional=True, source_filter=True, speakers=False),
    Variant("sf-spk", conditional=True, source_filter=True, speakers=True),
    Variant("pitch", conditional=True, source_filter=False, speakers=False, pitch=True),
    Variant("sf-pitch-spk", conditional=True, source_filter=True, speakers=True, pitch=True),
    Variant(
        "sf-pitch-mix",
        conditional=True,
        source_filter=True,
        speakers=False,
        pitch=True,
        excitation=True,
    ),
    Variant(
        "sf-pitch-mix-prior",
        conditional=True,
        source_filter=True,
        speakers=False,
        pitch=True,
        excitation=True,
        prior=True,
    ),
    Variant("sf-prior", conditional=True, source_filter=True, speakers=False, prior=True),
    Variant("plain-prior", conditional=True, source_filter=False, speakers=True, prior=True),
    # cpu-8k's student: one flow on the residual of the prior
    Variant(
        "sf-prior-1flow", conditional=True, source_filter=True, speakers=False, prior=True, flows=1
    ),
    # the teacher reads h as a source channel only, not as a shift of its mean
    Variant(
        "sf-pitch-prior-noshift",
        conditional=True,
        source_filter=True,
        speakers=False,
        pitch=True,
        prior=True,
        prior_shift=False,
    ),
]
VARIANT_IDS = [v.name for v in VARIANTS]
SOURCE_FILTER_VARIANTS = [v for v in VARIANTS if v.source_filter]
PLAIN_VARIANTS = [v for v in VARIANTS if not v.source_filter]
PITCH_VARIANTS = [v for v in VARIANTS if v.pitch]


def wavenet_config(kernel_size: int = 2, weight_norm: bool = False) -> WaveNetConfig:
    """Three layers (dilations 1, 2, 1), four residual channels, eight skip channels (so the
    ReLU head of a randomised network is rarely dead at any one step)."""
    return WaveNetConfig(
        layers=3,
        cycle=2,
        residual_channels=4,
        gate_channels=4,
        skip_channels=8,
        kernel_size=kernel_size,
        weight_norm=weight_norm,
    )


def source_filter_config(enabled: bool, preemphasis: float = 0.9) -> SourceFilterConfig:
    return SourceFilterConfig(enabled=enabled, order=4, fir_taps=24, preemphasis=preemphasis)


def pitch_config(enabled: bool, lag_taps: int = 1) -> PitchConfig:
    """Pitch between 800 Hz and 2 kHz: periods of 4-10 samples, well inside a tiny clip, so the
    pitch-lagged inputs really read the clip (a speech range would only read the zeros
    before it)."""
    return PitchConfig(
        enabled=enabled,
        f0_min=800.0,
        f0_max=2000.0,
        bins_per_octave=12,
        harmonics=3,
        max_harmonic_hz=3900.0,
        source_harmonics=2,
        lag_taps=lag_taps,
    )


def prior_config(enabled: bool) -> PriorConfig:
    """A tiny prior: 2 ConvNeXt layers of 6 channels, a 32-point iSTFT at the tiny hop."""
    return PriorConfig(enabled=enabled, n_fft=32, channels=6, layers=2, expansion=2, kernel_size=3)


def teacher_config(
    variant: Variant, kernel_size: int = 2, weight_norm: bool = False, preemphasis: float = 0.9
) -> TeacherConfig:
    return TeacherConfig(
        wavenet=wavenet_config(kernel_size, weight_norm),
        upsampler=TINY_UPSAMPLER,
        source_filter=source_filter_config(variant.source_filter, preemphasis),
        pitch=pitch_config(variant.pitch, 3 if variant.excitation else 1),
        prior=prior_config(variant.prior),
        prior_shift=variant.prior_shift,
        conditional=variant.conditional,
        n_speakers=N_SPEAKERS if variant.speakers else 0,
    )


def student_config(
    variant: Variant, kernel_size: int = 2, weight_norm: bool = False, flows: int | None = None
) -> StudentConfig:
    return StudentConfig(
        flows=variant.flows if flows is None else flows,
        wavenet=wavenet_config(kernel_size, weight_norm),
        upsampler=TINY_UPSAMPLER,
        source_filter=source_filter_config(variant.source_filter),
        pitch=pitch_config(variant.pitch, 3 if variant.excitation else 1),
        conditional=variant.conditional,
        n_speakers=N_SPEAKERS if variant.speakers else 0,
        mixed_excitation=variant.excitation,
        prior=prior_config(variant.prior),
    )


def randomise(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Give every parameter random weights (seeded), heads included.

    A weight-normalised layer gets the magnitude ``g = ||v||`` of its random direction, so its
    weight has the same distribution as a plain layer's (a random ``g`` of the same std would
    shrink every row and let the biases switch the ReLU head off). Biases get a quarter of
    ``std`` for the same reason.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_(noise * (std / 4 if name.endswith("bias") else std))
        for sub in module.modules():
            if parametrize.is_parametrized(sub, "weight"):
                weight = sub.parametrizations.weight
                norms = weight.original1.flatten(1).norm(dim=1)
                weight.original0.copy_(norms.reshape(weight.original0.shape))
    return module


def make_teacher(
    variant: Variant,
    kernel_size: int = 2,
    weight_norm: bool = False,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    std: float = 0.3,
    preemphasis: float = 0.9,
) -> GaussianWaveNet:
    config = teacher_config(variant, kernel_size, weight_norm, preemphasis)
    teacher = GaussianWaveNet(config, TINY_MEL).to(dtype)
    randomise(teacher, seed, std)
    return teacher.eval()


def make_student(
    variant: Variant,
    kernel_size: int = 2,
    weight_norm: bool = False,
    dtype: torch.dtype = torch.float64,
    seed: int = 1,
    std: float = 0.3,
    flows: int | None = None,
) -> IAFStudent:
    student = IAFStudent(student_config(variant, kernel_size, weight_norm, flows), TINY_MEL)
    student = student.to(dtype)
    randomise(student, seed, std)
    return student.eval()


def random_mel(batch: int, frames: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Normalised log-mel features of coloured noise, as the real front end computes them."""
    return _random_mel(batch, frames, seed).to(dtype, copy=True)


@functools.cache
def _random_mel(batch: int, frames: int, seed: int) -> Tensor:
    from models.mel import MelFrontEnd

    generator = torch.Generator().manual_seed(seed)
    samples = max((frames - 1) * HOP, 64)  # the centred STFT needs more than n_fft / 2
    white = torch.randn(batch, samples + 64, generator=generator, dtype=torch.float64)
    # A resonant AR(2) colouring gives the LPC analysis a real envelope to find.
    pole_radius, pole_angle = 0.9, 2 * math.pi * 0.1
    a1, a2 = -2 * pole_radius * math.cos(pole_angle), pole_radius**2
    signal = torch.zeros_like(white)
    for t in range(white.shape[1]):
        signal[:, t] = white[:, t] - a1 * signal[:, t - 1] - a2 * signal[:, t - 2]
    signal = 0.05 * signal[:, 64:]
    front_end = MelFrontEnd(TINY_MEL).to(torch.float64)
    return front_end(signal)[..., :frames]


def speaker_ids(batch: int) -> Tensor:
    """Speaker ids cycling through every speaker, so every embedding row is used."""
    return torch.arange(batch) % N_SPEAKERS


def make_context(
    model: GaussianWaveNet | IAFStudent,
    variant: Variant,
    batch: int = 2,
    frames: int = 4,
    seed: int = 2,
) -> Context:
    """A context for ``(frames - 1) * HOP`` samples (unconditional models: the same T)."""
    dtype = next(model.parameters()).dtype
    speaker = speaker_ids(batch) if variant.speakers else None
    if variant.conditional:
        return model.context(mel=random_mel(batch, frames, seed, dtype), speaker=speaker)
    return model.context(num_samples=(frames - 1) * HOP, speaker=speaker, batch=batch)


def random_signal(context: Context, seed: int, scale: float = 0.5) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (context.batch, context.num_samples)
    return torch.randn(shape, generator=generator, dtype=torch.float64) * scale

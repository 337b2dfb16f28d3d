"""Typed configuration of every model component.

Each component takes its own small config; values that follow from others
(conditioning channels = n_mels, the dilation schedule, the receptive field)
are derived, never stored twice. Unknown keys are an error everywhere.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MelConfig(StrictModel):
    """The log-mel front end (torchaudio MelSpectrogram, slaney mel, magnitude).

    Features are ``(log(max(mel, log_floor)) + norm_offset) / norm_scale``.
    """

    sample_rate: int = Field(8000, gt=0, le=192_000)
    n_fft: int = Field(1024, gt=0)
    win_length: int | None = Field(None, gt=0)
    hop_length: int = Field(100, gt=0)
    n_mels: int = Field(80, gt=0, le=512)
    f_min: float = Field(0.0, ge=0.0)
    f_max: float | None = Field(None, gt=0.0)
    log_floor: float = Field(1e-5, gt=0.0)
    norm_offset: float = 6.0
    norm_scale: float = Field(2.5, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.window > self.n_fft:
            raise ValueError(f"win_length {self.window} exceeds n_fft {self.n_fft}")
        if self.hop_length > self.window:
            raise ValueError(f"hop_length {self.hop_length} exceeds the window {self.window}")
        if self.upper_frequency > self.sample_rate / 2:
            raise ValueError(f"f_max {self.f_max} is above Nyquist ({self.sample_rate / 2} Hz)")
        if self.f_min >= self.upper_frequency:
            raise ValueError(f"f_min {self.f_min} must be below f_max {self.upper_frequency}")
        return self

    @property
    def window(self) -> int:
        return self.win_length or self.n_fft

    @property
    def upper_frequency(self) -> float:
        return self.f_max if self.f_max is not None else self.sample_rate / 2

    def num_frames(self, num_samples: int) -> int:
        """Frames the (centred) front end yields for ``num_samples`` samples."""
        return num_samples // self.hop_length + 1


class AudioConvention(StrictModel):
    """The level audio is brought to before its mel is computed (training data and inference
    alike): integrated loudness (ITU-R BS.1770) and a peak limit. It travels in the bundle, so a
    model is always fed features of audio at the level it was trained on."""

    loudness_lufs: float = Field(-23.0, le=0, description="target integrated loudness")
    peak_limit: float = Field(0.95, gt=0, le=1.0, description="maximum absolute sample value")


class WaveNetConfig(StrictModel):
    """A causal dilated convolution stack with gated units (van den Oord et al., 2016).

    Dilations run 1, 2, 4, ... 2^(cycle-1) and repeat until ``layers`` layers exist.
    """

    layers: int = Field(6, ge=1, le=64)
    cycle: int = Field(6, ge=1, le=16)
    residual_channels: int = Field(48, ge=1)
    gate_channels: int = Field(96, ge=2)
    skip_channels: int = Field(48, ge=1)
    kernel_size: int = Field(2, ge=2, le=5)
    weight_norm: bool = False

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.gate_channels % 2:
            raise ValueError("gate_channels must be even (tanh and sigmoid halves)")
        return self

    @property
    def dilations(self) -> list[int]:
        return [2 ** (i % self.cycle) for i in range(self.layers)]

    @property
    def receptive_field(self) -> int:
        """Samples of input that reach one output, including the current one."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)


class UpsamplerConfig(StrictModel):
    """The learned frame encoder whose output is interpolated to one vector per sample.

    A ``kernel_size`` convolution stack at frame rate (LeakyReLU between layers);
    every consumer projects its output with a 1x1 at frame rate and interpolates
    linearly between frame centres, which equals interpolate-then-project because
    both are linear.
    """

    channels: int = Field(64, ge=1)
    layers: int = Field(1, ge=1, le=8)
    kernel_size: int = Field(3, ge=1, le=9)
    speaker_dim: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.kernel_size % 2 == 0:
            raise ValueError("upsampler kernel_size must be odd (centred frames)")
        return self


class SourceFilterConfig(StrictModel):
    """Linear prediction from the mel (docs/architecture.md, source-filter structure)."""

    enabled: bool = True
    order: int = Field(16, ge=1, le=64)
    preemphasis: float = Field(0.9, ge=0.0, lt=1.0)
    lag_window_hz: float = Field(50.0, ge=0.0)
    noise_floor: float = Field(1e-4, ge=0.0)
    fir_taps: int = Field(128, ge=1, le=1024)
    gain_floor: float = Field(1e-5, gt=0.0)


class PitchConfig(StrictModel):
    """Pitch from the mel (models/pitch.py) and what the flows get from it.

    ``enabled`` adds per-sample periodic source channels to every conditioner's conditioning
    and, with ``lag_input``, the conditioner's variable one pitch period back as an input.
    """

    enabled: bool = False
    lag_input: bool = True
    lag_taps: int = Field(1, ge=1, le=9, description="odd: inputs v_{t-P+k}, |k| <= taps // 2")
    f0_min: float = Field(50.0, gt=0)
    f0_max: float = Field(500.0, gt=0)
    bins_per_octave: int = Field(48, ge=4, le=192)
    harmonics: int = Field(8, ge=1, le=32)
    decay: float = Field(0.85, gt=0, le=1)
    max_harmonic_hz: float = Field(1500.0, gt=0)
    lifter: int = Field(20, ge=2)
    jump_octaves: float = Field(0.08, gt=0)
    voicing_threshold: float = 0.7
    voicing_width: float = Field(0.1, gt=0)
    source_harmonics: int = Field(3, ge=1, le=16)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.f0_min >= self.f0_max:
            raise ValueError("pitch.f0_min must be below pitch.f0_max")
        if self.lag_taps % 2 == 0:
            raise ValueError("pitch.lag_taps must be odd (taps centred on one period back)")
        return self

    @property
    def lag_offsets(self) -> list[int]:
        """Offsets ``k`` of the lagged inputs ``v_{t-P+k}``."""
        half = self.lag_taps // 2
        return list(range(-half, half + 1))


class PriorConfig(StrictModel):
    """The mel-inversion prior (models/prior.py): a ConvNeXt at frame rate and an iSTFT head.

    ``enabled`` adds the deterministic waveform ``h`` from the mel: the student's last step is
    ``x = h + u``, the teacher models ``x - h`` and reads ``h`` as conditioning.
    """

    enabled: bool = False
    n_fft: int = Field(1024, ge=16, description="the iSTFT's window and FFT (hop: the mel's)")
    channels: int = Field(256, ge=1)
    layers: int = Field(6, ge=1, le=32)
    expansion: int = Field(3, ge=1, le=8)
    kernel_size: int = Field(7, ge=1, le=31)
    magnitude_base: Literal["pinv", "none"] = Field(
        "pinv", description="start from the mel's pseudo-inverse magnitude (FreeV) or from 0"
    )
    max_log_magnitude: float = 8.0

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.kernel_size % 2 == 0:
            raise ValueError("prior.kernel_size must be odd (centred frames)")
        return self


class TeacherConfig(StrictModel):
    """The Gaussian WaveNet teacher: a masked autoregressive flow over samples."""

    wavenet: WaveNetConfig = WaveNetConfig(
        layers=16, cycle=8, residual_channels=64, gate_channels=128, skip_channels=64
    )
    upsampler: UpsamplerConfig = UpsamplerConfig()
    source_filter: SourceFilterConfig = SourceFilterConfig()
    pitch: PitchConfig = PitchConfig()
    prior: PriorConfig = PriorConfig()
    # with the prior: True models r = x - h (h an exact shift of the mean, and a source
    # channel); False models x itself and reads h only as a source channel
    prior_shift: bool = True
    conditional: bool = True
    n_speakers: int = Field(0, ge=0)
    log_scale_floor: float = Field(-12.0, le=0.0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.source_filter.enabled and not self.conditional:
            raise ValueError("the source-filter teacher needs conditioning (the mel)")
        if self.pitch.enabled and not self.conditional:
            raise ValueError("pitch comes from the mel: an unconditional teacher cannot use it")
        if self.prior.enabled and not self.conditional:
            raise ValueError("the prior inverts the mel: an unconditional teacher has none")
        return self


class StudentConfig(StrictModel):
    """The IAF student: an optional mixed-excitation flow, ``flows`` WaveNet flows, then gain
    and synthesis."""

    flows: int = Field(4, ge=1, le=16)
    wavenet: WaveNetConfig = WaveNetConfig()
    upsampler: UpsamplerConfig = UpsamplerConfig()
    source_filter: SourceFilterConfig = SourceFilterConfig()
    pitch: PitchConfig = PitchConfig()
    conditional: bool = True
    n_speakers: int = Field(0, ge=0)
    log_scale_bound: float = Field(5.0, gt=0.0)
    init_log_scale: float = -2.5
    mixed_excitation: bool = False
    excitation_noise_floor: float = Field(0.01, gt=0.0, le=1.0)
    prior: PriorConfig = PriorConfig()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.source_filter.enabled and not self.conditional:
            raise ValueError("the source-filter student needs conditioning (the mel)")
        if self.pitch.enabled and not self.conditional:
            raise ValueError("pitch comes from the mel: an unconditional student cannot use it")
        if self.mixed_excitation and not self.pitch.enabled:
            raise ValueError("mixed_excitation needs pitch.enabled (its pulses follow the pitch)")
        if self.prior.enabled and not self.conditional:
            raise ValueError("the prior inverts the mel: an unconditional student has none")
        return self

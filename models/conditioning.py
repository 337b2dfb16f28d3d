"""Conditioning shared by teacher and student: the learned upsampler and the per-batch context."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn

from models.config import (
    MelConfig,
    PitchConfig,
    StudentConfig,
    TeacherConfig,
    UpsamplerConfig,
)
from models.lpc import LinearPrediction, linear_prediction
from models.mel import MelFrontEnd, check_finite
from models.pitch import estimate_pitch, periodic_source, pitch_lag, source_channels
from models.prior import MelInversionPrior
from models.wavenet import Conditioning, interpolate_rows


class Upsampler(nn.Module):
    """Mel frames (and speaker) -> conditioning features at frame rate, ``(B, C, M)``.

    ``interpolate_frames`` turns them into one vector per sample (linear between frame
    centres); every WaveNet layer then projects them with its own 1x1.

    Args:
        config: channels and depth of the frame encoder.
        n_mels: mel bands (0 for an unconditional model).
        n_speakers: speakers for global conditioning (0: none).
    """

    def __init__(self, config: UpsamplerConfig, n_mels: int, n_speakers: int) -> None:
        super().__init__()
        self.config = config
        self.n_mels = n_mels
        self.speaker = nn.Embedding(n_speakers, config.speaker_dim) if n_speakers > 0 else None
        in_channels = n_mels + (config.speaker_dim if n_speakers > 0 else 0)
        layers: list[nn.Module] = []
        for _ in range(config.layers if in_channels > 0 else 0):
            layers += [
                nn.Conv1d(
                    in_channels,
                    config.channels,
                    config.kernel_size,
                    padding=config.kernel_size // 2,
                    padding_mode="replicate",
                ),
                nn.LeakyReLU(0.2),
            ]
            in_channels = config.channels
        self.encoder = nn.Sequential(*layers)
        self.out_channels = config.channels if layers else 0

    @property
    def n_speakers(self) -> int:
        return 0 if self.speaker is None else self.speaker.num_embeddings

    def forward(self, mel: Tensor | None, speaker: Tensor | None, frames: int) -> Tensor | None:
        """``mel`` ``(B, n_mels, M)`` or None, ``speaker`` ``(B,)`` or None -> ``(B, C, M)``."""
        parts: list[Tensor] = []
        if self.n_mels > 0:
            if mel is None:
                raise ValueError("this model is conditional: it needs a mel spectrogram")
            parts.append(mel)
        if self.speaker is not None:
            if speaker is None:
                raise ValueError(f"this model has {self.n_speakers} speakers: pass a speaker id")
            if speaker.dim() != 1 or speaker.dtype not in (torch.int32, torch.int64):
                raise ValueError("speaker must be a (B,) tensor of integer ids")
            if bool((speaker < 0).any()) or bool((speaker >= self.n_speakers).any()):
                raise ValueError(f"speaker ids must lie in [0, {self.n_speakers})")
            emb = self.speaker(speaker)  # (B, D)
            parts.append(emb[:, :, None].expand(-1, -1, frames))
        elif speaker is not None:
            raise ValueError("this model has no speakers: do not pass a speaker id")
        if not parts:
            return None
        features: Tensor = self.encoder(torch.cat(parts, dim=1))  # (B, C, M)
        return features


def _along(axis: int) -> dict[str, int]:
    """Field metadata: the axis along which ``Context.stack`` pads the field."""
    return {"axis": axis}


def pad_repeat(values: Tensor, length: int, dim: int) -> Tensor:
    """Extend ``values`` to ``length`` along ``dim`` by repeating its last entry there."""
    extra = length - values.shape[dim]
    if extra <= 0:
        return values
    last = values.narrow(dim, values.shape[dim] - 1, 1)
    sizes = list(values.shape)
    sizes[dim] = extra
    return torch.cat([values, last.expand(*sizes)], dim=dim)


def stack_padded(parts: list[Tensor | None], what: str, dim: int) -> Tensor | None:
    """Single-request tensors padded along ``dim`` to the longest (last entry repeated) and
    concatenated on the batch; None if every part is None."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise ValueError(f"some requests have {what} and some do not")
    length = max(p.shape[dim] for p in present)
    return torch.cat([pad_repeat(p, length, dim) for p in present], dim=0)


@dataclass
class Context:
    """Everything a flow needs about one batch besides the variable itself.

    Attributes:
        batch: batch size B.
        num_samples: T, the length of the waveform this context describes.
        hop: samples between frame centres.
        frames: ``(B, C, M)`` upsampler features (M >= T / hop + 1) or None.
        lpc: per-block linear prediction (source-filter models) or None.
        source: ``(B, S, T)`` periodic source channels from the mel's pitch, or None.
        lag: ``(B, T)`` pitch period in samples (for pitch-lagged inputs), or None.
        pulses: ``(B, T)`` unit-power band-limited pulse train at the pitch, or None.
        voicing: ``(B, M)`` soft voicing per frame, or None.
        prior: ``(B, T)`` the mel-inversion prior's waveform ``h``, or None.

    Every tensor field says (metadata ``axis``) along which axis ``stack`` pads it: a new field
    without one is an error there, not a silently unpadded batch.
    """

    batch: int
    num_samples: int
    hop: int
    frames: Tensor | None = field(default=None, metadata=_along(2))
    lpc: LinearPrediction | None = field(default=None, metadata=_along(1))
    source: Tensor | None = field(default=None, metadata=_along(2))
    lag: Tensor | None = field(default=None, metadata=_along(1))
    pulses: Tensor | None = field(default=None, metadata=_along(1))
    voicing: Tensor | None = field(default=None, metadata=_along(1))
    prior: Tensor | None = field(default=None, metadata=_along(1))

    @property
    def conditioning(self) -> Conditioning:
        """What a WaveNet stack reads: the frames and the per-sample source."""
        return Conditioning(self.frames, self.source, self.hop)

    @classmethod
    def stack(cls, contexts: list[Context]) -> Context:
        """One batch from single-request contexts, each padded to the longest.

        Frames and voicing are padded along frames, filter blocks along blocks, per-sample
        channels along time, all by repeating the last entry. Every flow is causal and reads
        its conditioning at sample ``t`` only up to frame ``t / hop + 1``, so the padding
        never reaches a request's own samples: each is generated as it would be alone.
        """
        if not contexts:
            raise ValueError("no contexts to stack")
        if any(c.batch != 1 for c in contexts):
            raise ValueError("Context.stack takes single-request contexts (batch 1 each)")
        if len({c.hop for c in contexts}) != 1:
            raise ValueError("contexts with different hops cannot share a batch")
        values: dict[str, object] = {}
        for item in fields(cls):
            if item.name in ("batch", "num_samples", "hop"):
                continue
            if "axis" not in item.metadata:
                raise TypeError(f"Context.{item.name} does not say how to pad it (metadata axis)")
            parts = [getattr(c, item.name) for c in contexts]
            if item.name == "lpc":
                values[item.name] = LinearPrediction.stack(parts)
            else:
                values[item.name] = stack_padded(parts, item.name, item.metadata["axis"])
        return cls(
            batch=len(contexts),
            num_samples=max(c.num_samples for c in contexts),
            hop=contexts[0].hop,
            **values,  # type: ignore[arg-type]
        )


def interpolate_frames(frames: Tensor, t0: int, t1: int, hop: int) -> Tensor:
    """Frame-rate ``(B, C, M)`` -> per-sample ``(B, C, t1 - t0)``, linear between frame centres
    (``models.wavenet.interpolate_rows`` in the batch-first layout)."""
    batch, channels = frames.shape[:2]
    dense = interpolate_rows(frames.permute(2, 0, 1), t0, t1, hop)  # ((t1 - t0) B, C)
    return dense.reshape(-1, batch, channels).permute(1, 2, 0)


def make_context(
    model: ConditionedModel,
    mel: Tensor | None,
    num_samples: int | None,
    speaker: Tensor | None,
    batch: int,
) -> Context:
    """Validate the conditioning inputs of one batch and derive everything ``model``'s flows
    need: upsampled frames, linear prediction, pitch, and the prior's waveform.

    A conditional model takes ``mel`` ``(B, n_mels, M)`` and describes ``(M - 1) * hop``
    samples (between the first and last frame centres). An unconditional one takes
    ``num_samples`` and ``batch`` (or the batch of ``speaker``).
    """
    front_end, upsampler = model.front_end, model.upsampler
    config = model.config
    source_filter = config.source_filter if config.source_filter.enabled else None
    pitch = model.pitch
    hop = front_end.config.hop_length
    if upsampler.n_mels > 0:
        if mel is None:
            raise ValueError("this model is conditional: pass a mel spectrogram")
        mel = front_end.check_features(mel)
        batch, frames = mel.shape[0], mel.shape[-1]
        steps = (frames - 1) * hop
        if num_samples is not None and num_samples != steps:
            raise ValueError(
                f"{frames} mel frames describe {steps} samples at hop {hop}, not {num_samples}"
            )
    else:
        if mel is not None:
            raise ValueError("this model is unconditional: it takes no mel spectrogram")
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError("an unconditional model needs an integer num_samples > 0")
        if batch <= 0:
            raise ValueError("batch must be positive")
        if speaker is not None:
            batch = speaker.shape[0]
        steps = num_samples
        frames = -(-steps // hop) + 1
    if speaker is not None and speaker.shape[0] != batch:
        raise ValueError(f"speaker has batch {speaker.shape[0]}, the mel has {batch}")
    features = upsampler(mel, speaker, frames)
    lpc = None
    if source_filter is not None:
        assert mel is not None
        lpc = linear_prediction(
            mel,
            front_end.config,
            source_filter,
            front_end.filterbank,
            front_end.window,
            with_impulse=model.with_impulse,
        )
    source, lag, pulses, voicing = None, None, None, None
    if pitch is not None:
        assert mel is not None
        rate = front_end.config.sample_rate
        track = estimate_pitch(mel, front_end.config, pitch, front_end.filterbank)
        periodic = periodic_source(track, hop, steps, rate, pitch)
        source, pulses, voicing = periodic.channels, periodic.pulses, periodic.voicing
        minimum = 2.0 + pitch.lag_taps // 2
        lag = pitch_lag(track, hop, steps, rate, minimum) if pitch.lag_input else None
    prior = None
    if model.prior is not None:
        assert mel is not None
        prior = model.prior(mel)[:, :steps]  # (B, T): h from the whole mel
        # every WaveNet reads h as a per-sample source channel too
        channel = prior[:, None].to(features.dtype if features is not None else prior.dtype)
        source = channel if source is None else torch.cat([source, channel], dim=1)
    return Context(
        batch=batch,
        num_samples=steps,
        hop=hop,
        frames=features,
        lpc=lpc,
        source=source,
        lag=lag,
        pulses=pulses,
        voicing=voicing,
        prior=prior,
    )


def conditioning_channels(
    upsampler: Upsampler, pitch: PitchConfig | None, prior: bool
) -> tuple[int, int]:
    """Conditioning channels of a WaveNet: frame-rate features, and per-sample source channels
    (the pitch source and the prior's waveform)."""
    per_sample = (source_channels(pitch) if pitch is not None else 0) + int(prior)
    return upsampler.out_channels, per_sample


class ConditionedModel(nn.Module):
    """What the teacher and the student share: the mel front end, the frame upsampler, pitch,
    linear prediction, the context of a batch and its noise.

    Args:
        config: the model's config (its upsampler, source filter, pitch, speakers).
        mel: the front end whose features condition the model.
    """

    with_impulse = False  # whether contexts carry the synthesis filter's impulse response

    def __init__(self, config: TeacherConfig | StudentConfig, mel: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.mel_config = mel
        self.front_end = MelFrontEnd(mel)
        n_mels = mel.n_mels if config.conditional else 0
        self.upsampler = Upsampler(config.upsampler, n_mels, config.n_speakers)
        self.pitch = config.pitch if config.pitch.enabled else None
        self.prior = MelInversionPrior(config.prior, mel) if config.prior.enabled else None

    def conditioning_channels(self) -> tuple[int, int]:
        """Frame-rate and per-sample conditioning channels of this model's WaveNets."""
        return conditioning_channels(self.upsampler, self.pitch, self.prior is not None)

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
        return make_context(self, mel, num_samples, speaker, batch)

    def noise_for(
        self,
        context: Context,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """``noise`` checked against ``context``, or standard normal noise times
        ``temperature`` drawn with ``generator``: ``(B, T)``."""
        if noise is None:
            if temperature < 0:
                raise ValueError("temperature must be >= 0")
            param = next(self.parameters())
            shape = (context.batch, context.num_samples)
            drawn = torch.randn(shape, generator=generator, dtype=param.dtype, device=param.device)
            return drawn * temperature
        if noise.shape != (context.batch, context.num_samples):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, expected "
                f"({context.batch}, {context.num_samples})"
            )
        check_finite("noise", noise)
        return noise

    def draw_noise(
        self, context: Context, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Fresh noise ``(B, T)`` at ``temperature``."""
        return self.noise_for(context, temperature, generator)

"""Conditioning shared by teacher and student: the learned upsampler and the per-batch context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.config import PitchConfig, SourceFilterConfig, UpsamplerConfig
from models.lpc import LinearPrediction, linear_prediction
from models.mel import MelFrontEnd
from models.pitch import estimate_pitch, periodic_source, pitch_lag, source_channels


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
    """

    batch: int
    num_samples: int
    hop: int
    frames: Tensor | None = None
    lpc: LinearPrediction | None = None
    source: Tensor | None = None
    lag: Tensor | None = None
    pulses: Tensor | None = None
    voicing: Tensor | None = None


def interpolate_frames(frames: Tensor, t0: int, t1: int, hop: int) -> Tensor:
    """Frame-rate ``(B, C, M)`` -> per-sample ``(B, C, t1 - t0)``, linear between frame centres.

    Sample ``t`` sits at fractional frame ``t / hop``; frames past the last one repeat it.
    """
    if t1 <= t0:
        return frames.new_zeros(*frames.shape[:2], 0)
    first, last = t0 // hop, (t1 - 1) // hop
    blocks = last - first + 1
    index = torch.arange(first, first + blocks + 1, device=frames.device).clamp_max(
        frames.shape[-1] - 1
    )
    knots = frames.index_select(2, index)  # (B, C, blocks + 1)
    weight = torch.arange(hop, dtype=frames.dtype, device=frames.device) / hop
    dense = torch.lerp(knots[..., :-1, None], knots[..., 1:, None], weight)  # (B, C, n, hop)
    dense = dense.reshape(*frames.shape[:2], blocks * hop)
    return dense[..., t0 - first * hop : t1 - first * hop]


def make_context(
    front_end: MelFrontEnd,
    upsampler: Upsampler,
    source_filter: SourceFilterConfig | None,
    pitch: PitchConfig | None,
    mel: Tensor | None,
    num_samples: int | None,
    speaker: Tensor | None,
    batch: int,
    with_impulse: bool,
) -> Context:
    """Validate the conditioning inputs of one batch and derive everything the flows need.

    A conditional model takes ``mel`` ``(B, n_mels, M)`` and describes ``(M - 1) * hop``
    samples (between the first and last frame centres). An unconditional one takes
    ``num_samples`` and ``batch`` (or the batch of ``speaker``).
    """
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
            with_impulse=with_impulse,
        )
    source, lag = None, None
    if pitch is not None:
        assert mel is not None
        rate = front_end.config.sample_rate
        track = estimate_pitch(mel, front_end.config, pitch, front_end.filterbank)
        source = periodic_source(track, hop, steps, rate, pitch)
        minimum = 2.0 + pitch.lag_taps // 2
        lag = pitch_lag(track, hop, steps, rate, minimum) if pitch.lag_input else None
    return Context(
        batch=batch,
        num_samples=steps,
        hop=hop,
        frames=features,
        lpc=lpc,
        source=None if source is None else source.channels,
        lag=lag,
        pulses=None if source is None else source.pulses,
        voicing=None if source is None else source.voicing,
    )


def conditioning_channels(upsampler: Upsampler, pitch: PitchConfig | None) -> int:
    """Per-sample conditioning channels: upsampler features plus pitch source channels."""
    return upsampler.out_channels + (source_channels(pitch) if pitch is not None else 0)


def sample_conditioning(context: Context, t0: int, t1: int) -> Tensor | None:
    """Per-sample conditioning ``(B, C, t1 - t0)``: interpolated frames and the pitch source."""
    parts = []
    if context.frames is not None:
        parts.append(interpolate_frames(context.frames, t0, t1, context.hop))
    if context.source is not None:
        parts.append(context.source[..., t0:t1])
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

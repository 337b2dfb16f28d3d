"""The one vocoder entry point: a bundle, ready to resynthesise, vocode and generate.

    import distilwave
    vocoder = distilwave.load("runs/cpu-8k/bundle")
    audio = vocoder.resynthesize(waveform, sample_rate)      # any rate, mono or (C, T)
    audio = vocoder.vocode(mel)                              # (n_mels, M) -> M x hop samples
    audio = vocoder.generate(2.0)                            # unconditional bundles

The CLI, the HTTP service, the benchmarks and the evaluation all go through this class, so a
clip gets the same audio everywhere for the same seed and temperature. Audio is brought to the
bundle's audio convention (the loudness and peak its training data had) before its mel is
computed, and the output is scaled back to the input's level. Requests can also be prepared
one by one (``request``) and generated together (``run``): each clip's samples are then those it
would get alone (the batch is padded per clip and every flow is causal).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from torch import Tensor

from models.audio import normalize_loudness
from models.bundle import Bundle, load_bundle
from models.conditioning import Context
from models.config import AudioConvention
from models.inference import DEFAULT_CHUNK, InferenceStudent

MAX_SEED = 2**32 - 1


@dataclass
class Prepared:
    """One request, ready to generate: its context and noise, how many samples to return and
    the gain its input was scaled by (undone on the way out)."""

    context: Context
    noise: Tensor  # (1, T)
    length: int
    gain: float = 1.0
    seed: int = 0

    @property
    def samples(self) -> int:
        """Samples generated before trimming (whole hops)."""
        return self.context.num_samples


def to_mono(waveform: np.ndarray | Tensor) -> np.ndarray:
    """``(T,)`` or ``(channels, T)`` audio -> mono float32 ``(T,)`` (the mean of the channels)."""
    array = waveform.detach().cpu().numpy() if isinstance(waveform, Tensor) else waveform
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=0)
    if array.ndim != 1:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got {array.shape}")
    return array


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality), float32."""
    if source_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {source_rate}")
    if source_rate == target_rate:
        return np.ascontiguousarray(waveform, dtype=np.float32)
    return np.asarray(soxr.resample(waveform, source_rate, target_rate, "HQ"), dtype=np.float32)


class Vocoder:
    """A loaded bundle's student behind resynthesize / vocode / generate.

    Args:
        bundle: the loaded bundle.
        exact: run the student module itself instead of the fast CPU path. With oneDNN off
            (``torch.backends.mkldnn.enabled = False``) its audio is bit-identical batched or
            alone, streamed or whole; the fast path agrees with it within float rounding (at
            most one 16-bit step) and is about 2.5x faster on CPU.
        chunk: rows per internal piece of the fast path.
    """

    def __init__(self, bundle: Bundle, exact: bool = False, chunk: int = DEFAULT_CHUNK) -> None:
        self.bundle = bundle
        self.student = bundle.student.eval()
        self.exact = exact
        self.fast = None if exact else InferenceStudent(self.student, chunk)

    # ------------------------------------------------------------------- what it is
    @property
    def sample_rate(self) -> int:
        return self.bundle.sample_rate

    @property
    def hop_length(self) -> int:
        return self.bundle.hop_length

    @property
    def n_mels(self) -> int:
        return self.bundle.mel.n_mels

    @property
    def conditional(self) -> bool:
        return self.bundle.config.conditional

    @property
    def speakers(self) -> list[str]:
        return self.bundle.speakers

    @property
    def n_speakers(self) -> int:
        return self.bundle.config.n_speakers

    @property
    def default_temperature(self) -> float:
        return self.bundle.default_temperature

    @property
    def audio(self) -> AudioConvention:
        return self.bundle.audio

    @property
    def min_samples(self) -> int:
        """The shortest input the front end takes (more than half its FFT)."""
        return self.bundle.mel.n_fft // 2 + 1

    # ------------------------------------------------------------------- preparing requests
    def speaker_id(self, speaker: int | str | None) -> int | None:
        """A speaker id from an id or a name (``ValueError`` for what this bundle lacks)."""
        count = self.n_speakers
        if count == 0:
            if speaker is not None:
                raise ValueError("this model has a single speaker: omit speaker")
            return None
        names = self.speakers
        described = f"ids 0..{count - 1}" + (f" or names {names}" if names else "")
        if speaker is None:
            raise ValueError(f"this model has {count} speakers: pass speaker ({described})")
        if isinstance(speaker, str):
            if speaker in names:
                return names.index(speaker)
            if not (speaker.isascii() and speaker.isdigit()):
                raise ValueError(f"unknown speaker {speaker!r}; use {described}")
            speaker = int(speaker)
        if isinstance(speaker, bool) or not 0 <= speaker < count:
            raise ValueError(f"speaker {speaker} out of range; use {described}")
        return speaker

    def features(self, waveform: np.ndarray | Tensor) -> tuple[Tensor, int, float]:
        """Mono audio ``(T,)`` at the bundle's rate -> its normalised log-mel ``(1, n_mels, M)``
        at the bundle's loudness, the input length, and the gain applied.

        The audio is scaled to the convention, then zero-padded to whole hops (and past half
        the FFT), so ``M - 1`` hops cover it."""
        audio = torch.from_numpy(to_mono(waveform))
        if audio.numel() == 0:
            raise ValueError("the audio holds no samples")
        if not bool(torch.isfinite(audio).all()):
            raise ValueError("the audio contains NaN or infinite samples")
        with torch.inference_mode():
            scaled, gain = normalize_loudness(
                audio, self.sample_rate, self.audio.loudness_lufs, self.audio.peak_limit
            )
            hop = self.hop_length
            blocks = max(-(-audio.numel() // hop), -(-self.min_samples // hop))
            padded = F.pad(scaled, (0, blocks * hop - audio.numel()))
            mel = self.student.front_end(padded[None].to(self._dtype))
        return mel, int(audio.numel()), float(gain)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.student.parameters()).dtype

    def request(
        self,
        *,
        mel: np.ndarray | Tensor | None = None,
        waveform: np.ndarray | Tensor | None = None,
        num_samples: int | None = None,
        speaker: int | str | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> Prepared:
        """Prepare one request (exactly one of ``mel``, ``waveform``, ``num_samples``).

        Args:
            mel: ``(n_mels, M)`` normalised log-mel of the bundle's front end: ``M x hop``
                samples (the last frame is repeated once, so frame ``i`` is centred on sample
                ``i x hop``).
            waveform: mono audio at the bundle's rate: the same length back, at its level.
            num_samples: samples to generate (unconditional bundles).
            speaker: id or name (multi-speaker bundles).
            temperature: noise scale (the bundle's default if None).
            seed: seeds this request's noise (random if None; ``Prepared.seed`` says which).
        """
        if sum(x is not None for x in (mel, waveform, num_samples)) != 1:
            raise ValueError("give exactly one of mel, waveform or num_samples")
        speaker_id = self.speaker_id(speaker)
        speakers = None if speaker_id is None else torch.tensor([speaker_id])
        temperature = self.default_temperature if temperature is None else float(temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else int(seed)
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must lie in [0, {MAX_SEED}]")
        gain, length = 1.0, 0
        with torch.inference_mode():
            if num_samples is not None:
                if self.conditional:
                    raise ValueError("this model is conditioned on a mel: give mel or audio")
                if isinstance(num_samples, bool) or int(num_samples) <= 0:
                    raise ValueError("num_samples must be a positive integer")
                length = int(num_samples)
                hops = -(-length // self.hop_length) * self.hop_length  # whole hops
                context = self.student.context(num_samples=hops, speaker=speakers, batch=1)
            else:
                if not self.conditional:
                    raise ValueError("this model is unconditional: give num_samples")
                if waveform is not None:
                    features, length, gain = self.features(waveform)
                else:
                    features = self._check_mel(mel)
                    length = features.shape[-1] * self.hop_length
                    features = torch.cat([features, features[..., -1:]], dim=-1)
                context = self.student.context(mel=features, speaker=speakers)
            generator = torch.Generator().manual_seed(seed)
            noise = self.student.noise_for(context, temperature, generator)
        return Prepared(context, noise, length, gain, seed)

    def _check_mel(self, mel: np.ndarray | Tensor | None) -> Tensor:
        features = torch.as_tensor(np.asarray(mel) if not isinstance(mel, Tensor) else mel)
        if features.dim() != 2 or features.shape[0] != self.n_mels:
            raise ValueError(
                f"mel must be ({self.n_mels}, frames), got shape {tuple(features.shape)}"
            )
        if not features.is_floating_point():
            features = features.to(torch.float64)  # range-checked as numbers, not as int bits
        if features.shape[1] < 1:
            raise ValueError("mel has no frames")
        return features.to(self._dtype)[None]

    # ------------------------------------------------------------------- generating
    def _generate(self, context: Context, noise: Tensor) -> Tensor:
        if self.fast is not None:
            return self.fast.generate(context, noise)
        return self.student.generate(context, noise=noise)

    def run(self, requests: list[Prepared]) -> list[np.ndarray]:
        """Generate prepared requests in one batch; each clip ``(length,)`` float32, as alone."""
        if not requests:
            return []
        with torch.inference_mode():
            if len(requests) == 1:
                context, noise = requests[0].context, requests[0].noise
            else:
                context = Context.stack([r.context for r in requests])
                length = max(r.noise.shape[1] for r in requests)
                noise = torch.cat(
                    [F.pad(r.noise, (0, length - r.noise.shape[1])) for r in requests]
                )
            output = self._generate(context, noise)
        return [
            (output[i, : r.length].float().cpu().numpy() / r.gain).astype(np.float32)
            for i, r in enumerate(requests)
        ]

    def stream(self, request: Prepared, chunk: int) -> Iterator[np.ndarray]:
        """One request chunk by chunk (``chunk`` samples each, the last shorter); the chunks
        concatenate to ``run([request])[0]``."""
        runner = self.fast if self.fast is not None else self.student
        remaining = request.length
        with torch.inference_mode():
            for part in runner.stream(request.context, request.noise, chunk):
                kept = part[0, : max(remaining, 0)]
                remaining -= kept.shape[0]
                if kept.shape[0]:
                    yield (kept.float().cpu().numpy() / request.gain).astype(np.float32)

    # ------------------------------------------------------------------- the user API
    def resynthesize(
        self,
        waveform: np.ndarray | Tensor,
        sample_rate: int,
        temperature: float | None = None,
        seed: int | None = None,
        speaker: int | str | None = None,
    ) -> np.ndarray:
        """Audio (``(T,)`` or ``(channels, T)``, any rate) through the model: its mel at the
        bundle's rate and loudness, vocoded; the same length (at the bundle's rate) and level."""
        mono = resample(to_mono(waveform), int(sample_rate), self.sample_rate)
        request = self.request(waveform=mono, temperature=temperature, seed=seed, speaker=speaker)
        return self.run([request])[0]

    def vocode(
        self,
        mel: np.ndarray | Tensor,
        temperature: float | None = None,
        seed: int | None = None,
        speaker: int | str | None = None,
    ) -> np.ndarray:
        """A normalised log-mel ``(n_mels, M)`` of the bundle's front end -> ``M x hop`` samples."""
        request = self.request(mel=mel, temperature=temperature, seed=seed, speaker=speaker)
        return self.run([request])[0]

    def mel(self, waveform: np.ndarray | Tensor, sample_rate: int) -> np.ndarray:
        """The bundle's normalised log-mel ``(n_mels, M)`` of audio at any rate (at the bundle's
        loudness): what ``vocode`` takes."""
        mono = resample(to_mono(waveform), int(sample_rate), self.sample_rate)
        features, _, _ = self.features(mono)
        return features[0, :, :-1].float().cpu().numpy()

    def generate(
        self,
        seconds: float,
        temperature: float | None = None,
        seed: int | None = None,
        speaker: int | str | None = None,
    ) -> np.ndarray:
        """``seconds`` of audio from an unconditional bundle."""
        samples = int(math.floor(seconds * self.sample_rate + 0.5))
        request = self.request(
            num_samples=samples, temperature=temperature, seed=seed, speaker=speaker
        )
        return self.run([request])[0]


def load(path: str | Path, device: str | torch.device = "cpu", exact: bool = False) -> Vocoder:
    """Load a bundle directory (``distilwave export`` writes one) as a ``Vocoder``."""
    return Vocoder(load_bundle(path, device), exact=exact)

"""One recording in, one training utterance out (or a reason to skip it).

decode (soundfile, librosa/audioread as a fallback) -> finite check -> mix to mono ->
resample (soxr through librosa) -> silence check -> trim leading/trailing silence ->
crop to a multiple of hop -> length check -> BS.1770 loudness normalisation (``models.audio``)
-> int16 -> log-mel of ``from_int16(audio)`` by the one front end (``models.mel``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import soundfile
import torch

from models.audio import from_int16, normalize_loudness, to_int16
from models.config import MelConfig
from models.mel import MelFrontEnd
from training.config import Preset
from training.data.sources import SourceItem

logger = logging.getLogger(__name__)

PROCESS_VERSION = 1  # bump when the processing below changes what it writes
SILENCE_PEAK_DBFS = -60.0  # a whole file whose peak is below this is silence
TRIM_FRAME_SECONDS = 0.025
RESAMPLER = "soxr_hq"


@dataclass(frozen=True)
class ProcessSettings:
    """What turns a recording into a training utterance (from the preset).

    ``min_samples`` decides only what is kept, so it is not part of the fingerprint: a
    change of segment length re-uses every processed utterance.
    """

    mel: MelConfig
    trim_top_db: float
    loudness_lufs: float
    peak_limit: float
    min_samples: int

    @classmethod
    def from_preset(cls, preset: Preset) -> ProcessSettings:
        mel, data = preset.mel, preset.data
        min_samples = max(
            data.segment_samples,
            math.ceil(data.min_seconds * mel.sample_rate),
            mel.n_fft // 2 + 1,
            mel.hop_length,
        )
        return cls(mel, data.trim_top_db, data.loudness_lufs, data.peak_limit, min_samples)

    @property
    def fingerprint(self) -> str:
        """A digest of every setting that changes the stored audio or features."""
        payload = {
            "version": PROCESS_VERSION,
            "mel": self.mel.model_dump(mode="json"),
            "trim_top_db": self.trim_top_db,
            "loudness_lufs": self.loudness_lufs,
            "peak_limit": self.peak_limit,
            "resampler": RESAMPLER,
        }
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class SkipFile(Exception):
    """A recording that cannot become training data; ``kind`` is a short category."""

    def __init__(self, kind: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.extra = extra


@dataclass
class Processed:
    """A kept utterance: its manifest row, int16 audio ``(T,)``, float32 mel ``(n_mels, F)``."""

    row: dict[str, Any]
    audio: np.ndarray
    mel: np.ndarray


@dataclass
class Skipped:
    """A recording passed over, as a report record (``id, path, kind, reason, ...``)."""

    record: dict[str, Any]


def read_file(path: str) -> bytes:
    """The raw bytes of a source file (one read serves the checksum and the decoder)."""
    return Path(path).read_bytes()


def decode(data: bytes, path: str) -> tuple[np.ndarray, int]:
    """Decode audio bytes by content (not by extension).

    Returns:
        float32 samples ``(C, T)`` and the sample rate.
    """
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as handle:
            samples = handle.read(dtype="float32", always_2d=True)  # (T, C)
            return np.ascontiguousarray(samples.T), int(handle.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        first_error = exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            samples, rate = librosa.load(path, sr=None, mono=False, dtype=np.float32)
    except Exception as exc:  # audioread backends raise assorted types; all mean "cannot decode"
        message = str(first_error).split("\n")[0] or type(exc).__name__
        reason = f"not audio that soundfile or librosa decode ({message})"
        raise SkipFile("undecodable", reason) from None
    return np.atleast_2d(samples), int(rate)


def trim_silence(waveform: np.ndarray, sample_rate: int, top_db: float) -> tuple[np.ndarray, int]:
    """Drop leading and trailing audio quieter than ``top_db`` below the loudest frame.

    Returns:
        The trimmed ``(T',)`` waveform and the index of its first sample in the input.
    """
    frame = max(16, round(TRIM_FRAME_SECONDS * sample_rate))
    trimmed, (start, _end) = librosa.effects.trim(
        waveform, top_db=top_db, frame_length=frame, hop_length=max(1, frame // 4)
    )
    return trimmed, int(start)


class Processor:
    """Turns source files into utterances; one per process (it owns a front end)."""

    def __init__(self, settings: ProcessSettings) -> None:
        self.settings = settings
        self.front_end = MelFrontEnd(settings.mel)

    def __call__(self, item: SourceItem) -> Processed | Skipped:
        """Process one file; every failure becomes a ``Skipped`` record, never an exception."""
        base = {
            "id": item.id,
            "path": item.path,
            "speaker": item.speaker,
            "fingerprint": self.settings.fingerprint,
        }
        try:
            return self._process(item, base)
        except SkipFile as skip:
            return Skipped({**base, "kind": skip.kind, "reason": skip.reason, **skip.extra})
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc.strerror or exc}"
            return Skipped({**base, "kind": "unreadable", "reason": reason})
        except Exception as exc:  # the run must never die half-way on one bad file
            logger.debug("unexpected error on %s", item.path, exc_info=True)
            reason = f"unexpected {type(exc).__name__}: {exc}"
            return Skipped({**base, "kind": "error", "reason": reason})

    def _process(self, item: SourceItem, base: dict[str, Any]) -> Processed:
        settings, mel_config = self.settings, self.settings.mel
        rate, hop = mel_config.sample_rate, mel_config.hop_length
        data = read_file(item.path)
        base["checksum"] = hashlib.sha256(data).hexdigest()
        if not data:
            raise SkipFile("empty", "empty file (0 bytes)")
        channels, source_rate = decode(data, item.path)
        if channels.shape[-1] == 0:
            raise SkipFile("no_samples", "decodes to zero samples")
        if not np.isfinite(channels).all():
            raise SkipFile("non_finite", "NaN or infinite samples after decoding")
        waveform = channels.mean(axis=0)  # (C, T) -> (T,)
        if source_rate != rate:
            waveform = librosa.resample(
                waveform, orig_sr=source_rate, target_sr=rate, res_type=RESAMPLER
            )
        peak = float(np.abs(waveform).max())
        if peak <= 10.0 ** (SILENCE_PEAK_DBFS / 20.0):
            level = f"{20 * math.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
            raise SkipFile("silent", f"silence (peak {level})")
        trimmed, start = trim_silence(waveform, rate, settings.trim_top_db)
        num_samples = trimmed.shape[-1] // hop * hop
        if num_samples < settings.min_samples:
            reason = too_short_reason(num_samples, settings.min_samples, rate)
            raise SkipFile("too_short", reason, num_samples=num_samples)
        trimmed = np.ascontiguousarray(trimmed[:num_samples], dtype=np.float32)
        scaled, gain = normalize_loudness(
            torch.from_numpy(trimmed), rate, settings.loudness_lufs, settings.peak_limit
        )
        audio = to_int16(scaled)
        with torch.inference_mode():
            mel = self.front_end(from_int16(audio))[0]  # (1, n_mels, F) -> (n_mels, F)
        row = {
            **base,
            "duration": num_samples / rate,
            "num_samples": num_samples,
            "num_frames": int(mel.shape[-1]),
            "source_sample_rate": source_rate,
            "source_channels": int(channels.shape[0]),
            "source_seconds": channels.shape[-1] / source_rate,
            "trim_start_seconds": start / rate,
            "gain_db": 20.0 * math.log10(gain) if gain > 0 else 0.0,
        }
        return Processed(row, audio.numpy(), mel.numpy())


def too_short_reason(num_samples: int, min_samples: int, sample_rate: int) -> str:
    return (
        f"too short: {num_samples / sample_rate:.3f} s after trimming, "
        f"needs {min_samples / sample_rate:.3f} s (one segment)"
    )


_WORKER: Processor | None = None


def init_worker(settings: ProcessSettings) -> None:
    """ProcessPoolExecutor initializer: one front end and one thread per worker process."""
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = Processor(settings)


def process_in_worker(item: SourceItem) -> Processed | Skipped:
    if _WORKER is None:
        raise RuntimeError("init_worker was not called in this process")
    return _WORKER(item)

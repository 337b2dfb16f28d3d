"""Audio in and out of the service: encoding responses, decoding uploads, reading mels.

Responses are 16-bit mono at the bundle's rate: ``wav`` (RIFF/WAVE PCM), ``flac``, or
``pcm`` (raw signed 16-bit little-endian, no header). A streamed WAV starts with a header
whose RIFF and data sizes are ``0xFFFFFFFF`` (unknown), the convention ffmpeg and sox read.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import struct
import tempfile
import warnings
from dataclasses import dataclass

import librosa
import numpy as np
import soundfile
import torch

from models.audio import to_int16
from service.errors import invalid, too_large

logger = logging.getLogger(__name__)

CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm"}
UNKNOWN_SIZE = 0xFFFFFFFF


def pcm16(waveform: np.ndarray) -> bytes:
    """``(T,)`` float in [-1, 1] -> signed 16-bit little-endian bytes (rounded, clipped;
    a non-finite sample, which a whole clip never returns, becomes silence or full scale)."""
    finite = np.nan_to_num(np.asarray(waveform, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    samples = to_int16(torch.from_numpy(np.ascontiguousarray(finite)))
    return samples.numpy().astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM16 mono WAV header; ``data_bytes=None`` writes the streaming sizes."""
    if data_bytes is None:
        riff_size = data_size = UNKNOWN_SIZE
    else:
        riff_size, data_size = 36 + data_bytes, data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


def encode(waveform: np.ndarray, sample_rate: int, response_format: str) -> bytes:
    """A whole clip ``(T,)`` as the bytes of ``response_format``."""
    data = pcm16(waveform)
    if response_format == "pcm":
        return data
    if response_format == "wav":
        return wav_header(sample_rate, len(data)) + data
    if response_format == "flac":
        buffer = io.BytesIO()
        samples = np.frombuffer(data, dtype="<i2")
        soundfile.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
        return buffer.getvalue()
    raise ValueError(f"unknown response format {response_format!r}")


@dataclass
class DecodedAudio:
    """An upload decoded to mono float32 at the bundle's rate."""

    waveform: np.ndarray  # (T,)
    source_rate: int
    source_channels: int


def decode_upload(data: bytes, sample_rate: int, max_seconds: float) -> DecodedAudio:
    """Decode any soundfile-readable (else librosa-readable) file, mix to mono, resample.

    Raises:
        APIError: 422 if empty or undecodable, 413 if longer than ``max_seconds``.
    """
    if not data:
        raise invalid("the uploaded file is empty", "file", "empty_audio")
    try:
        info = soundfile.info(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        info = None
    if info is not None and info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
        raise _too_long(info.frames / info.samplerate, max_seconds)
    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        channels = audio.shape[1]
        mono = audio.mean(axis=1)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        mono, rate, channels = _decode_with_librosa(data)
    if mono.size == 0:
        raise invalid("the uploaded file holds no audio samples", "file", "empty_audio")
    if mono.size / rate > max_seconds:
        raise _too_long(mono.size / rate, max_seconds)
    if not np.isfinite(mono).all():
        raise invalid("the uploaded audio contains NaN or infinite samples", "file", "non_finite")
    if rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return DecodedAudio(np.ascontiguousarray(mono, dtype=np.float32), int(rate), int(channels))


def _too_long(seconds: float, limit: float) -> Exception:
    return too_large(
        f"the upload is {seconds:.1f} s long; this server accepts at most {limit:g} s",
        "file",
        "audio_too_long",
    )


def _decode_with_librosa(data: bytes) -> tuple[np.ndarray, int, int]:
    with tempfile.NamedTemporaryFile(suffix=".audio") as handle:
        handle.write(data)
        handle.flush()
        try:
            with warnings.catch_warnings():  # librosa warns on every fallback to audioread
                warnings.simplefilter("ignore")
                audio, rate = librosa.load(handle.name, sr=None, mono=False)
        except Exception as exc:  # audioread raises many unrelated types
            logger.info("undecodable upload: %s", exc)
            raise invalid(
                "could not decode the uploaded file as audio (WAV, FLAC, OGG, MP3, AIFF ...)",
                "file",
                "undecodable_audio",
            ) from exc
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))  # (C, T)
    return audio.mean(axis=0), int(rate), audio.shape[0]


def mel_from_base64(text: str) -> np.ndarray:
    """Base64 of a ``.npy`` (frames x bands, real numbers) -> the array, unchecked."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid("mel is neither a list of frames nor valid base64", "mel") from exc
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise invalid("mel: base64 does not hold a .npy array", "mel", "invalid_npy") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise invalid("mel: the .npy array must hold real numbers (float32)", "mel", "invalid_npy")
    return array


def check_mel(mel: np.ndarray, n_mels: int, max_frames: int, max_magnitude: float) -> np.ndarray:
    """Validate a user's ``(frames, n_mels)`` mel and return it as float32.

    Raises:
        APIError: 422 for a wrong shape, too few frames or non-finite / out-of-range values,
            413 for more than ``max_frames`` frames.
    """
    if mel.ndim != 2 or mel.shape[1] != n_mels:
        hint = ""
        if mel.ndim == 2 and mel.shape[0] == n_mels:
            hint = " (it looks transposed: send frames x bands)"
        raise invalid(
            f"mel must be frames x {n_mels} bands, got shape {tuple(mel.shape)}{hint}",
            "mel",
            "mel_bands",
        )
    if mel.shape[0] < 1:
        raise invalid("mel has no frames", "mel", "empty_mel")
    if mel.shape[0] > max_frames:
        raise too_large(
            f"mel has {mel.shape[0]} frames; this server accepts at most {max_frames}",
            "mel",
            "too_many_frames",
        )
    if not np.isfinite(mel).all():
        raise invalid("mel contains NaN or infinite values", "mel", "non_finite")
    peak = float(np.abs(mel).max())
    if peak > max_magnitude:
        raise invalid(
            f"mel values reach {peak:g}; normalised log-mel features lie within "
            f"±{max_magnitude:g} (see GET /v1/models for the front end)",
            "mel",
            "mel_range",
        )
    return np.ascontiguousarray(mel, dtype=np.float32)


def samples_for(duration_s: float, sample_rate: int) -> int:
    """Samples in ``duration_s`` seconds, rounded to the nearest sample."""
    return int(math.floor(duration_s * sample_rate + 0.5))

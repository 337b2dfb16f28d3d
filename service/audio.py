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
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr
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


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may decode to: seconds, samples (frames x channels) and sample rate."""

    seconds: float
    samples: int
    rate: int


BLOCK_SAMPLES = 2**16  # decoded samples (frames x channels) per block
UNKNOWN_FRAMES = 2**62  # libsndfile's frame count for a stream of unknown length is larger


def decode_upload(data: bytes, sample_rate: int, limits: UploadLimits) -> DecodedAudio:
    """Decode any soundfile-readable file (WAV, FLAC, OGG, MP3, AIFF ...) in bounded blocks,
    mixing to mono and resampling to ``sample_rate`` as it goes.

    The header's frames, channels and rate are checked against ``limits`` before anything is
    decoded, and the frames are counted again while decoding (a header may lie).

    Raises:
        APIError: 422 if empty, undecodable, non-finite or with an unusable sample rate; 413
            if longer than ``limits.seconds`` or larger than ``limits.samples``.
    """
    if not data:
        raise invalid("the uploaded file is empty", "file", "empty_audio")
    try:
        handle = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        logger.info("undecodable upload: %s", exc)
        raise _undecodable() from exc
    with handle:
        rate, channels = int(handle.samplerate), int(handle.channels)
        if not 1 <= rate <= limits.rate:
            raise invalid(
                f"the upload's sample rate {rate} Hz is outside 1..{limits.rate} Hz",
                "file",
                "invalid_sample_rate",
            )
        if channels < 1:
            raise invalid("the upload has no channels", "file", "undecodable_audio")
        if int(handle.frames) < UNKNOWN_FRAMES:
            _check_size(int(handle.frames), channels, rate, limits)
        block = max(1, BLOCK_SAMPLES // channels)
        resampler = (
            None
            if rate == sample_rate
            else soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
        )
        parts: list[np.ndarray] = []
        frames = 0
        try:
            while True:
                audio = handle.read(block, dtype="float32", always_2d=True)  # (frames, C)
                if audio.shape[0] == 0:
                    break
                frames += audio.shape[0]
                _check_size(frames, channels, rate, limits)
                mono = audio.mean(axis=1) if channels > 1 else audio[:, 0]
                if not np.isfinite(mono).all():
                    raise invalid(
                        "the uploaded audio contains NaN or infinite samples", "file", "non_finite"
                    )
                parts.append(mono if resampler is None else resampler.resample_chunk(mono))
        except soundfile.LibsndfileError as exc:
            logger.info("undecodable upload: %s", exc)
            raise _undecodable() from exc
        if resampler is not None:
            parts.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    if frames == 0:
        raise invalid("the uploaded file holds no audio samples", "file", "empty_audio")
    waveform = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return DecodedAudio(np.ascontiguousarray(waveform, dtype=np.float32), rate, channels)


def _check_size(frames: int, channels: int, rate: int, limits: UploadLimits) -> None:
    seconds = frames / rate
    if seconds > limits.seconds:
        raise too_large(
            f"the upload is {seconds:.1f} s long; this server accepts at most {limits.seconds:g} s",
            "file",
            "audio_too_long",
        )
    if frames * channels > limits.samples:
        raise too_large(
            f"the upload decodes to {frames * channels} samples ({channels} channels x "
            f"{frames} frames); this server accepts at most {limits.samples}",
            "file",
            "upload_too_large",
        )


def _undecodable() -> Exception:
    return invalid(
        "could not decode the uploaded file as audio (WAV, FLAC, OGG, MP3, AIFF ...)",
        "file",
        "undecodable_audio",
    )


def mel_from_base64(text: str, n_mels: int, max_frames: int) -> np.ndarray:
    """Base64 of a ``.npy`` (frames x bands, real numbers) -> the array, its shape checked.

    The header is read and the shape, type and size are checked before the data is touched,
    so a header claiming a huge shape costs nothing. Values are checked by ``check_mel``.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid("mel is neither a list of frames nor valid base64", "mel") from exc
    stream = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise invalid("mel: base64 does not hold a .npy array", "mel", "invalid_npy") from exc
    if dtype.hasobject or dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise invalid("mel: the .npy array must hold real numbers (float32)", "mel", "invalid_npy")
    _check_shape(tuple(shape), n_mels, max_frames)
    count = math.prod(shape)
    offset = stream.tell()
    if len(raw) - offset != count * dtype.itemsize:
        raise invalid(
            f"mel: the .npy data holds {len(raw) - offset} bytes, its header says "
            f"{count * dtype.itemsize}",
            "mel",
            "invalid_npy",
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def _check_shape(shape: tuple[int, ...], n_mels: int, max_frames: int) -> None:
    if len(shape) != 2 or shape[1] != n_mels:
        hint = ""
        if len(shape) == 2 and shape[0] == n_mels:
            hint = " (it looks transposed: send frames x bands)"
        raise invalid(
            f"mel must be frames x {n_mels} bands, got shape {shape}{hint}", "mel", "mel_bands"
        )
    if shape[0] < 1:
        raise invalid("mel has no frames", "mel", "empty_mel")
    if shape[0] > max_frames:
        raise too_large(
            f"mel has {shape[0]} frames; this server accepts at most {max_frames}",
            "mel",
            "too_many_frames",
        )


def check_mel(mel: np.ndarray, n_mels: int, max_frames: int, max_magnitude: float) -> np.ndarray:
    """Validate a user's ``(frames, n_mels)`` mel and return it as float32.

    Integer arrays are range-checked as numbers (converted first: ``abs`` of int8 -128 is
    -128).

    Raises:
        APIError: 422 for a wrong shape, too few frames or non-finite / out-of-range values,
            413 for more than ``max_frames`` frames.
    """
    _check_shape(tuple(mel.shape), n_mels, max_frames)
    values = mel if mel.dtype.kind == "f" else mel.astype(np.float64)
    if not np.isfinite(values).all():
        raise invalid("mel contains NaN or infinite values", "mel", "non_finite")
    peak = float(np.abs(values).max())
    if peak > max_magnitude:
        raise invalid(
            f"mel values reach {peak:g}; normalised log-mel features lie within "
            f"±{max_magnitude:g} (see GET /v1/models for the front end)",
            "mel",
            "mel_range",
        )
    return np.ascontiguousarray(values, dtype=np.float32)


def samples_for(duration_s: float, sample_rate: int) -> int:
    """Samples in ``duration_s`` seconds, rounded to the nearest sample."""
    return int(math.floor(duration_s * sample_rate + 0.5))

"""``distilwave generate``: offline generation from a bundle (the Python API's ``Vocoder``)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import soundfile as sf
import torch
import typer

from models.audio import to_int16
from models.errors import UserError


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Any soundfile-readable file (else what librosa/audioread decode) as ``(channels, T)``."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return samples.T, int(rate)
    except (RuntimeError, ValueError, TypeError) as soundfile_error:
        import librosa

        try:
            # librosa warns that it falls back to audioread: noise around a one-line error
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                samples, rate = librosa.load(str(path), sr=None, mono=False)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
            # audioread's own errors are often empty: libsndfile's message says more
            raise UserError(f"{path}: cannot decode audio ({soundfile_error})") from exc
        return np.atleast_2d(np.asarray(samples, dtype=np.float32)), int(rate)


def read_mel(path: Path, n_mels: int) -> np.ndarray:
    """A ``.npy`` mel, frames x bands or bands x frames -> ``(n_mels, M)``."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npy file ({exc})") from exc
    if array.ndim != 2:
        raise UserError(f"{path}: a mel must be 2-D (frames x {n_mels}), got shape {array.shape}")
    if array.shape[0] != n_mels and array.shape[1] == n_mels:
        array = array.T
    elif array.shape[0] != n_mels:
        raise UserError(f"{path}: no axis of length {n_mels} (mel bands) in shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def generate_command(
    bundle: Annotated[Path, typer.Option("--bundle", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="WAV file to write")],
    mel: Annotated[Path | None, typer.Option("--mel", exists=True, help="a .npy mel")] = None,
    audio: Annotated[
        Path | None, typer.Option("--audio", exists=True, help="an audio file to resynthesise")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option("--seconds", help="length (unconditional bundles)")
    ] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    speaker: Annotated[
        str | None, typer.Option("--speaker", help="speaker id or name (multi-speaker bundles)")
    ] = None,
) -> None:
    """Offline generation: bundle + (mel .npy | audio file | --seconds) -> WAV.

    An audio file is decoded, mixed to mono, resampled to the bundle's rate and brought to the
    loudness its training data had; the output has the input's length and level (as the
    service's resynthesize). A .npy mel (frames x bands or bands x frames) of the bundle's own
    normalised log-mel gives frames x hop samples (as the service's vocode).
    """
    from models.vocoder import load

    if out.is_dir() or out.suffix.lower() != ".wav":
        raise UserError(f"--out {out}: give a .wav file to write")
    if sum(x is not None for x in (mel, audio, seconds)) != 1:
        raise UserError("give exactly one of --mel, --audio or --seconds")
    try:
        vocoder = load(bundle)
    except ValueError as exc:  # a malformed bundle is bad input, not a crash
        raise UserError(str(exc)) from exc
    start = time.perf_counter()
    try:
        if audio is not None:
            samples, rate = read_audio(audio)
            result = vocoder.resynthesize(samples, rate, temperature, seed, speaker)
        elif mel is not None:
            result = vocoder.vocode(read_mel(mel, vocoder.n_mels), temperature, seed, speaker)
        else:
            assert seconds is not None
            if seconds <= 0:
                raise UserError("--seconds must be positive")
            result = vocoder.generate(seconds, temperature, seed, speaker)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    elapsed = time.perf_counter() - start
    rate = vocoder.sample_rate
    out.parent.mkdir(parents=True, exist_ok=True)
    # the service's 16-bit convention (round(x * 32768), clipped): the same samples as its WAV
    samples = to_int16(torch.from_numpy(np.ascontiguousarray(result))).numpy()
    sf.write(str(out), samples, rate, subtype="PCM_16")
    typer.echo(
        f"wrote {out}: {len(result) / rate:.2f} s at {rate} Hz in {elapsed:.2f} s "
        f"({len(result) / rate / max(elapsed, 1e-9):.1f}x real time)"
    )

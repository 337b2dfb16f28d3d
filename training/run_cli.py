"""``distilwave evaluate | export | generate | pipeline``."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Annotated

import librosa
import numpy as np
import soundfile as sf
import torch
import typer

from models.audio import normalize_loudness
from models.bundle import load_bundle
from training.config import load_preset
from training.errors import UserError
from training.train_cli import DataOption, DeviceOption, PresetOption, ResumeOption, SetOption


def evaluate_command(
    data: DataOption,
    teacher: Annotated[Path, typer.Option("--teacher", exists=True, help="teacher run or ckpt")],
    student: Annotated[Path, typer.Option("--student", exists=True, help="student run or ckpt")],
    out: Annotated[Path, typer.Option("--out", help="directory for eval.json, figures, audio")],
    preset: PresetOption = "cpu-8k",
    overrides: SetOption = None,
) -> None:
    """Evaluate teacher and student on the held-out test split, next to the baselines.

    Writes eval.json (teacher bits/sample vs an AR(32) predictor, student KL both ways,
    LSD / MR-STFT / MCD / PESQ / STOI of student, Griffin-Lim and an LPC noise vocoder,
    generation speeds), spectrogram figures and audio files.
    """
    from training.evaluate import evaluate
    from training.export import load_student
    from training.teacher_job import load_teacher

    config = load_preset(preset, overrides)
    cpu = torch.device("cpu")
    report = evaluate(config, data, load_teacher(teacher, cpu), load_student(student, cpu)[0], out)
    typer.echo(json.dumps({k: report[k] for k in ("teacher", "student", "resynthesis")}, indent=2))
    typer.echo(f"report: {out / 'eval.json'}")


def export_command(
    student: Annotated[Path, typer.Option("--student", exists=True, help="student run or ckpt")],
    out: Annotated[Path, typer.Option("--out", help="bundle directory to write")],
    data: Annotated[
        Path | None, typer.Option("--data", exists=True, help="prepared corpus (for the card)")
    ] = None,
    eval_json: Annotated[
        Path | None, typer.Option("--eval", exists=True, help="eval.json to put in the card")
    ] = None,
) -> None:
    """Export the trained student as a self-contained bundle (config, weights, model card)."""
    from training.export import export_bundle

    export_bundle(student, out, data, eval_json)
    typer.echo(f"bundle: {out}")


def _mel_from_file(path: Path, n_mels: int) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npy file ({exc})") from exc
    if array.ndim != 2:
        raise UserError(f"{path}: a mel must be 2-D (frames x {n_mels}), got shape {array.shape}")
    if array.shape[1] == n_mels:
        array = array.T
    elif array.shape[0] != n_mels:
        raise UserError(f"{path}: no axis of length {n_mels} (mel bands) in shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


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
    seed: Annotated[int, typer.Option("--seed")] = 0,
    speaker: Annotated[int | None, typer.Option("--speaker", min=0)] = None,
) -> None:
    """Offline generation: bundle + (mel .npy | audio file | --seconds) -> WAV.

    An audio file is decoded, mixed to mono, resampled to the bundle's rate and loudness-
    normalised like the training data; the output is scaled back to the input's level. A
    .npy mel is frames x bands (or bands x frames) of the bundle's own normalised log-mel.
    """
    if out.is_dir() or out.suffix.lower() != ".wav":
        raise UserError(f"--out {out}: give a .wav file to write")
    try:
        loaded = load_bundle(bundle)
    except ValueError as exc:  # a malformed bundle is bad input, not a crash
        raise UserError(str(exc)) from exc
    student, rate, hop = loaded.student, loaded.sample_rate, loaded.hop_length
    if sum(x is not None for x in (mel, audio, seconds)) != 1:
        raise UserError("give exactly one of --mel, --audio or --seconds")
    tau = loaded.default_temperature if temperature is None else temperature
    speaker_ids = torch.tensor([speaker]) if speaker is not None else None
    gain, length = 1.0, None
    if audio is not None:
        try:
            samples, source_rate = sf.read(str(audio), dtype="float32", always_2d=True)
            samples = samples.mean(axis=1)
        except RuntimeError as soundfile_error:
            try:
                # librosa warns that it falls back to audioread: noise around a one-line error
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    samples, source_rate = librosa.load(str(audio), sr=None, mono=True)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
                # audioread's own errors are often empty: libsndfile's message says more
                raise UserError(f"{audio}: cannot decode audio ({soundfile_error})") from exc
        if source_rate != rate:
            samples = librosa.resample(samples, orig_sr=source_rate, target_sr=rate)
        if samples.size == 0 or not np.isfinite(samples).all():
            raise UserError(f"{audio}: empty or non-finite audio")
        length = len(samples)
        padded = np.pad(samples, (0, -len(samples) % hop + hop * (len(samples) < hop)))
        normalised, gain = normalize_loudness(torch.from_numpy(padded), rate, -23.0, 0.95)
        features = student.front_end(normalised[None])
    elif mel is not None:
        features = _mel_from_file(mel, loaded.mel.n_mels)[None]
    if not student.config.conditional:
        if seconds is None:
            raise UserError("this bundle is unconditional: use --seconds")
        context = student.context(num_samples=int(seconds * rate), speaker=speaker_ids)
    else:
        if seconds is not None:
            raise UserError("this bundle is conditional: give --mel or --audio")
        try:
            context = student.context(mel=features, speaker=speaker_ids)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        waveform = student.generate(context, temperature=tau, generator=generator)[0]
    elapsed = time.perf_counter() - start
    result = (waveform / gain).numpy()[:length]
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), np.clip(result, -1.0, 1.0), rate, subtype="PCM_16")
    typer.echo(
        f"wrote {out}: {len(result) / rate:.2f} s at {rate} Hz in {elapsed:.2f} s "
        f"({len(result) / rate / elapsed:.1f}x real time)"
    )


def pipeline_command(
    preset: PresetOption = "cpu-8k",
    overrides: SetOption = None,
    source: Annotated[
        Path | None,
        typer.Option("--source", exists=True, file_okay=False, help="your corpus folder"),
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir")] = None,
    resume: ResumeOption = False,
    device: DeviceOption = "auto",
) -> None:
    """The whole job: fetch -> prepare -> teacher -> student -> evaluate -> export.

    Uses the default corpus (asterisk-core-sounds-en-wav) unless --source or data.corpus says
    otherwise; everything lands in --run-dir (default runs/<preset>-<timestamp>).
    """
    from training.pipeline import run_pipeline

    config = load_preset(preset, overrides)
    if run_dir is None:
        if resume:
            raise UserError("--resume needs --run-dir (the pipeline run to continue)")
        run_dir = Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    record = run_pipeline(config, run_dir, source, resume, device)
    typer.echo("")
    for name in ("fetch", "prepare", "teacher", "student", "evaluate", "export"):
        info = record["steps"].get(name, {})
        typer.echo(f"  {name:<9} {info.get('seconds', float('nan')):>8.1f} s")
    summary = record["steps"].get("evaluate", {}).get("summary")
    if summary:
        typer.echo("  " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    typer.echo(f"bundle:     {record['bundle']}")
    typer.echo(f"evaluation: {record['eval']}")

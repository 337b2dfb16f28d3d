"""Voices the training corpus does not hold, through the public API, beside Griffin-Lim.

    python -m benchmarks.generalisation --bundle runs/<run>/bundle [--out FILE.json]
        [--data runs/<run>/data] [--recordings DIR [DIR ...]]

Sets (each file resynthesised by ``distilwave.load(bundle).resynthesize`` and by Griffin-Lim
from the bundle's own mel of it, both scored against the file itself):

- ``espeak``: English sentences spoken by espeak-ng in several voices (male and female
  variants); installed by ``make bench`` (Debian ``espeak-ng``) when missing;
- ``pitch_down`` / ``pitch_up``: the committed speech fixtures shifted by -5 and +4 semitones
  (librosa), a lower and a higher voice than the corpus's;
- with ``--data`` (a prepared corpus): ``test`` (its held-out test split as it is, for
  reference) and ``test_pitch_down`` / ``test_pitch_up`` (the same files shifted): the
  fixtures come from the default corpus, the test split was never trained on;
- with ``--recordings``: each folder of your own recordings (WAV / FLAC, any rate, the first
  6 s of each of up to 12 files) is a set named after the folder.

Writes a JSON report (per set: files, mean PESQ-NB / LSD / STOI / MCD of both systems, of the
prior h(mel) alone when the bundle has one, and the difference) into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import soundfile as sf
import torch

from benchmarks.common import RESULTS, SPEECH, machine
from models.audio import normalize_loudness
from models.files import atomic_write_json
from models.vocoder import Vocoder, load
from training.evaluation.baselines import griffin_lim
from training.evaluation.metrics import all_metrics

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please leave your message after the tone, and we will call you back.",
    "Seven hundred and twenty three people attended the meeting on Tuesday.",
    "Is this the right number for customer support?",
    "Thank you for calling, your order will ship in two business days.",
    "Whose yellow umbrella was left beside the garden gate this morning?",
]
VOICES = ["en-us", "en-us+f3", "en", "en-us+m3", "en-gb+f2", "en-us+m7"]
SHIFTS = {"pitch_down": -5.0, "pitch_up": 4.0}
MAX_SECONDS = 6.0


def espeak_set(rate: int) -> list[tuple[str, np.ndarray]]:
    """Sentences spoken by espeak-ng in different voices, resampled to ``rate``."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: `make bench` installs it (Debian, root)")
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (sentence, voice) in enumerate(zip(SENTENCES, VOICES, strict=True)):
            path = Path(tmp) / f"{index}.wav"
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), sentence], check=True
            )
            audio, source_rate = sf.read(path, dtype="float32")
            clips.append((f"espeak-{voice}-{index}", _at(audio, source_rate, rate)))
    return clips


def shifted_set(rate: int, semitones: float) -> list[tuple[str, np.ndarray]]:
    """The committed speech fixtures, pitch-shifted by ``semitones``."""
    clips = []
    for path in sorted(SPEECH.rglob("*.wav"))[:8]:
        audio, source_rate = sf.read(path, dtype="float32")
        audio = _at(audio, source_rate, rate)
        clips.append((f"{path.stem}{semitones:+g}st", _shift(audio, rate, semitones)))
    return clips


def test_split_sets(data: Path, rate: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """The held-out test split of a prepared corpus, as it is and pitch-shifted."""
    from training.data.dataset import UtteranceDataset

    test = UtteranceDataset(data, "test", max_seconds=MAX_SECONDS, limit=8)
    clips = [(str(test[i]["id"]), test[i]["audio"].numpy()) for i in range(len(test))]
    if not clips:
        raise SystemExit(f"{data} has no test utterances")
    sets = {"test": clips}
    for name, semitones in SHIFTS.items():
        sets[f"test_{name}"] = [
            (f"{key}{semitones:+g}st", _shift(audio, rate, semitones)) for key, audio in clips
        ]
    return sets


RECORDINGS = (".wav", ".flac")


def recording_paths(folder: Path) -> list[Path]:
    """The WAV and FLAC files under ``folder``, in name order (none if it is not a folder)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in RECORDINGS)


def recordings_set(folder: Path, rate: int) -> list[tuple[str, np.ndarray]]:
    """Up to 12 recordings of a folder (WAV or FLAC, any rate), in name order."""
    paths = recording_paths(folder)
    if not paths:
        raise SystemExit(f"{folder} holds no .wav or .flac recordings")
    clips = []
    for path in paths[:12]:
        audio, source_rate = sf.read(path, dtype="float32")
        clips.append((path.stem, _at(audio, source_rate, rate)))
    return clips


def _shift(audio: np.ndarray, rate: int, semitones: float) -> np.ndarray:
    return librosa.effects.pitch_shift(audio, sr=rate, n_steps=semitones).astype(np.float32)


def _at(audio: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if source_rate != rate:
        audio = librosa.resample(audio, orig_sr=source_rate, target_sr=rate)
    return np.asarray(audio[: int(MAX_SECONDS * rate)], dtype=np.float32)


def score(vocoder: Vocoder, clips: list[tuple[str, np.ndarray]], seed: int) -> dict[str, Any]:
    """Mean metrics of the vocoder and of Griffin-Lim (from the bundle's mel) on ``clips``."""
    rate = vocoder.sample_rate
    rows: dict[str, list[dict[str, float]]] = {"vocoder": [], "griffin_lim": []}
    convention = vocoder.audio
    prior = vocoder.student.prior
    for _, audio in clips:
        out = vocoder.resynthesize(audio, rate, seed=seed)
        rows["vocoder"].append(all_metrics(audio, out, rate))
        if prior is not None:  # the prior h(mel) alone, at the input's level like the vocoder
            features, length, gain = vocoder.features(audio)
            with torch.inference_mode():
                alone = prior(features)[0, :length].float().numpy() / gain
            rows.setdefault("prior", []).append(all_metrics(audio, alone, rate))
        scaled, _ = normalize_loudness(
            torch.from_numpy(audio), rate, convention.loudness_lufs, convention.peak_limit
        )
        mel = torch.from_numpy(vocoder.mel(audio, rate))
        gl = griffin_lim(torch.cat([mel, mel[:, -1:]], 1), vocoder.bundle.mel, 32)
        rows["griffin_lim"].append(all_metrics(scaled.numpy(), gl, rate))
    means = {
        name: {k: float(np.mean([r[k] for r in values])) for k in values[0]}
        for name, values in rows.items()
    }
    return {
        "files": [name for name, _ in clips],
        **means,
        "pesq_above_griffin_lim": means["vocoder"]["pesq"] - means["griffin_lim"]["pesq"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="prepared corpus: its test split")
    parser.add_argument(
        "--recordings", type=Path, nargs="+", default=[], help="folders of your recordings"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    vocoder = load(args.bundle)
    rate = vocoder.sample_rate
    sets = {"espeak": espeak_set(rate)}
    sets.update({name: shifted_set(rate, semitones) for name, semitones in SHIFTS.items()})
    if args.data is not None:
        sets.update(test_split_sets(args.data, rate))
    for folder in args.recordings:
        sets[folder.name] = recordings_set(folder, rate)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": machine(),
        "bundle": str(args.bundle),
        "temperature": vocoder.default_temperature,
        "sets": {name: score(vocoder, clips, args.seed) for name, clips in sets.items()},
    }
    report["seconds"] = time.perf_counter() - started
    out = args.out or RESULTS / f"generalisation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_json(out, report, sort_keys=False)
    for name, result in report["sets"].items():
        voc, gl = result["vocoder"], result["griffin_lim"]
        print(  # noqa: T201
            f"{name:<11} {len(result['files'])} files  PESQ-NB {voc['pesq']:.2f} vs Griffin-Lim "
            f"{gl['pesq']:.2f}  LSD {voc['lsd_db']:.2f} vs {gl['lsd_db']:.2f} dB"
            + (
                f"  (prior alone PESQ-NB {result['prior']['pesq']:.2f})"
                if "prior" in result
                else ""
            )
        )
    print(f"results: {out}")  # noqa: T201


if __name__ == "__main__":
    main()

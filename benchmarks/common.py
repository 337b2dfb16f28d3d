"""What every benchmark section shares: the models under test, real speech, timing, the machine.

Every figure is the median of several timed runs after a warm-up, and every ratio compares
figures of the same run; the JSON never asserts a time.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import load_bundle, save_bundle
from models.config import MelConfig
from models.errors import UserError
from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from models.vocoder import Vocoder
from training.config import load_preset

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "fixtures" / "audio" / "asterisk"
RESULTS = Path("benchmarks") / "results"


@dataclass
class Models:
    """The bundle's vocoder (its fast path and its module) and the teacher."""

    vocoder: Vocoder
    teacher: GaussianWaveNet
    trained: bool
    bundle: str
    teacher_source: str

    @property
    def student(self) -> IAFStudent:
        return self.vocoder.student


def newest(pattern: str) -> Path | None:
    found = sorted(Path("runs").glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load_models(
    bundle: Path | None, teacher: Path | None, preset: str, chunk: int, workdir: Path
) -> Models:
    """The bundle's student and the teacher run, or untrained preset-shaped models."""
    from training.recipes.common import load_teacher

    bundle = bundle or newest("*/bundle")
    teacher = teacher or newest("*/teacher")
    config = load_preset(preset)
    if bundle is None:  # an untrained student, still through a bundle (weight norm folded)
        student_model = IAFStudent(config.student, config.mel)
        bundle = save_bundle(workdir / "untrained-bundle", student_model)
        bundle_label = f"untrained {preset} (timing only)"
    else:
        bundle_label = str(bundle)
    try:
        vocoder = Vocoder(load_bundle(bundle), chunk=chunk)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if teacher is None:
        teacher_model = GaussianWaveNet(config.teacher, config.mel).eval()
        teacher_label = f"untrained {preset} (timing only)"
    else:
        teacher_model = load_teacher(teacher, torch.device("cpu"))
        teacher_label = str(teacher)
    if teacher_model.mel_config != vocoder.student.mel_config:
        raise UserError("the teacher and the student use different mel front ends")
    trained = not bundle_label.startswith("untrained") and not teacher_label.startswith("untr")
    return Models(vocoder, teacher_model, trained, bundle_label, teacher_label)


def speech(mel: MelConfig, seconds: float, loudness: float, peak: float) -> np.ndarray:
    """Real speech (the test fixtures at the bundle's loudness), tiled to length."""
    import librosa

    from models.audio import normalize_loudness

    clips = [librosa.load(path, sr=mel.sample_rate)[0] for path in sorted(SPEECH.rglob("*.wav"))]
    if not clips:  # no repository checkout: a gliding harmonic tone in noise
        t = np.arange(int(4 * mel.sample_rate)) / mel.sample_rate
        phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / mel.sample_rate
        clips = [sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.05 * np.sin(7919 * t)]
    audio = np.concatenate(clips).astype(np.float32)
    audio = normalize_loudness(torch.from_numpy(audio), mel.sample_rate, loudness, peak)[0].numpy()
    repeats = math.ceil(seconds * mel.sample_rate / len(audio)) + 1
    return np.tile(audio, repeats)


def mels(student: IAFStudent, audio: np.ndarray, seconds: float, batch: int) -> torch.Tensor:
    """``(batch, n_mels, M)`` for ``seconds`` of audio, one offset crop per batch item."""
    rate, hop = student.sample_rate, student.hop_length
    steps = round(seconds * rate / hop) * hop
    offset = rate // 3
    length = max(steps, student.mel_config.n_fft)  # the centred STFT needs > n_fft / 2
    crops = [torch.from_numpy(audio[i * offset : i * offset + length]) for i in range(batch)]
    with torch.inference_mode():
        return student.front_end(torch.stack(crops))[..., : steps // hop + 1]


def timed(function: Callable[[], object], runs: int, warmup: int = 1) -> dict[str, Any]:
    """Median wall time of ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "runs": runs, "all_seconds": times}


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()),
        "git_commit": commit or None,
    }


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run a block with ``count`` intra-op threads (0: unchanged)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

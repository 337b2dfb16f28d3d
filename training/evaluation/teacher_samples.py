"""The teacher's own samples: what the student is distilled from, scored like the student.

The teacher samples autoregressively (slow by nature), so it is scored on short clips: the
first ``evaluation.teacher_sample_seconds`` (at least 0.3 s, what the metrics need) of the
first ``evaluation.teacher_clips`` test utterances that are that long (from the whole test
split; when fewer are, the longest, all cut to the shortest chosen), in one batch, at
temperature 1 (the distribution the student is taught) and, when the bundle serves another
temperature, at that one too (``teacher_served``: at 0 the teacher's mean path,
``x_t = mu_t(x_<t, c)``). The student (at the bundle's temperature) and Griffin-Lim are scored
on the same clips beside it.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import torch

from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from training.config import Preset
from training.evaluation.baselines import griffin_lim
from training.evaluation.metrics import all_metrics
from training.objectives.context import model_context

SHORTEST_SCORED = 0.3  # seconds: PESQ and the multi-resolution STFT need this much


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]} if rows else {}


class Utterances(Protocol):
    """Test utterances read by index (a list of items, or a dataset that loads each on demand)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def choose_clips(items: Utterances, count: int, frames: int) -> list[dict[str, Any]]:
    """The first ``count`` items with at least ``frames`` mel frames (read in order, only as far
    as needed); when fewer are that long, the ``count`` longest, in their order."""
    chosen, lengths = [], []
    for index in range(len(items)):
        item = items[index]
        lengths.append(item["mel"].shape[-1])
        if lengths[-1] >= frames:
            chosen.append(item)
            if len(chosen) == count:
                return chosen
    ranked = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:count]
    return [items[i] for i in sorted(ranked)]


@torch.no_grad()
def teacher_clips(
    preset: Preset,
    teacher: GaussianWaveNet,
    student: IAFStudent,
    items: Utterances,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Teacher samples, student and Griffin-Lim on the same short clips: mean metrics, the
    audio of every system on the first clip, and the teacher's sampling speed."""
    cfg = preset.evaluation
    rate, hop = preset.mel.sample_rate, preset.mel.hop_length
    seconds = max(cfg.teacher_sample_seconds, SHORTEST_SCORED)
    frames = int(seconds * rate) // hop + 1
    chosen = choose_clips(items, cfg.teacher_clips, frames)
    frames = min([frames] + [item["mel"].shape[-1] for item in chosen])
    steps = (frames - 1) * hop
    mel = torch.stack([item["mel"][:, :frames] for item in chosen])
    speaker = torch.stack([item["speaker"].reshape(()) for item in chosen])
    real = [item["audio"][:steps].numpy() for item in chosen]
    context = model_context(teacher, mel, speaker, steps)
    started = time.perf_counter()
    sampled = teacher.sample(context, generator=generator).float().numpy()
    elapsed = time.perf_counter() - started
    served = None
    if cfg.temperature != 1.0:
        served = teacher.sample(context, cfg.temperature, generator=generator).float().numpy()
    s_context = model_context(student, mel, speaker, steps)
    noise = student.draw_noise(s_context, cfg.temperature, generator)
    fake = student.generate(s_context, noise=noise).float().numpy()
    outputs = {
        "teacher": list(sampled),
        "student": list(fake),
        "griffin_lim": [griffin_lim(m, preset.mel, cfg.griffin_lim_iters) for m in mel],
    }
    if served is not None:
        outputs["teacher_served"] = list(served)
    scores = {
        name: _mean([all_metrics(r, o, rate) for r, o in zip(real, audio, strict=True)])
        for name, audio in outputs.items()
    }
    return {
        "clips": len(chosen),
        "ids": [item["id"] for item in chosen],
        "seconds_per_clip": steps / rate,
        "temperature": {
            "teacher": 1.0,
            "student": cfg.temperature,
            **({"teacher_served": cfg.temperature} if served is not None else {}),
        },
        "metrics": scores,
        "first_clip": {"real": real[0], **{name: audio[0] for name, audio in outputs.items()}},
        "speed": {
            "samples_per_second": len(chosen) * steps / elapsed,
            "x_real_time": len(chosen) * steps / elapsed / rate,
            "batch": len(chosen),
        },
    }

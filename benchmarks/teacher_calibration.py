"""Why the teacher's own samples sound as they do: calibration, drift and the residual's size.

    python -m benchmarks.teacher_calibration --teacher runs/<run>/teacher --data runs/<run>/data
        [--clips 6] [--seconds 1.5] [--out FILE.json]

On the clips ``distilwave evaluate`` scores the teacher on (the first ``--clips`` test
utterances at least ``--seconds`` long), it reports:

- calibration under teacher forcing: ``z = (x - mean) / scale`` on the real audio (mean 0 and
  mean square 1 when the predicted scales are honest);
- drift: the mean log-scale along the teacher's own sampled path at temperatures 1, 0.7 and 0
  against the real path's (a sampler that wanders off the data predicts larger scales);
- per-frame energies (dB, 25 ms frames) of the real audio, of the prior's ``h``, of the true
  residual ``x - h`` the teacher models, and of each sample and its residual, in three equal
  bands of the real audio's frame energy;
- PESQ-NB / LSD of the samples and of ``h`` alone on the same clips.

Writes a JSON report into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.common import RESULTS, machine
from models.files import atomic_write_json
from training.data.dataset import UtteranceDataset
from training.evaluation.metrics import all_metrics
from training.evaluation.teacher_samples import choose_clips
from training.objectives.context import model_context
from training.recipes.common import load_teacher

TEMPERATURES = (1.0, 0.7, 0.0)


def frames_of(signal: Tensor, size: int) -> Tensor:
    """``(B, T)`` -> ``(B, F, size)`` frames at half-overlap."""
    return signal.unfold(1, size, size // 2)


def energy_db(signal: Tensor, size: int) -> Tensor:
    return 10 * torch.log10(frames_of(signal, size).pow(2).mean(-1) + 1e-10)


def scores(real: Tensor, estimate: Tensor, rate: int) -> dict[str, float]:
    rows = [all_metrics(r.numpy(), e.numpy(), rate) for r, e in zip(real, estimate, strict=True)]
    return {key: float(np.nanmean([row[key] for row in rows])) for key in ("pesq", "lsd_db")}


@torch.no_grad()
def calibration(
    teacher_dir: Path, data_dir: Path, clips: int, seconds: float, seed: int
) -> dict[str, Any]:
    teacher = load_teacher(teacher_dir, torch.device("cpu"))
    rate, hop = teacher.mel_config.sample_rate, teacher.mel_config.hop_length
    frames = int(seconds * rate) // hop + 1
    chosen = choose_clips(UtteranceDataset(data_dir, "test"), clips, frames)
    frames = min([frames] + [item["mel"].shape[-1] for item in chosen])
    steps = (frames - 1) * hop
    mel = torch.stack([item["mel"][:, :frames] for item in chosen])
    speaker = torch.stack([item["speaker"].reshape(()) for item in chosen])
    real = torch.stack([item["audio"][:steps] for item in chosen]).float()
    context = model_context(teacher, mel, speaker, steps)
    prior = None if context.prior is None else context.prior[:, :steps].float()
    shift = prior if prior is not None else torch.zeros_like(real)
    mean, log_scale = teacher.conditionals(real, context)
    z = (real - mean) / log_scale.exp()
    generator = torch.Generator().manual_seed(seed)
    samples = {t: teacher.sample(context, t, generator=generator).float() for t in TEMPERATURES}
    paths = {t: teacher.conditionals(s, context)[1] for t, s in samples.items()}

    size = rate // 40  # 25 ms
    level = energy_db(real, size)
    edges = torch.quantile(level.flatten(), torch.tensor([1 / 3, 2 / 3]))
    bands = {"low": level < edges[0], "mid": (level >= edges[0]) & (level < edges[1])}
    bands["high"] = level >= edges[1]

    def in_band(values: Tensor, mask: Tensor) -> float:
        return round(float(values[mask].mean()), 3)

    def frame_log_scale(values: Tensor) -> Tensor:
        return frames_of(values, size).mean(-1)

    energies: dict[str, Any] = {}
    for name, mask in bands.items():
        row = {
            "real_db": in_band(level, mask),
            "prior_db": in_band(energy_db(shift, size), mask),
            "true_residual_db": in_band(energy_db(real - shift, size), mask),
            "log_scale_real_path": in_band(frame_log_scale(log_scale), mask),
        }
        for t, sample in samples.items():
            row[f"sample_db_T{t:g}"] = in_band(energy_db(sample, size), mask)
            row[f"sample_residual_db_T{t:g}"] = in_band(energy_db(sample - shift, size), mask)
            row[f"log_scale_own_path_T{t:g}"] = in_band(frame_log_scale(paths[t]), mask)
        energies[name] = row
    quality = {f"teacher_T{t:g}": scores(real, s, rate) for t, s in samples.items()}
    if prior is not None:
        quality["prior_alone"] = scores(real, prior, rate)
    return {
        "teacher": str(teacher_dir),
        "clips": len(chosen),
        "ids": [item["id"] for item in chosen],
        "seconds_per_clip": steps / rate,
        "teacher_forced_z": {"mean": float(z.mean()), "mean_square": float(z.pow(2).mean())},
        "energy_bands": energies,
        "quality": quality,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = {
        "machine": machine(),
        **calibration(args.teacher, args.data, args.clips, args.seconds, args.seed),
    }
    out = args.out or RESULTS / f"teacher-calibration-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_json(out, report, sort_keys=False)
    print(json.dumps({k: report[k] for k in ("teacher_forced_z", "quality")}, indent=2))
    print(f"report: {out}")


if __name__ == "__main__":
    main()

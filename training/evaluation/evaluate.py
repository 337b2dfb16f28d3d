"""``distilwave evaluate``: an honest report on held-out audio, baselines beside the models.

Writes ``eval.json``, spectrogram comparisons (PNG), learning curves and audio files:
teacher bits/sample next to an AR(32) baseline; the student's KL to the teacher (closed form
and Monte Carlo, with standard errors) and the teacher's bits on student output; resynthesis
quality of the student, Griffin-Lim, a noise-excited LPC vocoder and (pitch students) the
student's own structure with no network; and generation speeds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from models.config import SourceFilterConfig
from models.files import atomic_write_json
from models.kl import mean_and_stderr
from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from models.transforms import bits_per_sample
from training.config import Preset
from training.data.dataset import PreparedCorpus, UtteranceDataset
from training.evaluation.baselines import LinearPredictionBaseline, griffin_lim, lpc_noise_vocoder
from training.evaluation.metrics import all_metrics
from training.evaluation.plots import curves_figure, save_figure, spectrogram_figure
from training.evaluation.teacher_samples import teacher_clips
from training.objectives.context import model_context
from training.objectives.distillation import distillation_terms
from training.objectives.likelihood import utterance_bits
from training.recipes.common import check_corpus

log = logging.getLogger(__name__)


def _file_id(utterance_id: str) -> str:
    return utterance_id.replace("/", "__")


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def fit_ar_baseline(corpus: PreparedCorpus, max_seconds: float = 600.0) -> LinearPredictionBaseline:
    """AR(32) on up to ``max_seconds`` of the training split (dequantised like the models' data)."""
    rng = np.random.default_rng(0)
    signals, total = [], 0.0
    for row in corpus.utterances("train"):
        audio, _ = corpus.load(row)
        x = audio.numpy() + (rng.random(len(audio)) - 0.5) / 32768.0
        signals.append(x)
        total += len(x) / corpus.sample_rate
        if total >= max_seconds:
            break
    return LinearPredictionBaseline(32).fit(signals)


def _timed(function: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


@torch.no_grad()
def evaluate(
    preset: Preset,
    data_dir: Path,
    teacher: GaussianWaveNet,
    student: IAFStudent,
    out_dir: Path,
    histories: dict[str, list[tuple[float, float]]] | None = None,
) -> dict[str, Any]:
    """Evaluate on the test split and write the report into ``out_dir``; returns ``eval.json``."""
    cfg = preset.evaluation
    rate = preset.mel.sample_rate
    corpus = check_corpus(preset, data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "audio").mkdir(exist_ok=True)
    (out_dir / "figures").mkdir(exist_ok=True)
    test = UtteranceDataset(data_dir, "test", max_seconds=cfg.max_seconds, limit=cfg.utterances)
    items = [test[i] for i in range(len(test))]
    if not items:
        raise ValueError(f"{data_dir} has no test utterances to evaluate on")
    teacher.eval()
    student.eval()
    source_filter = preset.teacher.source_filter
    lpc_config = source_filter if source_filter.enabled else SourceFilterConfig()
    generator = torch.Generator().manual_seed(cfg.seed)

    baseline = fit_ar_baseline(corpus)
    ar_nll, ar_count = 0.0, 0
    for item in items:
        nll, count = baseline.nll(item["audio"].numpy())
        ar_nll, ar_count = ar_nll + nll, ar_count + count
    real_bits = utterance_bits(teacher, items, torch.device("cpu"))

    rows: dict[str, list[dict[str, float]]] = {"student": [], "griffin_lim": [], "lpc_noise": []}
    seconds: dict[str, float] = {"student": 0.0, "griffin_lim": 0.0, "lpc_noise": 0.0}
    # the student's own structure with every network at its zero start (pulses at the mel's
    # pitch plus noise through the same gain and filter): what the networks must add to
    structure = _untrained_structure(student)
    if structure is not None:
        rows["structure_only"], seconds["structure_only"] = [], 0.0
    closed, mc, student_bits_nll, student_samples = [], [], 0.0, 0
    audio_total = 0
    for index, item in enumerate(tqdm(items, desc="evaluate", dynamic_ncols=True)):
        real = item["audio"].numpy()
        mel = item["mel"][None]
        speaker = item["speaker"].reshape(1)
        audio_total += len(real)
        # the student's time includes its context (upsampler, linear prediction, pitch, prior)
        length = len(real)
        context, elapsed = _timed(
            lambda m=mel, s=speaker, n=length: model_context(student, m, s, n)
        )
        seconds["student"] += elapsed
        noise = student.draw_noise(context, cfg.temperature, generator)
        fake, elapsed = _timed(lambda c=context, n=noise: student.generate(c, noise=n))
        seconds["student"] += elapsed
        fake_np = fake[0].numpy()
        # the distillation terms at temperature 1 (the distilled objective), on the same mel
        batch = {"audio": item["audio"][None], "mel": mel, "speaker": speaker}
        terms = distillation_terms(student, teacher, batch, 1.0, generator, context)
        closed.append(terms["kl_closed"])
        mc.append(terms["kl_mc"])
        student_bits_nll += float(terms["teacher_nll"].sum()) * terms["waveform"].shape[1]
        student_samples += terms["waveform"].shape[1]
        gl, elapsed = _timed(
            lambda f=item["mel"]: griffin_lim(f, preset.mel, cfg.griffin_lim_iters)
        )
        seconds["griffin_lim"] += elapsed
        noise_voc, elapsed = _timed(
            lambda f=item["mel"]: lpc_noise_vocoder(f, preset.mel, lpc_config, generator)
        )
        seconds["lpc_noise"] += elapsed
        outputs = {"student": fake_np, "griffin_lim": gl, "lpc_noise": noise_voc}
        if cfg.temperature != 1.0:  # the distribution the KL is measured on, beside the default
            noise_t1 = student.draw_noise(context, 1.0, generator)
            outputs["student_t1"] = student.generate(context, noise=noise_t1)[0].numpy()
            rows.setdefault("student_t1", [])
        if student.prior is not None:  # the prior alone: h(mel), what the flows start from
            prior, elapsed = _timed(lambda m=mel: student.prior(m)[0])
            seconds["prior"] = seconds.get("prior", 0.0) + elapsed
            outputs["prior"] = prior.numpy()
            rows.setdefault("prior", [])
        if structure is not None:
            plain, elapsed = _timed(lambda c=context, n=noise: structure.generate(c, noise=n))
            seconds["structure_only"] += elapsed
            outputs["structure_only"] = plain[0].numpy()
        for name, audio in outputs.items():
            rows[name].append(all_metrics(real, audio, rate))
        if index < 5:
            for name, audio in {"real": real, **outputs}.items():
                sf.write(
                    out_dir / "audio" / f"{_file_id(item['id'])}_{name}.wav",
                    np.clip(audio, -1, 1),
                    rate,
                )
        if index < 3:
            fig = spectrogram_figure(
                {
                    "real": real,
                    "student (IAF)": fake_np,
                    "Griffin-Lim": gl,
                    "LPC + noise": noise_voc,
                    **({"prior h(mel) alone": outputs["prior"]} if "prior" in outputs else {}),
                    **(
                        {"structure only (no network)": outputs["structure_only"]}
                        if "structure_only" in outputs
                        else {}
                    ),
                },
                rate,
                title=str(item["id"]),
            )
            save_figure(
                fig,
                str(out_dir / "figures" / f"spectrogram_{index}_{_file_id(item['id'])}.png"),
            )

    # from the whole test split: the evaluated utterances can be shorter than the clips asked for
    pool = UtteranceDataset(data_dir, "test", max_seconds=cfg.max_seconds)
    clips = teacher_clips(preset, teacher, student, pool, generator)
    first = clips.pop("first_clip")
    clip_id = _file_id(clips["ids"][0])
    for name, audio in first.items():
        sf.write(out_dir / "audio" / f"{clip_id}_clip_{name}.wav", np.clip(audio, -1, 1), rate)
    fig = spectrogram_figure(
        {"real": first["real"], "teacher (autoregressive, T = 1)": first["teacher"],
         **({f"teacher (autoregressive, T = {cfg.temperature:g})": first["teacher_served"]}
            if "teacher_served" in first else {}),
         "student": first["student"], "Griffin-Lim": first["griffin_lim"]},
        rate,
        title=f"{clips['ids'][0]} (first {clips['seconds_per_clip']:.2f} s)",
    )  # fmt: skip
    save_figure(fig, str(out_dir / "figures" / "teacher_clip.png"))
    kl_closed, kl_closed_se = mean_and_stderr(torch.cat(closed))
    kl_mc, kl_mc_se = mean_and_stderr(torch.cat(mc))
    speed = {
        name: {"samples_per_second": audio_total / s, "x_real_time": audio_total / s / rate}
        for name, s in seconds.items()
    }
    speed["teacher_autoregressive"] = clips.pop("speed")
    report: dict[str, Any] = {
        "preset": preset.name,
        "data": str(data_dir),
        "test_utterances": len(items),
        "test_seconds": audio_total / rate,
        "teacher": {
            "bits_per_sample": real_bits,
            "bits_per_sample_on_student_output": float(
                bits_per_sample(student_bits_nll / student_samples)
            ),
            "ar32_baseline_bits_per_sample": float(bits_per_sample(ar_nll / ar_count)),
        },
        "student": {
            "kl_closed_nats_per_sample": kl_closed,
            "kl_closed_stderr": kl_closed_se,
            "kl_mc_nats_per_sample": kl_mc,
            "kl_mc_stderr": kl_mc_se,
            "temperature": cfg.temperature,
        },
        "resynthesis": {name: _mean(r) for name, r in rows.items()},
        "teacher_samples": clips,
        "speed": speed,
    }
    if histories:
        for name, points in histories.items():
            if points:
                fig = curves_figure({name: points}, "step", name)
                slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
                save_figure(fig, str(out_dir / "figures" / f"curve_{slug}.png"))
        report["learning_curves"] = histories
    # listed last, so the learning-curve figures written just above are in it too
    report["figures"] = sorted(
        str(p.relative_to(out_dir)) for p in (out_dir / "figures").glob("*.png")
    )
    atomic_write_json(out_dir / "eval.json", report)
    log.info("evaluation written to %s", out_dir / "eval.json")
    return report


def _untrained_structure(student: IAFStudent) -> IAFStudent | None:
    """A fresh student of the same configuration (every flow starts as the identity, the
    voicing correction at zero) for students whose structure alone makes sound: pitch pulses
    plus noise through the gain and synthesis filter. ``None`` for other students."""
    if not student.config.mixed_excitation:
        return None
    param = next(student.parameters())
    fresh = IAFStudent(student.config, student.mel_config).to(param.device, param.dtype)
    fresh.upsampler.load_state_dict(student.upsampler.state_dict())
    if student.prior is not None and fresh.prior is not None:  # trained, like the upsampler
        fresh.prior.load_state_dict(student.prior.state_dict())
    return fresh.eval()

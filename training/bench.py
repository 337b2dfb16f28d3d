"""``distilwave bench``: speed figures measured side by side in one run, written as JSON.

Sections (each figure is the median of several timed runs after a warm-up, and every ratio
compares figures of the same run):

1. generation: student (the bundle through ``InferenceStudent``, and the plain module),
   teacher autoregressive with cached queues, teacher naive (short clips, extrapolated), and
   Griffin-Lim (32 iterations), batch 1 and 8, 1 s and 4 s, all from the same real-speech mel;
2. limit: the student's FLOPs per sample from its layer shapes, the achieved GFLOP/s and the
   fp32 matmul peak of this CPU measured now;
3. scaling: time and peak memory for 0.5 ... 16 s, with the fitted exponent;
4. training: teacher and distillation steps per second, 1 process and 2 torchrun processes;
5. service: ``service.loadtest`` (throughput and latency at 1/4/16 clients).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from models.bundle import load_bundle, save_bundle
from models.config import MelConfig
from models.flows import WaveNetConditioner
from models.inference import DEFAULT_CHUNK, InferenceStudent
from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from training.config import load_preset
from training.errors import UserError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "fixtures" / "audio" / "asterisk"
RESULTS = Path("benchmarks") / "results"
SECTIONS = ("generation", "limit", "scaling", "training", "service")


@dataclass
class Models:
    student: IAFStudent
    fast: InferenceStudent
    teacher: GaussianWaveNet
    trained: bool
    bundle: str
    teacher_source: str


def _newest(pattern: str) -> Path | None:
    found = sorted(Path("runs").glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load_models(
    bundle: Path | None, teacher: Path | None, preset: str, chunk: int, workdir: Path
) -> Models:
    """The bundle's student and the teacher run, or untrained preset-shaped models."""
    from training.teacher_job import load_teacher

    bundle = bundle or _newest("*/bundle")
    teacher = teacher or _newest("*/teacher")
    config = load_preset(preset)
    if bundle is None:  # an untrained student, still through a bundle (weight norm folded)
        student_model = IAFStudent(config.student, config.mel)
        bundle = save_bundle(workdir / "untrained-bundle", student_model)
        bundle_label = f"untrained {preset} (timing only)"
    else:
        bundle_label = str(bundle)
    student = load_bundle(bundle).student.eval()
    if teacher is None:
        teacher_model = GaussianWaveNet(config.teacher, config.mel).eval()
        teacher_label = f"untrained {preset} (timing only)"
    else:
        teacher_model = load_teacher(teacher, torch.device("cpu"))
        teacher_label = str(teacher)
    if teacher_model.mel_config != student.mel_config:
        raise UserError("the teacher and the student use different mel front ends")
    trained = not bundle_label.startswith("untrained") and not teacher_label.startswith("untr")
    return Models(
        student, InferenceStudent(student, chunk), teacher_model, trained, bundle_label,
        teacher_label,
    )  # fmt: skip


def speech(mel: MelConfig, seconds: float) -> np.ndarray:
    """Real speech (the test fixtures, loudness-normalised as in training), tiled to length."""
    import librosa

    from models.audio import normalize_loudness

    clips = [librosa.load(path, sr=mel.sample_rate)[0] for path in sorted(SPEECH.rglob("*.wav"))]
    if not clips:  # no repository checkout: a gliding harmonic tone in noise
        t = np.arange(int(4 * mel.sample_rate)) / mel.sample_rate
        phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / mel.sample_rate
        clips = [sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.05 * np.sin(7919 * t)]
    audio = np.concatenate(clips).astype(np.float32)
    audio = normalize_loudness(torch.from_numpy(audio), mel.sample_rate, -23.0, 0.95)[0].numpy()
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


# ------------------------------------------------------------------------------ section 1
def generation(
    models: Models,
    audio: np.ndarray,
    batches: list[int],
    durations: list[float],
    runs: int,
    quality_seconds: float = 4.0,
    teacher_threads: int = 1,
) -> dict[str, Any]:
    """Samples/s of every generator from the same mel; ratios within the run.

    The teacher samples with ``teacher_threads`` (default 1: its sequential steps are tiny
    products that extra threads only slow down, badly so on a busy machine); 0 = as the rest.
    """
    from training.metrics import griffin_lim

    student, fast, teacher = models.student, models.fast, models.teacher
    rate, hop = student.sample_rate, student.hop_length
    rows = []
    for batch in batches:
        with _threads(teacher_threads):
            naive = _naive_teacher(teacher, student, audio, batch, hop, runs)
        for seconds in durations:
            mel = mels(student, audio, seconds, batch)
            samples = batch * (mel.shape[-1] - 1) * hop
            generator = torch.Generator().manual_seed(0)

            def optimised(m: torch.Tensor = mel, g: torch.Generator = generator) -> object:
                return fast.generate(fast.context(mel=m), generator=g)

            def module(m: torch.Tensor = mel, g: torch.Generator = generator) -> object:
                return student.generate(student.context(mel=m), generator=g)

            def cached(m: torch.Tensor = mel, g: torch.Generator = generator) -> object:
                return teacher.sample(teacher.context(mel=m), generator=g)

            def griffin(m: torch.Tensor = mel) -> object:
                return [griffin_lim(m[i], student.mel_config, 32) for i in range(m.shape[0])]

            with torch.inference_mode():
                results = {
                    "student": timed(optimised, runs),
                    "student_module": timed(module, runs),
                    "griffin_lim_32": timed(griffin, runs),
                }
                teacher_runs = max(1, runs if seconds * batch <= 2 else 1)
                with _threads(teacher_threads):
                    results["teacher_cached"] = timed(cached, teacher_runs, warmup=0)
            results["teacher_cached"]["threads"] = teacher_threads or torch.get_num_threads()
            results["teacher_naive"] = {
                "seconds": naive["a"] * samples / batch + naive["b"] * (samples / batch) ** 2,
                "extrapolated": True,
                "measured_samples": naive["measured_samples"],
                "runs": naive["runs"],
                "threads": teacher_threads or torch.get_num_threads(),
            }
            for entry in results.values():
                entry["samples_per_second"] = samples / entry["seconds"]
                entry["x_real_time"] = entry["samples_per_second"] / rate
            row = {"batch": batch, "audio_seconds": samples / batch / rate, **results}
            row["ratio_student_teacher_cached"] = (
                results["teacher_cached"]["seconds"] / results["student"]["seconds"]
            )
            row["ratio_student_teacher_naive"] = (
                results["teacher_naive"]["seconds"] / results["student"]["seconds"]
            )
            row["speedup_optimised_vs_module"] = (
                results["student_module"]["seconds"] / results["student"]["seconds"]
            )
            log.info(
                "batch %d, %.1f s: student %.1fx real time, teacher cached %.3fx, ratio %.0f",
                batch,
                seconds,
                results["student"]["x_real_time"],
                results["teacher_cached"]["x_real_time"],
                row["ratio_student_teacher_cached"],
            )
            rows.append(row)
    return {"rows": rows, "quality": _quality(models, audio, quality_seconds)}


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run a block with ``count`` intra-op threads (0: unchanged)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _naive_teacher(
    teacher: GaussianWaveNet,
    student: IAFStudent,
    audio: np.ndarray,
    batch: int,
    hop: int,
    runs: int,
) -> dict[str, Any]:
    """Fit ``time(n) = a n + b n^2`` (per clip) to the naive sampler on two short clips."""
    lengths, seconds, runs = [hop, 2 * hop], [], 1  # minutes per run on a loaded machine
    for steps in lengths:
        mel = mels(student, audio, steps / student.sample_rate, batch)

        def naive(m: torch.Tensor = mel) -> object:
            return teacher.sample(teacher.context(mel=m), cached=False)

        with torch.inference_mode():
            seconds.append(timed(naive, runs, warmup=0)["seconds"])  # O(T^2): no warm-up
    (n1, n2), (t1, t2) = lengths, seconds
    b = max((t2 / n2 - t1 / n1) / (n2 - n1), 0.0)  # time/n = a + b n
    a = max(t1 / n1 - b * n1, 0.0)
    return {"a": a, "b": b, "measured_samples": lengths, "runs": runs}


def _quality(models: Models, audio: np.ndarray, seconds: float) -> dict[str, Any]:
    """Student and Griffin-Lim resynthesis of real speech: LSD (dB) and PESQ."""
    from training.metrics import griffin_lim, log_spectral_distance, pesq_score

    student, rate = models.student, models.student.sample_rate
    mel = mels(student, audio, seconds, 1)
    real = audio[: (mel.shape[-1] - 1) * student.hop_length]
    with torch.inference_mode():
        context = models.fast.context(mel=mel)
        fake = models.fast.generate(context, generator=torch.Generator().manual_seed(0))
    outputs = {
        "student": fake[0].numpy(),
        "griffin_lim_32": griffin_lim(mel[0], student.mel_config, 32),
    }
    return {
        "trained": models.trained,
        "audio_seconds": len(real) / rate,
        **{
            name: {
                "lsd_db": log_spectral_distance(real, out),
                "pesq": pesq_score(real, out, rate),
            }
            for name, out in outputs.items()
        },
    }


# ------------------------------------------------------------------------------ section 2
def student_flops(student: IAFStudent) -> dict[str, float]:
    """FLOPs per generated sample (a multiply-add is 2) from the student's layer shapes.

    The WaveNet flows, the mixed-excitation flow (its frame-rate voicing correction and the
    per-sample mixing), the FIR synthesis flow and the upsampler; the per-clip analysis
    (linear prediction, pitch) is context, timed with the generation but not counted here.
    """
    cfg, hop = student.config, student.hop_length
    net = cfg.wavenet
    res, gate, skip, kernel = (
        net.residual_channels, net.gate_channels, net.skip_channels, net.kernel_size
    )  # fmt: skip
    conditioner = student.wavenet_steps[0].conditioner
    assert isinstance(conditioner, WaveNetConditioner)
    first = conditioner.net
    in_channels = first.input_proj.in_channels
    cond = first.cond_projection
    frame_channels = student.upsampler.out_channels
    per_sample_cond = 0 if cond is None else cond.in_channels - frame_channels
    layers = net.layers
    outputs = 2 * (gate // 2) * ((res + skip) * (layers - 1) + skip)
    wavenet = (
        2 * in_channels * res
        + layers * 2 * kernel * res * gate
        + outputs
        + 2 * skip * skip
        + 2 * skip * 2
    )
    conditioning = layers * gate * (2 * frame_channels / hop + 2 * per_sample_cond + 2)
    flows = cfg.flows * (wavenet + (conditioning if cond is not None else 0))
    fir = 2 * cfg.source_filter.fir_taps if cfg.source_filter.enabled else 0
    # 1x1 frames -> voicing logit at frame rate; interpolation, sqrt(v) p_t and the scale
    excitation = 2 * frame_channels / hop + 6 if cfg.mixed_excitation else 0
    upsampler = sum(
        2 * m.in_channels * m.out_channels * m.kernel_size[0] / hop
        for m in student.upsampler.modules()
        if isinstance(m, torch.nn.Conv1d)
    )
    return {
        "wavenet_flows": float(flows),
        "fir_synthesis": float(fir),
        "upsampler": float(upsampler),
        "mixed_excitation": float(excitation),
        "total": float(flows + fir + upsampler + excitation),
    }


def matmul_peak(size: int = 2048, runs: int = 5) -> float:
    """fp32 GFLOP/s of a large ``torch.matmul`` with the current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = timed(lambda: torch.matmul(a, b), runs)["seconds"]
    return 2 * size**3 / seconds / 1e9


def thread_counts(models: Models, audio: np.ndarray, seconds: float, runs: int) -> list[dict]:
    """Student (batch 1) and matmul peak at 1 thread and at every core, same run."""
    fast, counts = models.fast, sorted({1, os.cpu_count() or 1})
    mel = mels(models.student, audio, seconds, 1)
    previous, rows = torch.get_num_threads(), []
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                result = timed(lambda: fast.generate(fast.context(mel=mel)), runs)
            rate = (mel.shape[-1] - 1) * models.student.hop_length / result["seconds"]
            rows.append(
                {
                    "threads": threads,
                    "samples_per_second": rate,
                    "x_real_time": rate / models.student.sample_rate,
                    "matmul_peak_gflops": matmul_peak(),
                }
            )
    finally:
        torch.set_num_threads(previous)
    return rows


def limit(models: Models, rows: list[dict[str, Any]]) -> dict[str, Any]:
    flops = student_flops(models.student)
    peak = matmul_peak()
    achieved = []
    for row in rows:
        gflops = flops["total"] * row["student"]["samples_per_second"] / 1e9
        achieved.append(
            {
                "batch": row["batch"],
                "audio_seconds": row["audio_seconds"],
                "gflops": gflops,
                "fraction_of_peak": gflops / peak,
            }
        )
    return {"flops_per_sample": flops, "matmul_peak_gflops": peak, "achieved": achieved}


# ------------------------------------------------------------------------------ section 3
def _resident_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def scaling(models: Models, audio: np.ndarray, durations: list[float], runs: int) -> dict:
    """Generation time and peak memory (growth of resident memory) against length."""
    fast, rows = models.fast, []
    for seconds in durations:
        mel = mels(models.student, audio, seconds, 1)

        def run(m: torch.Tensor = mel) -> object:
            return fast.generate(fast.context(mel=m), generator=torch.Generator().manual_seed(0))

        with torch.inference_mode():
            result = timed(run, runs)
            before = _resident_mb("VmRSS")
            peak = None
            if _reset_peak() and before is not None:
                run()
                high = _resident_mb("VmHWM")
                peak = None if high is None else max(high - before, 0.0)
        rows.append({"audio_seconds": seconds, "seconds": result["seconds"], "peak_mb": peak})
    x = np.log([r["audio_seconds"] for r in rows])
    y = np.log([r["seconds"] for r in rows])
    exponent = float(np.polyfit(x, y, 1)[0]) if len(rows) > 1 else float("nan")
    long = [r for r in rows if r["audio_seconds"] >= 2]
    exponent_long = (
        float(
            np.polyfit(
                np.log([r["audio_seconds"] for r in long]), np.log([r["seconds"] for r in long]), 1
            )[0]
        )
        if len(long) > 1
        else float("nan")
    )
    return {"rows": rows, "exponent": exponent, "exponent_from_2s": exponent_long}


# ------------------------------------------------------------------------------ section 4
def training(
    data: Path | None, teacher: Path | None, preset: str, steps: int, timeout: float = 900.0
) -> dict:
    """Training throughput with 1 process and 2 torchrun processes (subprocesses)."""
    data = data or _newest("*/data")
    if data is None or not (data / "prepared.json").is_file():
        return {"skipped": "no prepared corpus (pass --data or run `make demo` first)"}
    results: dict[str, Any] = {"data": str(data), "preset": preset}
    for job in ("teacher", "student"):
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "result.json"
                args = ["--data", str(data), "--job", job, "--preset", preset]
                args += ["--steps", str(steps), "--out", str(out)]
                if job == "student" and teacher is not None:
                    args += ["--teacher", str(teacher)]
                env = dict(os.environ)
                if processes == 1:
                    command = [sys.executable, "-m", "training.bench_train", *args]
                else:
                    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // processes))
                    command = [
                        sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", str(processes), "-m", "training.bench_train", *args,
                    ]  # fmt: skip
                key = f"{job}_{processes}proc"
                try:
                    done = subprocess.run(
                        command, env=env, capture_output=True, text=True, timeout=timeout
                    )
                except subprocess.TimeoutExpired:
                    results[key] = {"failed": f"timed out after {timeout:.0f} s"}
                    continue
                if done.returncode != 0 or not out.is_file():
                    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                    results[key] = {"failed": " | ".join(tail)}
                else:
                    results[key] = json.loads(out.read_text())
                log.info("training %s: %s", key, results[key])
    return results


# ------------------------------------------------------------------------------ section 5
def service(
    bundle: str, untrained: Path | None, seconds: float, timeout: float = 900.0
) -> dict[str, Any]:
    """``python -m service.loadtest`` on the same bundle, if the service ships it."""
    try:
        import service.loadtest  # noqa: F401
    except ImportError:
        return {"skipped": "service.loadtest is not available"}
    path = untrained if untrained is not None else Path(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "loadtest.json"
        command = [sys.executable, "-m", "service.loadtest", "--bundle", str(path)]
        command += ["--max-seconds", str(seconds), "--out", str(out)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"failed": f"timed out after {timeout:.0f} s"}
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"failed": " | ".join(tail)}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


# ------------------------------------------------------------------------------ command
def bench_command(
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="model bundle (default: newest runs/*/bundle)")
    ] = None,
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="teacher run (default: newest runs/*/teacher)")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="prepared corpus (default: newest runs/*/data)")
    ] = None,
    preset: Annotated[
        str, typer.Option("--preset", "-p", help="shapes of untrained models; training preset")
    ] = "cpu-8k",
    out: Annotated[
        Path | None, typer.Option("--out", help="JSON to write (default: benchmarks/results/)")
    ] = None,
    sections: Annotated[
        str, typer.Option("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ] = ",".join(SECTIONS),
    quick: Annotated[
        bool, typer.Option("--quick", help="short clips and single runs (a smoke test)")
    ] = False,
    chunk: Annotated[int, typer.Option("--chunk", help="InferenceStudent chunk")] = DEFAULT_CHUNK,
    threads: Annotated[int, typer.Option("--threads", help="intra-op threads (0: all)")] = 0,
    teacher_threads: Annotated[
        int, typer.Option("--teacher-threads", help="threads for teacher sampling (0: --threads)")
    ] = 1,
) -> None:
    """Benchmark student, teacher and Griffin-Lim side by side; write JSON, print a table.

    Without --bundle/--teacher it uses the newest runs/*/bundle and runs/*/teacher, or
    untrained models of the preset's shapes (marked "untrained (timing only)").
    """
    from training.bench_report import render_markdown

    chosen = [s.strip() for s in sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    runs = 1 if quick else 3
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "sections": chosen}
    with tempfile.TemporaryDirectory() as tmp:
        models = load_models(bundle, teacher, preset, chunk, Path(tmp))
        report["models"] = {
            "bundle": models.bundle,
            "teacher": models.teacher_source,
            "trained": models.trained,
            "student_config": models.student.config.model_dump(mode="json"),
            "teacher_config": models.teacher.config.model_dump(mode="json"),
            "student_parameters": sum(p.numel() for p in models.student.parameters()),
            "teacher_parameters": sum(p.numel() for p in models.teacher.parameters()),
            "inference_chunk": chunk,
        }
        durations = [0.1, 0.2] if quick else [1.0, 4.0]
        scale = [0.1, 0.2, 0.4] if quick else [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
        audio = speech(models.student.mel_config, max(scale) + 1)
        if "generation" in chosen or "limit" in chosen:
            batches = [1, 2] if quick else [1, 8]
            report["generation"] = generation(
                models, audio, batches, durations, runs, 0.5 if quick else 4.0, teacher_threads
            )
        if "limit" in chosen:
            report["limit"] = limit(models, report["generation"]["rows"])
            report["limit"]["threads"] = thread_counts(models, audio, durations[-1], runs)
        if "scaling" in chosen:
            report["scaling"] = scaling(models, audio, scale, runs)
        if "training" in chosen:
            report["training"] = training(
                data, teacher or _newest("*/teacher"), preset, 1 if quick else 3
            )
        if "service" in chosen:
            untrained = Path(tmp) / "untrained-bundle" if not Path(models.bundle).is_dir() else None
            report["service"] = service(models.bundle, untrained, 5.0 if quick else 20.0)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["bench_seconds"] = time.perf_counter() - started
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"bench-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    typer.echo(render_markdown(report))
    typer.echo(f"\nresults: {out}")

"""Markdown tables from a ``distilwave bench`` JSON (the README's "Performance" section).

python benchmarks/render_table.py benchmarks/results/bench-....json
"""

from __future__ import annotations

from typing import Any

GENERATORS = [
    ("student", "student (`InferenceStudent`, the bundle)"),
    ("student_module", "student (`IAFStudent` module, eager)"),
    ("teacher_cached", "teacher, autoregressive, cached queues"),
    ("teacher_naive", "teacher, autoregressive, naive (extrapolated\\*)"),
    ("griffin_lim_32", "Griffin-Lim, 32 iterations"),
]


def _rate(entry: dict[str, Any]) -> str:
    x = entry["x_real_time"]
    shown = f"{x:.3g}" if x < 10 else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"
    return f"{shown}× ({entry['samples_per_second']:,.0f}/s)"


def _ratio(value: float) -> str:
    return f"**{value:,.0f}×**" if value >= 10 else f"**{value:.1f}×**"


def _machine(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    models = report.get("models", {})
    load = m.get("load_average_start", [float("nan")])[0]
    trained = "trained" if models.get("trained") else "untrained, timing only"
    lines = [
        f"Measured by `make bench` on {m['cpu']}, {m['cores']} cores, {m['threads']} torch "
        f"threads, torch {m['torch']}, Python {m['python']} (1-min load average {load:.1f} at "
        f"the start; commit {m.get('git_commit')}). Models: {trained}.",
    ]
    return lines


def _generation(section: dict[str, Any]) -> list[str]:
    rows = section["rows"]
    heads = [f"batch {r['batch']}, {r['audio_seconds']:g} s" for r in rows]
    lines = [
        "| × real time (samples/s) | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for key, label in GENERATORS:
        lines.append(f"| {label} | " + " | ".join(_rate(r[key]) for r in rows) + " |")
    for key, label in [
        ("ratio_student_teacher_cached", "student / teacher cached"),
        ("ratio_student_teacher_naive", "student / teacher naive"),
        ("speedup_optimised_vs_module", "`InferenceStudent` / module"),
    ]:
        lines.append(f"| {label} | " + " | ".join(_ratio(r[key]) for r in rows) + " |")
    naive = rows[0]["teacher_naive"]["measured_samples"]
    teacher_threads = rows[0]["teacher_cached"].get("threads")
    lines += [
        "",
        f"\\* the naive teacher recomputes the whole prefix for every sample (O(T²)); it was "
        f"timed on {naive[0]}- and {naive[1]}-sample clips and extrapolated with "
        "time = a·T + b·T².",
    ]
    if teacher_threads is not None:
        lines.append(
            f"The teacher samples with {teacher_threads} thread(s) (its steps are tiny products "
            "that more threads only slow down); everything else with the threads above."
        )
    quality = section.get("quality")
    if quality:
        note = "" if quality["trained"] else " (untrained models: not a quality figure)"
        lines += [
            "",
            f"Quality on {quality['audio_seconds']:g} s of real speech from the same mel{note}:",
            "",
            "| | LSD (dB, lower is better) | PESQ-NB |",
            "|---|---|---|",
        ]
        for key, label in [("student", "student"), ("griffin_lim_32", "Griffin-Lim (32)")]:
            q = quality[key]
            lines.append(f"| {label} | {q['lsd_db']:.1f} | {q['pesq']:.2f} |")
    return lines


def _limit(section: dict[str, Any]) -> list[str]:
    flops = section["flops_per_sample"]
    peak = section["matmul_peak_gflops"]
    lines = [
        f"Student: {flops['total'] / 1e3:,.0f} kFLOP per sample (from its layer shapes); "
        f"fp32 matmul peak of this CPU, same run: {peak:.1f} GFLOP/s.",
        "",
        "| | achieved GFLOP/s | of matmul peak |",
        "|---|---|---|",
    ]
    for row in section["achieved"]:
        lines.append(
            f"| batch {row['batch']}, {row['audio_seconds']:g} s | {row['gflops']:.1f} | "
            f"{100 * row['fraction_of_peak']:.0f}% |"
        )
    threads = section.get("threads", [])
    if threads:
        lines += ["", "| threads | student, batch 1 | matmul peak (GFLOP/s) |", "|---|---|---|"]
        for row in threads:
            lines.append(f"| {row['threads']} | {_rate(row)} | {row['matmul_peak_gflops']:.1f} |")
    return lines


def _scaling(section: dict[str, Any]) -> list[str]:
    rows = section["rows"]
    lines = [
        "| audio (s) | " + " | ".join(f"{r['audio_seconds']:g}" for r in rows) + " |",
        "|---|" + "---|" * len(rows),
        "| time (s) | " + " | ".join(f"{r['seconds']:.3f}" for r in rows) + " |",
        "| peak memory (MB) | "
        + " | ".join("–" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}" for r in rows)
        + " |",
        "",
        f"Fitted exponent time ∝ length^k: k = {section['exponent']:.2f} over all lengths, "
        f"{section['exponent_from_2s']:.2f} from 2 s (fixed per-request costs dominate short "
        "clips).",
    ]
    return lines


def _training(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return [f"Not measured: {section['skipped']}."]
    lines = ["| step | processes | samples/s | s/step |", "|---|---|---|---|"]
    names = {
        "prior": "prior (spectral losses)",
        "teacher": "teacher (MLE)",
        "student": "distillation",
    }
    for job, name in names.items():
        for processes in (1, 2):
            entry = section.get(f"{job}_{processes}proc", {})
            if job == "prior" and not entry:  # a preset without the prior
                continue
            if "failed" in entry or not entry:
                lines.append(f"| {name} | {processes} | failed | |")
                continue
            lines.append(
                f"| {name} | {processes} | {entry['samples_per_second']:,.0f} | "
                f"{entry['seconds_per_step']:.2f} |"
            )
    return lines


def _service(section: dict[str, Any]) -> list[str]:
    if "skipped" in section or "failed" in section:
        return [f"Not measured: {section.get('skipped') or section.get('failed')}."]
    raw = section["raw_batch1"]
    lines = [
        f"{section['clip_seconds']:.2f} s clips; raw batch-1 model speed in the same run "
        f"{raw['times_real_time']:.1f}× real time.",
        "",
        "| clients | requests/s | audio s/s | p50 (s) | p95 (s) | p99 (s) | mean batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in section["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['throughput_rps']:.1f} | "
            f"{level['audio_seconds_per_second']:.1f} | {level['latency_p50_s']:.3f} | "
            f"{level['latency_p95_s']:.3f} | {level['latency_p99_s']:.3f} | "
            f"{level.get('server_mean_batch_size', float('nan')):.1f} |"
        )
    return lines


def _generalisation(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return [f"Not measured: {section['skipped']}."]
    lines = [
        "| voices the corpus lacks | files | PESQ-NB vocoder | PESQ-NB Griffin-Lim | "
        "LSD vocoder (dB) | LSD Griffin-Lim (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in section.items():
        if not isinstance(result, dict) or "vocoder" not in result:
            continue
        voc, gl = result["vocoder"], result["griffin_lim"]
        lines.append(
            f"| {name} | {len(result['files'])} | {voc['pesq']:.2f} | {gl['pesq']:.2f} | "
            f"{voc['lsd_db']:.2f} | {gl['lsd_db']:.2f} |"
        )
    if section.get("note"):
        lines += ["", f"({section['note']})"]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The README "Performance" section from a bench report."""
    lines = ["## Performance", "", *_machine(report)]
    parts = [
        ("generation", "Generation speed (from mel to waveform)", _generation),
        ("limit", "Closeness to the machine's limit", _limit),
        ("scaling", "Scaling with length (student, batch 1)", _scaling),
        ("generalisation", "Voices the training corpus lacks", _generalisation),
        ("training", "Training throughput", _training),
        ("service", "Service load test", _service),
    ]
    for key, title, render in parts:
        if key in report:
            lines += ["", f"### {title}", "", *render(report[key])]
    return "\n".join(lines) + "\n"

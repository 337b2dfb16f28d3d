"""``distilwave bench``: the benchmarks (``benchmarks/``), a JSON report and a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benchmarks.report import render_markdown
from benchmarks.run import SECTIONS, run_benchmarks
from models.errors import UserError
from models.inference import DEFAULT_CHUNK


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
    recordings: Annotated[
        list[Path] | None,
        typer.Option(
            "--recordings", help="a folder of your recordings (WAV/FLAC): a generalisation set"
        ),
    ] = None,
) -> None:
    """Benchmark student, teacher and Griffin-Lim side by side; write JSON, print a table.

    Without --bundle/--teacher it uses the newest runs/*/bundle and runs/*/teacher, or
    untrained models of the preset's shapes (marked "untrained (timing only)").
    """
    from benchmarks.generalisation import recording_paths

    for folder in recordings or []:
        if not recording_paths(folder):
            raise UserError(f"--recordings {folder}: not a folder of .wav or .flac recordings")
    report, path = run_benchmarks(
        bundle, teacher, data, preset, out,
        [s.strip() for s in sections.split(",") if s.strip()],
        quick, chunk, threads, teacher_threads, recordings,
    )  # fmt: skip
    typer.echo(render_markdown(report))
    typer.echo(f"\nresults: {path}")

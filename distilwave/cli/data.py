"""``distilwave data fetch`` and ``distilwave data prepare``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from models.errors import UserError
from training.config import load_preset
from training.data.sources import LAYOUTS

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

SHOW_SKIPPED = 20


@app.command()
def fetch(
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache folder (default: ${DISTILWAVE_CACHE:-~/.cache/distilwave}/corpora/"
            "asterisk-core-sounds-en-wav)."
        ),
    ] = None,
    install: Annotated[
        bool, typer.Option("--install", help="apt-get install the package (root only).")
    ] = False,
    deb: Annotated[
        Path | None, typer.Option(help="Unpack this downloaded .deb instead of using apt.")
    ] = None,
) -> None:
    """Fetch the default corpus (Debian asterisk-core-sounds-en-wav, CC-BY-SA-3.0), verified."""
    from training.data.fetch import fetch_default_corpus

    start = time.monotonic()
    audio_dir = fetch_default_corpus(cache_dir, install=install, deb=deb)
    count = sum(1 for _ in audio_dir.rglob("*.wav"))
    typer.echo(
        f"default corpus: {count} WAV files in {audio_dir} ({time.monotonic() - start:.1f} s)"
    )
    typer.echo(f"licence and attribution: {audio_dir / 'ATTRIBUTION.md'}")


def _summary(report: dict[str, Any]) -> list[str]:
    counts = report["counts"]
    splits = ", ".join(
        f"{name} {info['utterances']} ({info['seconds'] / 60:.1f} min)"
        for name, info in report["splits"].items()
    )
    lines = [
        f"kept {counts['kept']} utterances, {report['kept_hours']:.3f} h "
        f"({report['speakers']} speaker(s)): {splits}",
        f"processed {counts['processed']}, up to date {counts['reused']}, "
        f"skipped {counts['skipped']}, ignored {counts['ignored']} non-audio files; "
        f"{report['wall_seconds']:.1f} s",
    ]
    if report["skipped_by_kind"]:
        kinds = ", ".join(f"{kind} {count}" for kind, count in report["skipped_by_kind"].items())
        lines.append(f"skipped by reason: {kinds}")
        for record in report["skipped"][:SHOW_SKIPPED]:
            lines.append(f"  skipped {record['path']}: {record['reason']}")
        if len(report["skipped"]) > SHOW_SKIPPED:
            lines.append(f"  ... {len(report['skipped']) - SHOW_SKIPPED} more")
    lines.append(f"report: {Path(report['out']) / 'prepare_report.json'}")
    return lines


@app.command()
def prepare(
    src: Annotated[Path, typer.Argument(help="Folder of recordings (any nesting and format).")],
    out: Annotated[Path, typer.Argument(help="Prepared output folder (re-runs are incremental).")],
    preset: Annotated[str, typer.Option(help="Preset name or YAML path.")] = "cpu-8k",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a preset key: --set data.trim_top_db=30."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: the preset's data.workers).")
    ] = None,
    layout: Annotated[str, typer.Option(help=f"Source layout: {', '.join(LAYOUTS)}.")] = "auto",
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Start over if OUT has another mel configuration.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Resample, mix, trim and normalise recordings into shards, a manifest and a report."""
    from training.data.prepare import prepare_corpus

    if layout not in LAYOUTS:
        raise UserError(f"unknown --layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    loaded = load_preset(preset, set_ or [])
    report = prepare_corpus(
        src, out, loaded, workers=workers, layout=layout, rebuild=rebuild, progress=progress
    )
    for line in _summary(report):
        typer.echo(line)

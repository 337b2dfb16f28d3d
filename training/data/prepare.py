"""``distilwave data prepare``: any folder of recordings -> shards + manifest + report.

The prepared directory ``OUT``:

    prepared.json        format_version, mel + data config, speakers (index = speaker id),
                         counts, source, layout
    manifest.jsonl       one row per kept utterance (id, speaker, speaker_id, path, duration,
                         checksum, split, shard, num_samples, num_frames, ...)
    shards/shard-NNNNN.safetensors   int16 audio + float32 mel per utterance (``shards.py``)
    prepare_report.json  kept / skipped (with reasons) / ignored counts, wall time
    LICENSE, ATTRIBUTION.md, ...     licence files copied from the source root

Incremental: an utterance whose source file (path, size, mtime) and processing settings are
unchanged is re-used from its shard; so is a skip decision. Shards are never rewritten: new
and changed utterances go to new shards, and shards nothing refers to any more are deleted.
Preparing into an OUT made with another mel configuration is an error unless ``rebuild``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.config import Preset
from training.data.outputs import now_iso, prepared_payload, write_outputs
from training.data.processing import (
    Processed,
    Processor,
    ProcessSettings,
    Skipped,
    init_worker,
    process_in_worker,
    too_short_reason,
)
from models.files import atomic_write_json
from training.data.shards import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    PREPARED_FILE,
    REPORT_FILE,
    SHARD_DIR,
    ShardWriter,
    read_shard_rows,
    remove_temp_files,
    shard_paths,
)
from training.data.sources import SourceItem, scan_source
from models.errors import UserError

logger = logging.getLogger(__name__)

RETRY_KINDS = frozenset({"unreadable", "error", "missing", "duplicate_id"})


def _check_paths(src: Path, out: Path) -> None:
    if not src.exists():
        raise UserError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise UserError(f"source {src} is not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.resolve() == src.resolve():
        raise UserError("the output folder must differ from the source folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PREPARED_FILE).is_file():
        raise UserError(f"output {out} is not empty and holds no {PREPARED_FILE}; choose a new one")


def _open_output(out: Path, preset: Preset, rebuild: bool) -> None:
    """Create ``out`` or check it was prepared with the same front end (else error/rebuild)."""
    marker = out / PREPARED_FILE
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            message = f"{marker} is unreadable ({exc}); remove {out} or pick another"
            raise UserError(message) from exc
        old_mel = previous.get("mel")
        if previous.get("format_version") != FORMAT_VERSION or old_mel != preset.mel.model_dump():
            if not rebuild:
                raise UserError(
                    f"{out} was prepared with another mel configuration or format "
                    f"(sample rate {(old_mel or {}).get('sample_rate')} Hz, now "
                    f"{preset.mel.sample_rate} Hz); use a new output folder or --rebuild"
                )
            logger.warning("rebuilding %s from scratch: the mel configuration changed", out)
            shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
            for name in (MANIFEST_FILE, REPORT_FILE):
                (out / name).unlink(missing_ok=True)
        else:
            return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, prepared_payload(preset, [], {}, None, None, complete=False), sort_keys=False)


def _previous_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Every utterance stored in the shards (a later shard wins), including a killed run's."""
    rows: dict[str, dict[str, Any]] = {}
    for path in shard_paths(out):
        try:
            for row in read_shard_rows(path):
                rows[row["id"]] = row
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable shard %s (%s)", path, exc)
    return rows


def _previous_skips(out: Path) -> dict[str, dict[str, Any]]:
    try:
        report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
        return {record["id"]: record for record in report.get("skipped", [])}
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return {}


def _same_source(old: dict[str, Any], item: SourceItem, stat: os.stat_result) -> bool:
    return (
        old.get("path") == item.path
        and old.get("speaker") == item.speaker
        and old.get("source_size") == stat.st_size
        and old.get("source_mtime_ns") == stat.st_mtime_ns
    )


def _pool_context() -> multiprocessing.context.BaseContext:
    """Forkserver where there is one (workers fork from a server that imported the heavy
    modules once), else spawn; never plain fork after torch's threads started."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["training.data.processing", "librosa.effects"])
        return context
    return multiprocessing.get_context("spawn")


def _results(
    todo: list[SourceItem], settings: ProcessSettings, workers: int
) -> Iterator[Processed | Skipped]:
    """Process ``todo`` in order: in this process for one worker, else in a process pool."""
    if workers <= 1 or len(todo) <= 1:
        processor = Processor(settings)
        yield from (processor(item) for item in todo)
        return
    context = _pool_context()
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=init_worker, initargs=(settings,)
    ) as pool:
        # A bounded window of futures, consumed in order: shards come out deterministic and
        # memory stays flat however large the corpus.
        pending: deque[Future[Processed | Skipped]] = deque()
        items = iter(todo)
        while True:
            while len(pending) < 4 * workers and (item := next(items, None)) is not None:
                pending.append(pool.submit(process_in_worker, item))
            if not pending:
                return
            yield pending.popleft().result()


def _process_all(
    out: Path,
    todo: list[tuple[SourceItem, os.stat_result]],
    settings: ProcessSettings,
    shard_size: int,
    workers: int,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Process new or changed files into new shards; returns (kept rows, skip records)."""
    writer = ShardWriter(out, shard_size)
    skipped: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), unit="file", desc="prepare", disable=None if progress else True)
    try:
        results = _results([item for item, _ in todo], settings, workers)
        for (_item, stat), result in zip(todo, results, strict=True):
            source = {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
            if isinstance(result, Processed):
                writer.add({**result.row, **source}, result.audio, result.mel)
            else:
                skipped.append({**result.record, **source})
            bar.update(1)
        writer.flush()
    except BrokenProcessPool as exc:
        writer.flush()
        raise UserError(
            "a worker process died (a decoder crash?); completed shards are kept, re-run to "
            "continue or use --workers 1 to find the file",
            exit_code=1,
        ) from exc
    finally:
        bar.close()
    return writer.written, skipped


def prepare_corpus(
    src: str | Path,
    out: str | Path,
    preset: Preset,
    workers: int | None = None,
    layout: str = "auto",
    rebuild: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare every usable recording below ``src`` into ``out`` (see the module docstring).

    Args:
        src: The corpus folder.
        out: The prepared directory (created; re-used incrementally if it exists).
        preset: Gives the mel front end (``preset.mel``) and the data settings.
        workers: Processes that decode and featurise (default ``preset.data.workers``).
        layout: ``auto``, ``folder``, ``ljspeech`` or ``speakers`` (``sources.py``).
        rebuild: Start over when ``out`` was prepared with another mel configuration.
        progress: Show a progress bar (on a terminal).

    Returns:
        The report also written to ``out/prepare_report.json``.

    Raises:
        UserError: Bad paths or layout, a mismatched ``out``, or no usable audio (exit 2).
    """
    started, start_time = now_iso(), time.monotonic()
    src, out = Path(src).expanduser().absolute(), Path(out).expanduser().absolute()
    workers = preset.data.workers if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    _check_paths(src, out)
    try:
        scan = scan_source(src, layout, exclude=out)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    _open_output(out, preset, rebuild)
    remove_temp_files(out)
    settings = ProcessSettings.from_preset(preset)
    stored, old_skips = _previous_rows(out), _previous_skips(out)

    kept: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, Any]] = list(scan.problems)
    todo: list[tuple[SourceItem, os.stat_result]] = []
    stale = reused = 0
    for item in scan.items:
        try:
            stat = os.stat(item.path)
        except OSError as exc:
            reason = f"cannot stat: {exc.strerror}"
            skipped.append({**asdict(item), "kind": "unreadable", "reason": reason})
            continue
        row, skip = stored.get(item.id), old_skips.get(item.id)
        if row is not None and _same_source(row, item, stat):
            if row.get("fingerprint") == settings.fingerprint:
                if row["num_samples"] >= settings.min_samples:
                    kept[item.id] = row
                else:
                    reason = too_short_reason(
                        row["num_samples"], settings.min_samples, preset.mel.sample_rate
                    )
                    skipped.append({**row, "kind": "too_short", "reason": reason})
                reused += 1
                continue
            stale += 1
        elif (
            skip is not None
            and _same_source(skip, item, stat)
            and skip.get("fingerprint") == settings.fingerprint
            and skip.get("kind") not in RETRY_KINDS
            and not (skip["kind"] == "too_short" and skip["num_samples"] >= settings.min_samples)
        ):
            skipped.append(skip)
            reused += 1
            continue
        todo.append((item, stat))
    if stale:
        logger.warning("processing settings changed: re-processing %d stored utterances", stale)
    logger.info(
        "%s: %d files (%s layout), %d up to date, %d to process with %d worker(s)",
        src,
        len(scan.items),
        scan.layout,
        len(kept),
        len(todo),
        workers,
    )
    new_rows, new_skips = _process_all(
        out, todo, settings, preset.data.shard_size, workers, progress
    )
    kept.update((row["id"], row) for row in new_rows)
    skipped.extend(new_skips)
    rows = [kept[item.id] for item in scan.items if item.id in kept]
    report = write_outputs(src, out, preset, rows, skipped, scan)
    report["counts"].update(processed=len(todo), reused=reused)
    report.update(
        started=started, workers=workers, wall_seconds=round(time.monotonic() - start_time, 3)
    )
    atomic_write_json(out / REPORT_FILE, report, sort_keys=False)
    if not rows:
        raise UserError(
            f"no usable audio in {src}: {len(scan.items)} audio file(s) found, "
            f"{len(skipped)} skipped (see {out / REPORT_FILE})"
        )
    return report

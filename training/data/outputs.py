"""The prepared directory's outputs: split, manifest, ``prepared.json``, report, licences."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.config import Preset
from models.files import atomic_write_json, atomic_write_text
from training.data.shards import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    PREPARED_FILE,
    SHARD_DIR,
    shard_paths,
)
from training.data.sources import SourceScan
from training.data.split import SPLITS, assign_splits

logger = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def prepared_payload(
    preset: Preset,
    speakers: list[str],
    counts: dict[str, Any],
    source: Path | None,
    layout: str | None,
    complete: bool,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "complete": complete,
        "preset": preset.name,
        "mel": preset.mel.model_dump(),
        "data": preset.data.model_dump(),
        "speakers": speakers,
        "counts": counts,
        "source": str(source) if source else None,
        "layout": layout,
        "shard_format": "safetensors (audio/<id> int16 (T,), mel/<id> float32 (n_mels, F))",
        "updated": now_iso(),
    }


def write_outputs(
    src: Path,
    out: Path,
    preset: Preset,
    rows: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    scan: SourceScan,
) -> dict[str, Any]:
    """Split, write the manifest and prepared.json, copy licences, drop unused shards.

    Returns:
        The report (without run timing, which the caller adds).
    """
    data = preset.data
    splits = assign_splits(
        (row["id"] for row in rows), data.split_seed, data.val_fraction, data.test_fraction
    )
    speakers = sorted({row["speaker"] for row in rows})
    speaker_ids = {name: index for index, name in enumerate(speakers)}
    lines = []
    for row in rows:
        row["split"] = splits[row["id"]]
        row["speaker_id"] = speaker_ids[row["speaker"]]
        lines.append(json.dumps(row, sort_keys=True))
    atomic_write_text(out / MANIFEST_FILE, "".join(f"{line}\n" for line in lines))

    seconds = {name: 0.0 for name in SPLITS}
    utterances = Counter(row["split"] for row in rows)
    for row in rows:
        seconds[row["split"]] += row["duration"]
    counts: dict[str, Any] = {
        "utterances": len(rows),
        **{name: utterances.get(name, 0) for name in SPLITS},
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "hours": round(sum(seconds.values()) / 3600.0, 4),
        "speakers": len(speakers),
    }
    atomic_write_json(
        out / PREPARED_FILE, prepared_payload(preset, speakers, counts, src, scan.layout, True)
    , sort_keys=False)
    for path in scan.licence_files:
        try:
            shutil.copyfile(path, out / path.name)
        except OSError as exc:
            logger.warning("could not copy %s (%s)", path, exc)
    # Utterances now shorter than a segment keep their shard: a shorter segment re-uses them.
    referenced = {row["shard"] for row in rows} | {r["shard"] for r in skipped if "shard" in r}
    for path in shard_paths(out):
        if f"{SHARD_DIR}/{path.name}" not in referenced:
            path.unlink(missing_ok=True)

    by_kind = Counter(record["kind"] for record in skipped)
    return {
        "format_version": FORMAT_VERSION,
        "source": str(src),
        "out": str(out),
        "layout": scan.layout,
        "preset": preset.name,
        "counts": {
            "audio_files": len(scan.items),
            "kept": len(rows),
            "skipped": len(skipped),
            "ignored": sum(scan.ignored.values()),
        },
        "kept_hours": counts["hours"],
        "splits": {
            name: {"utterances": counts[name], "seconds": counts["seconds"][name]}
            for name in SPLITS
        },
        "speakers": len(speakers),
        "skipped_by_kind": dict(sorted(by_kind.items())),
        "skipped": sorted(skipped, key=lambda record: record["path"]),
        "ignored": {"by_reason": dict(scan.ignored), "examples": scan.ignored_examples},
    }

"""Shard files.

A shard is one safetensors file holding, for each of up to ``shard_size`` utterances,
``audio/<id>`` (int16 ``(T,)``, loudness-normalised, ``T`` a multiple of hop) and
``mel/<id>`` (float32 ``(n_mels, T // hop + 1)``). Its header metadata carries the manifest
rows of those utterances, so a shard is self-describing: a run that stops half-way leaves
only whole shards (temp file, fsync, rename), and the next run adopts them.

Readers memory-map shards (``safe_open``) and slice lazily: a DataLoader worker reads only the
samples and frames of the segment it draws, never a whole shard.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save

from models.files import atomic_write

FORMAT_VERSION = 1  # of the prepared directory (prepared.json, manifest, shards)
PREPARED_FILE = "prepared.json"
MANIFEST_FILE = "manifest.jsonl"
REPORT_FILE = "prepare_report.json"
SHARD_DIR = "shards"
SHARD_FORMAT_VERSION = "1"
_SHARD_NAME = re.compile(r"^shard-(\d{5,})\.safetensors$")


def audio_key(utt_id: str) -> str:
    return f"audio/{utt_id}"


def mel_key(utt_id: str) -> str:
    return f"mel/{utt_id}"


def shard_paths(out: Path) -> list[Path]:
    """Every complete shard under ``out/shards``, in the order they were written."""
    folder = out / SHARD_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _SHARD_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def next_shard_index(out: Path) -> int:
    paths = shard_paths(out)
    if not paths:
        return 0
    match = _SHARD_NAME.match(paths[-1].name)
    return int(match.group(1)) + 1 if match else 0


def remove_temp_files(out: Path) -> None:
    """Delete temp files a killed run may have left (they are never referenced)."""
    folder = out / SHARD_DIR
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)


def read_shard_rows(path: Path) -> list[dict[str, Any]]:
    """The manifest rows stored in a shard's header (no tensor data is read)."""
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format_version") != SHARD_FORMAT_VERSION:
        version = metadata.get("format_version")
        raise ValueError(f"{path}: not a distilwave shard (format {version})")
    rows: list[dict[str, Any]] = json.loads(metadata["rows"])
    return rows


class ShardWriter:
    """Collects processed utterances and writes them ``shard_size`` at a time, atomically.

    Args:
        out: The prepared directory; shards go to ``out/shards/shard-NNNNN.safetensors``.
        shard_size: Utterances per shard.
    """

    def __init__(self, out: Path, shard_size: int) -> None:
        self.out = out
        self.shard_size = shard_size
        self.index = next_shard_index(out)
        self.rows: list[dict[str, Any]] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.written: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any], audio: np.ndarray, mel: np.ndarray) -> None:
        """Queue one utterance: ``audio`` int16 ``(T,)``, ``mel`` float32 ``(n_mels, T//hop+1)``."""
        self.rows.append(row)
        self.tensors[audio_key(row["id"])] = np.ascontiguousarray(audio, dtype=np.int16)
        self.tensors[mel_key(row["id"])] = np.ascontiguousarray(mel, dtype=np.float32)
        if len(self.rows) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued utterances as one shard (nothing if the queue is empty)."""
        if not self.rows:
            return
        relative = f"{SHARD_DIR}/shard-{self.index:05d}.safetensors"
        for row in self.rows:
            row["shard"] = relative
        metadata = {"format_version": SHARD_FORMAT_VERSION, "rows": json.dumps(self.rows)}
        atomic_write(self.out / relative, save(self.tensors, metadata=metadata))
        self.written.extend(self.rows)
        self.index += 1
        self.rows, self.tensors = [], {}

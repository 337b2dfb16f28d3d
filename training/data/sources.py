"""Find the utterances of a corpus folder: plain folders, LJSpeech, VCTK-style speaker folders.

Layouts:
    ``folder``: audio files anywhere below ``SRC`` (nested folders are fine), one speaker
    named after ``SRC``.
    ``ljspeech``: ``SRC/metadata.csv`` (``id|text|...``) and ``SRC/wavs/<id>.wav``, one speaker.
    ``speakers``: one folder per speaker (VCTK: under ``wav48_silence_trimmed/`` or ``wav48/``
    when present); the folder name is the speaker label used for global conditioning.
    ``auto``: ``ljspeech`` if ``metadata.csv`` and ``wavs/`` exist, ``speakers`` if VCTK markers
    (``speaker-info.txt``, ``wav48*/``) exist, else ``folder``.

Utterance ids are the path below the layout root without its extension (``digits/7``),
or the LJSpeech id. Files are decided by content, not extension, once they are picked up:
a ``.wav`` that holds text is skipped later as undecodable.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Layout = Literal["auto", "folder", "ljspeech", "speakers"]
LAYOUTS: tuple[str, ...] = ("auto", "folder", "ljspeech", "speakers")

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".aif",
        ".aiff",
        ".aifc",
        ".au",
        ".snd",
        ".w64",
        ".rf64",
        ".caf",
        ".m4a",
    }
)
LICENCE_PREFIXES = ("license", "licence", "copying", "copyright", "attribution", "readme")
VCTK_AUDIO_DIRS = ("wav48_silence_trimmed", "wav48")
MAX_IGNORED_EXAMPLES = 20


@dataclass(frozen=True)
class SourceItem:
    """One utterance to prepare: a unique id, its speaker label and the absolute file path."""

    id: str
    speaker: str
    path: str


@dataclass
class SourceScan:
    """What a source folder holds: utterances to prepare and files passed over, with why."""

    layout: str
    root: Path
    items: list[SourceItem] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    ignored_examples: list[str] = field(default_factory=list)
    licence_files: list[Path] = field(default_factory=list)

    def ignore(self, path: Path, reason: str) -> None:
        self.ignored[reason] += 1
        if len(self.ignored_examples) < MAX_IGNORED_EXAMPLES:
            self.ignored_examples.append(f"{path}: {reason}")

    def problem(self, utt_id: str, path: Path, kind: str, reason: str) -> None:
        self.problems.append({"id": utt_id, "path": str(path), "kind": kind, "reason": reason})


def detect_layout(src: Path) -> str:
    """The layout ``auto`` resolves to for ``src``."""
    if (src / "metadata.csv").is_file() and (src / "wavs").is_dir():
        return "ljspeech"
    if (src / "speaker-info.txt").is_file() or any((src / d).is_dir() for d in VCTK_AUDIO_DIRS):
        return "speakers"
    return "folder"


def _walk(root: Path, scan: SourceScan, exclude: Path | None) -> list[Path]:
    """Audio-extension files below ``root`` in sorted order; hidden entries are passed over."""

    def on_error(error: OSError) -> None:
        name = Path(error.filename or root)
        scan.problem(name.name, name, "unreadable", f"cannot list folder: {error.strerror}")

    found = []
    for folder, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        here = Path(folder)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in sorted(filenames):
            path = here / name
            if name.startswith("."):
                continue
            if path.suffix.lower() in AUDIO_EXTENSIONS:
                found.append(path)
            elif here == root and name.lower().startswith(LICENCE_PREFIXES):
                scan.licence_files.append(path)
            else:
                scan.ignore(path, f"not an audio extension ({path.suffix or 'none'})")
    return found


def _add(scan: SourceScan, seen: dict[str, Path], item: SourceItem) -> None:
    if item.id in seen:
        scan.problem(
            item.id,
            Path(item.path),
            "duplicate_id",
            f"same id as {seen[item.id]} (same name, another extension)",
        )
        return
    seen[item.id] = Path(item.path)
    scan.items.append(item)


def _utterance_id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _scan_folder(src: Path, scan: SourceScan, exclude: Path | None) -> None:
    speaker = src.name or "speaker"
    seen: dict[str, Path] = {}
    for path in _walk(src, scan, exclude):
        _add(scan, seen, SourceItem(_utterance_id(path, src), speaker, str(path.absolute())))


def _scan_speakers(src: Path, scan: SourceScan, exclude: Path | None) -> None:
    root = next((src / d for d in VCTK_AUDIO_DIRS if (src / d).is_dir()), src)
    seen: dict[str, Path] = {}
    for path in _walk(root, scan, exclude):
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            scan.ignore(path, "audio outside a speaker folder")
            continue
        _add(scan, seen, SourceItem(_utterance_id(path, root), parts[0], str(path.absolute())))
    if root != src:
        scan.licence_files.extend(
            p
            for p in sorted(src.iterdir())
            if p.is_file() and p.name.lower().startswith(LICENCE_PREFIXES)
        )


def _scan_ljspeech(src: Path, scan: SourceScan, exclude: Path | None) -> None:
    speaker = src.name or "speaker"
    wavs = src / "wavs"
    listed: set[str] = set()
    seen: dict[str, Path] = {}
    with (src / "metadata.csv").open(encoding="utf-8", newline="") as handle:
        for fields in csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE):
            if not fields or not fields[0].strip():
                continue
            utt_id = fields[0].strip()
            path = wavs / f"{utt_id}.wav"
            listed.add(utt_id)
            if not path.is_file():
                scan.problem(utt_id, path, "missing", "listed in metadata.csv but not in wavs/")
                continue
            _add(scan, seen, SourceItem(utt_id, speaker, str(path.absolute())))
    for path in _walk(wavs, scan, exclude):
        if _utterance_id(path, wavs) not in listed:
            scan.ignore(path, "not listed in metadata.csv")
    scan.licence_files.extend(
        p
        for p in sorted(src.iterdir())
        if p.is_file() and p.name.lower().startswith(LICENCE_PREFIXES)
    )


def scan_source(src: Path, layout: str = "auto", exclude: Path | None = None) -> SourceScan:
    """List the utterances of ``src`` (see the module docstring for the layouts).

    Args:
        src: An existing folder.
        layout: One of ``LAYOUTS``.
        exclude: A folder never to descend into (the prepared output, if it is inside ``src``).

    Raises:
        ValueError: For an unknown layout, or ``ljspeech`` without ``metadata.csv``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    src = src.absolute()
    resolved = detect_layout(src) if layout == "auto" else layout
    if resolved == "ljspeech" and not (src / "metadata.csv").is_file():
        raise ValueError(f"{src} has no metadata.csv: not an LJSpeech layout")
    scan = SourceScan(layout=resolved, root=src)
    exclude = exclude.resolve() if exclude is not None else None
    if resolved == "ljspeech":
        _scan_ljspeech(src, scan, exclude)
    elif resolved == "speakers":
        _scan_speakers(src, scan, exclude)
    else:
        _scan_folder(src, scan, exclude)
    return scan

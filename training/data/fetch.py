"""``distilwave data fetch``: the default corpus, real recorded speech from Debian's archive.

Debian's ``asterisk-core-sounds-en-wav`` holds the Asterisk English prompts read by Allison
Smith: 568 WAV files, about 25 minutes, 8 kHz 16-bit mono, CC-BY-SA-3.0. Without root it is
fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (or, without dpkg, by
reading the .deb's ar + tar members directly) into a cache folder:

    <cache>/en_US_f_Allison/        the audio (folder layout; the folder name is the speaker)
                  ATTRIBUTION.md    who recorded it, the licence, where it came from
                  COPYRIGHT         Debian's copyright file, verbatim
    <cache>/corpus.json             package, version, sha256 of every file (verification)

With ``install`` (root only) ``apt-get install`` puts it under ``/usr/share/asterisk`` and it is
copied into the same cache layout. A second run verifies the checksums and returns at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from models.files import atomic_write_json, atomic_write_text
from models.errors import UserError

logger = logging.getLogger(__name__)

PACKAGE = "asterisk-core-sounds-en-wav"
SPEAKER = "en_US_f_Allison"
SOUNDS_DIR = f"usr/share/asterisk/sounds/{SPEAKER}"
COPYRIGHT_FILE = f"usr/share/doc/{PACKAGE}/copyright"
LICENSE_URL = "https://creativecommons.org/licenses/by-sa/3.0/"
MARKER = "corpus.json"
NO_APT_HELP = (
    f"on a system without apt, download the {PACKAGE} .deb from any Debian mirror "
    "(pool/main/a/asterisk-core-sounds/) and run `distilwave data fetch --deb FILE`, "
    "or prepare any folder of speech recordings with `distilwave data prepare SRC OUT`"
)

ATTRIBUTION = """# Default corpus: Asterisk core sound prompts (English, Allison Smith)

- Package: Debian `{package}` version {version}
- Recorded by: Allison Smith (http://www.theivrvoice.com); financial contributions by
  Digium, Inc. (http://www.digium.com)
- Copyright: 2003-2010, Allison Smith
- Licence: Creative Commons Attribution-ShareAlike 3.0 (CC-BY-SA-3.0), {url}
- Upstream: http://downloads.asterisk.org/pub/telephony/asterisk/ (asterisk-core-sounds)
- Debian's copyright file, with the full licence text, is `COPYRIGHT` beside this file.

distilwave uses these recordings, resampled, trimmed and loudness-normalised, as training
data. Anything you distribute that is derived from them must credit Allison Smith and carry
the CC-BY-SA-3.0 licence.
"""


def default_cache_dir() -> Path:
    """``${DISTILWAVE_CACHE:-~/.cache/distilwave}/corpora/asterisk-core-sounds-en-wav``."""
    base = Path(os.environ.get("DISTILWAVE_CACHE") or "~/.cache/distilwave").expanduser()
    return base / "corpora" / PACKAGE


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inventory(audio_dir: Path) -> dict[str, str]:
    return {
        path.relative_to(audio_dir).as_posix(): _sha256(path)
        for path in sorted(audio_dir.rglob("*.wav"))
    }


def verify_corpus(cache_dir: Path) -> Path | None:
    """The audio folder if ``cache_dir`` holds a complete, unmodified corpus, else ``None``."""
    try:
        record = json.loads((cache_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    audio_dir = cache_dir / SPEAKER
    try:
        found = _inventory(audio_dir)
    except OSError:
        return None
    if not found or found != record.get("files"):
        logger.warning("%s does not match its checksums; fetching again", audio_dir)
        return None
    return audio_dir


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    logger.info("running %s", " ".join(command))
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)


def _apt_download(workdir: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise UserError(f"apt-get is not available: {NO_APT_HELP}")
    result = _run(["apt-get", "download", PACKAGE], cwd=workdir)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        detail = (result.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
        raise UserError(
            f"`apt-get download {PACKAGE}` failed ({detail}); run `apt-get update` as root "
            f"first, or {NO_APT_HELP}",
            exit_code=1,
        )
    return debs[0]


def _deb_version(deb: Path) -> str:
    parts = deb.name.split("_")
    return parts[1].replace("%3a", ":") if len(parts) >= 3 else "unknown"


def _ar_members(deb: Path) -> dict[str, bytes]:
    """The members of a .deb (a plain ``ar`` archive)."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise UserError(f"{deb} is not a .deb package (no ar header)")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    return members


def _extract_python(deb: Path, target: Path) -> None:
    """``dpkg-deb -x`` for systems without dpkg: ar -> data.tar.{xz,gz,bz2} -> files."""
    members = _ar_members(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None or name.endswith(".zst"):
        raise UserError(f"{deb}: cannot unpack {name or 'its data'} without dpkg-deb")
    with tarfile.open(fileobj=io.BytesIO(members[name]), mode="r:*") as archive:
        wanted = [
            m
            for m in archive.getmembers()
            if m.name.lstrip("./").startswith((SOUNDS_DIR, COPYRIGHT_FILE))
        ]
        archive.extractall(target, members=wanted, filter="data")


def _extract(deb: Path, target: Path) -> None:
    if shutil.which("dpkg-deb"):
        result = _run(["dpkg-deb", "-x", str(deb), str(target)])
        if result.returncode != 0:
            raise UserError(f"dpkg-deb could not unpack {deb}: {result.stderr.strip()}")
    else:
        _extract_python(deb, target)


def _install_system() -> tuple[Path, Path, str]:
    if shutil.which("apt-get") is None:
        raise UserError(f"--install needs apt-get: {NO_APT_HELP}")
    if os.geteuid() != 0:
        raise UserError("--install needs root; without it `distilwave data fetch` needs no root")
    result = _run(["apt-get", "install", "-y", "--no-install-recommends", PACKAGE])
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise UserError(f"apt-get install {PACKAGE} failed: {detail}", exit_code=1)
    query = _run(["dpkg-query", "-W", "-f=${Version}", PACKAGE])
    root = Path("/")
    return root / SOUNDS_DIR, root / COPYRIGHT_FILE, query.stdout.strip() or "unknown"


def fetch_default_corpus(
    cache_dir: str | Path | None = None, install: bool = False, deb: str | Path | None = None
) -> Path:
    """Make the default corpus available and verified; returns its audio folder.

    Args:
        cache_dir: Where to keep it (default ``default_cache_dir()``).
        install: ``apt-get install`` the package system-wide (root only) instead of unpacking.
        deb: Unpack this already downloaded .deb instead of asking apt.

    Raises:
        UserError: No apt and no ``deb``, a failed download, or a broken package.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if (audio_dir := verify_corpus(cache)) is not None:
        return audio_dir
    cache.mkdir(parents=True, exist_ok=True)
    (cache / MARKER).unlink(missing_ok=True)
    audio_dir = cache / SPEAKER
    if audio_dir.exists():
        shutil.rmtree(audio_dir)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        work = Path(tmp)
        if install:
            sounds, copyright_file, version = _install_system()
            method = "apt-get install"
        else:
            package = Path(deb).expanduser() if deb is not None else _apt_download(work)
            if not package.is_file():
                raise UserError(f"{package} does not exist")
            _extract(package, work / "root")
            sounds, copyright_file = work / "root" / SOUNDS_DIR, work / "root" / COPYRIGHT_FILE
            version, method = _deb_version(package), "apt-get download + unpack"
        if not sounds.is_dir() or not any(sounds.rglob("*.wav")):
            raise UserError(f"the {PACKAGE} package holds no WAV files under /{SOUNDS_DIR}")
        if install:
            shutil.copytree(sounds, audio_dir)
        else:
            shutil.move(str(sounds), audio_dir)
        _record(cache, audio_dir, copyright_file, version, method)
    return audio_dir


def _record(cache: Path, audio_dir: Path, copyright_file: Path, version: str, method: str) -> None:
    """Write the attribution beside the audio, then the checksums that mark completion."""
    text = ATTRIBUTION.format(package=PACKAGE, version=version, url=LICENSE_URL)
    atomic_write_text(audio_dir / "ATTRIBUTION.md", text)
    if copyright_file.is_file():
        shutil.copyfile(copyright_file, audio_dir / "COPYRIGHT")
    else:
        logger.warning("the package has no %s; ATTRIBUTION.md states the licence", COPYRIGHT_FILE)
    files = _inventory(audio_dir)
    record: dict[str, Any] = {
        "package": PACKAGE,
        "version": version,
        "method": method,
        "license": "CC-BY-SA-3.0",
        "speaker": SPEAKER,
        "audio_dir": str(audio_dir),
        "files": files,
    }
    atomic_write_json(cache / MARKER, record, sort_keys=False)
    logger.info("%s %s: %d WAV files in %s", PACKAGE, version, len(files), audio_dir)


def resolve_corpus(corpus: str, cache_dir: str | Path | None = None) -> Path:
    """``DataConfig.corpus`` -> a folder: ``"asterisk"`` fetches the default corpus."""
    if corpus == "asterisk":
        return fetch_default_corpus(cache_dir)
    path = Path(corpus).expanduser()
    if not path.is_dir():
        raise UserError(f"corpus folder {path} does not exist (or use corpus: asterisk)")
    return path

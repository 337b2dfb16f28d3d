"""Fixtures shared by the training tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests.training.test_data_support import clips
from training.data import fetch


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _ar(members: dict[str, bytes]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
        out += [header.encode("ascii"), data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


@pytest.fixture()
def deb(tmp_path: Path) -> Path:
    """A miniature asterisk-core-sounds-en-wav package holding three fixture clips."""
    sounds = fetch.SOUNDS_DIR
    data = {
        f"{sounds}/{clips()[0].name}": clips()[0].read_bytes(),
        f"{sounds}/digits/{clips()[3].name}": clips()[3].read_bytes(),
        f"{sounds}/{clips()[5].name}": clips()[5].read_bytes(),
        fetch.COPYRIGHT_FILE: b"Files: *\nCopyright: 2003-2010, Allison Smith\n",
    }
    control = _tar_xz({"control": f"Package: {fetch.PACKAGE}\nVersion: 9.9-1\n".encode()})
    members = {"debian-binary": b"2.0\n", "control.tar.xz": control, "data.tar.xz": _tar_xz(data)}
    path = tmp_path / f"{fetch.PACKAGE}_9.9-1_all.deb"
    path.write_bytes(_ar(members))
    return path

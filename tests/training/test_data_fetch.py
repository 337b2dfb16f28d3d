"""``fetch_default_corpus`` on a small .deb built here (no network, no apt)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from models.errors import UserError
from training.data import fetch


def _check(audio_dir: Path, cache: Path) -> None:
    assert audio_dir == cache / fetch.SPEAKER
    assert len(list(audio_dir.rglob("*.wav"))) == 3
    attribution = (audio_dir / "ATTRIBUTION.md").read_text()
    assert "Allison Smith" in attribution and "CC-BY-SA-3.0" in attribution
    assert "9.9-1" in attribution
    assert "Allison Smith" in (audio_dir / "COPYRIGHT").read_text()


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_unpacks_with_dpkg_deb(tmp_path: Path, deb: Path) -> None:
    subprocess.run(["dpkg-deb", "--info", str(deb)], check=True, capture_output=True)
    _check(fetch.fetch_default_corpus(tmp_path / "cache", deb=deb), tmp_path / "cache")


def test_fetch_unpacks_without_dpkg(
    tmp_path: Path, deb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    _check(fetch.fetch_default_corpus(tmp_path / "cache", deb=deb), tmp_path / "cache")


def test_second_fetch_only_verifies(
    tmp_path: Path, deb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = fetch.fetch_default_corpus(tmp_path / "cache", deb=deb)

    def no_unpacking(*args: object) -> None:
        raise AssertionError("a verified corpus must not be fetched again")

    monkeypatch.setattr(fetch, "_extract", no_unpacking)
    assert fetch.fetch_default_corpus(tmp_path / "cache") == first


def test_modified_corpus_is_fetched_again(tmp_path: Path, deb: Path) -> None:
    audio_dir = fetch.fetch_default_corpus(tmp_path / "cache", deb=deb)
    victim = next(audio_dir.rglob("*.wav"))
    victim.write_bytes(b"damaged")
    assert fetch.verify_corpus(tmp_path / "cache") is None
    fetch.fetch_default_corpus(tmp_path / "cache", deb=deb)
    assert victim.read_bytes() != b"damaged"
    assert fetch.verify_corpus(tmp_path / "cache") == audio_dir


def test_no_apt_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="--deb") as caught:
        fetch.fetch_default_corpus(tmp_path / "cache")
    assert caught.value.exit_code == 2


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package\n")

    monkeypatch.setattr(fetch.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(fetch, "_run", failing_run)
    with pytest.raises(UserError, match="apt-get update") as caught:
        fetch.fetch_default_corpus(tmp_path / "cache")
    assert caught.value.exit_code == 1


def test_not_a_deb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    bogus = tmp_path / "bogus.deb"
    bogus.write_text("hello")
    with pytest.raises(UserError, match="not a .deb"):
        fetch.fetch_default_corpus(tmp_path / "cache", deb=bogus)


def test_default_cache_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILWAVE_CACHE", str(tmp_path))
    assert fetch.default_cache_dir() == tmp_path / "corpora" / fetch.PACKAGE


def test_resolve_corpus_accepts_a_folder_and_rejects_a_missing_one(tmp_path: Path) -> None:
    assert fetch.resolve_corpus(str(tmp_path)) == tmp_path
    with pytest.raises(UserError, match="does not exist"):
        fetch.resolve_corpus(str(tmp_path / "nope"))

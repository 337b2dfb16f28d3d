"""Re-running ``prepare_corpus``: what is up to date is re-used, what changed is redone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import soundfile as sf

from models.errors import UserError
from tests.training.test_data_support import clips, copy_clips, manifest, rows_by_id, tiny_preset
from training.data import processing
from training.data.prepare import prepare_corpus


def _prepare(src: Path, out: Path, **data: object) -> dict:
    return prepare_corpus(src, out, tiny_preset(**data), progress=False)


def _shards(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "shards").iterdir())}


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    src, out = tmp_path / "src", tmp_path / "out"
    copy_clips(src, 6)
    _prepare(src, out)
    return src, out


def test_second_run_processes_nothing_and_keeps_shards(corpus: tuple[Path, Path]) -> None:
    src, out = corpus
    before_manifest, before_shards = manifest(out), _shards(out)
    report = _prepare(src, out)
    assert report["counts"]["processed"] == 0
    assert report["counts"]["reused"] == 6
    assert manifest(out) == before_manifest
    assert _shards(out) == before_shards


def test_changed_file_is_processed_again(corpus: tuple[Path, Path]) -> None:
    src, out = corpus
    target = sorted(src.rglob("*.wav"))[0]
    utt_id = target.relative_to(src).with_suffix("").as_posix()
    old = rows_by_id(out)[utt_id]
    audio, rate = sf.read(target)
    sf.write(target, 0.5 * audio[::-1], rate)
    report = _prepare(src, out)
    assert report["counts"]["processed"] == 1
    new = rows_by_id(out)[utt_id]
    assert new["checksum"] != old["checksum"]
    assert new["shard"] != old["shard"]  # shards are immutable; the new version is appended


def test_added_file_moves_no_existing_split(corpus: tuple[Path, Path]) -> None:
    src, out = corpus
    before = {row["id"]: row["split"] for row in manifest(out)}
    (src / "new.wav").write_bytes(clips()[7].read_bytes())
    report = _prepare(src, out)
    assert report["counts"]["processed"] == 1
    after = {row["id"]: row["split"] for row in manifest(out)}
    assert {k: after[k] for k in before} == before
    assert "new" in after


def test_removed_files_leave_the_manifest_and_unused_shards_go(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    copy_clips(src, 4)
    _prepare(src, out, shard_size=2)
    first_shard_ids = [
        row["id"] for row in manifest(out) if row["shard"].endswith("00000.safetensors")
    ]
    for utt_id in first_shard_ids:
        (src / f"{utt_id}.wav").unlink()
    _prepare(src, out, shard_size=2)
    assert {row["id"] for row in manifest(out)}.isdisjoint(first_shard_ids)
    assert list(_shards(out)) == ["shard-00001.safetensors"]


def test_skip_decisions_are_remembered(corpus: tuple[Path, Path]) -> None:
    src, out = corpus
    (src / "empty.wav").write_bytes(b"")
    assert _prepare(src, out)["counts"]["processed"] == 1
    report = _prepare(src, out)
    assert report["counts"]["processed"] == 0
    assert report["skipped_by_kind"] == {"empty": 1}


def test_segment_change_refilters_without_reprocessing(corpus: tuple[Path, Path]) -> None:
    src, out = corpus
    longest = max(row["num_samples"] for row in manifest(out))
    report = _prepare(src, out, segment_samples=longest)
    assert report["counts"]["processed"] == 0
    assert report["counts"]["kept"] == 1
    assert set(report["skipped_by_kind"]) == {"too_short"}
    report = _prepare(src, out)  # back to short segments: all six again, from their shards
    assert report["counts"]["kept"] == 6
    assert report["counts"]["processed"] == 0


def test_processing_change_reprocesses_everything(corpus: tuple[Path, Path]) -> None:
    src, out = corpus
    report = _prepare(src, out, trim_top_db=30.0)
    assert report["counts"]["processed"] == 6


def test_other_mel_config_is_an_error_unless_rebuild(corpus: tuple[Path, Path]) -> None:
    src, out = corpus
    other = tiny_preset(
        mel={"sample_rate": 16000, "hop_length": 160, "n_fft": 512}, segment_samples=2560
    )
    with pytest.raises(UserError, match="another mel configuration"):
        prepare_corpus(src, out, other, progress=False)
    report = prepare_corpus(src, out, other, rebuild=True, progress=False)
    assert report["counts"]["processed"] == 6
    assert all(row["num_samples"] % 160 == 0 for row in manifest(out))


def test_a_killed_run_leaves_whole_shards_that_the_next_run_adopts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    copy_clips(src, 6)
    real_call = processing.Processor.__call__
    calls = {"n": 0}

    def dies_on_the_fifth(self: processing.Processor, item: object) -> object:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_call(self, item)  # type: ignore[arg-type]

    monkeypatch.setattr(processing.Processor, "__call__", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        _prepare(src, out, shard_size=2)
    assert not (out / "manifest.jsonl").exists()
    assert list(_shards(out)) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not [p for p in (out / "shards").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(processing.Processor, "__call__", real_call)
    report = _prepare(src, out, shard_size=2)
    assert report["counts"]["processed"] == 2
    assert report["counts"]["kept"] == 6


def test_touching_a_file_without_changing_it_reprocesses_only_that_file(
    corpus: tuple[Path, Path],
) -> None:
    src, out = corpus
    target = sorted(src.rglob("*.wav"))[1]
    utt_id = target.relative_to(src).with_suffix("").as_posix()
    before = rows_by_id(out)[utt_id]
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    report = _prepare(src, out)
    assert report["counts"]["processed"] == 1
    after = rows_by_id(out)[utt_id]
    assert after["checksum"] == before["checksum"]
    assert after["num_samples"] == before["num_samples"]

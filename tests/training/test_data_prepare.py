"""``prepare_corpus``: input layouts, formats, resampling, channel mixing, bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from models.errors import UserError
from models.mel import MelFrontEnd
from tests.training.test_data_support import (
    FIXTURES,
    HOP,
    SAMPLE_RATE,
    clips,
    copy_clips,
    manifest,
    rows_by_id,
    tiny_preset,
)
from training.data import processing
from training.data.dataset import PreparedCorpus
from training.data.prepare import prepare_corpus


def _stored_audio(out: Path, utt_id: str) -> np.ndarray:
    row = rows_by_id(out)[utt_id]
    with safe_open(str(out / row["shard"]), framework="numpy") as handle:
        return handle.get_tensor(f"audio/{utt_id}")


@pytest.fixture(scope="module")
def fixtures_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "out"
    prepare_corpus(FIXTURES, out, tiny_preset(), progress=False)
    return out


def test_nested_folder_keeps_every_clip_with_relative_ids(fixtures_prepared: Path) -> None:
    ids = {row["id"] for row in manifest(fixtures_prepared)}
    expected = {p.relative_to(FIXTURES).with_suffix("").as_posix() for p in clips()}
    assert ids == expected
    assert "digits/18" in ids


def test_manifest_rows_have_the_documented_fields(fixtures_prepared: Path) -> None:
    for row in manifest(fixtures_prepared):
        for key in (
            "id",
            "speaker",
            "speaker_id",
            "path",
            "duration",
            "checksum",
            "split",
            "shard",
            "num_samples",
        ):
            assert key in row, key
        assert row["num_samples"] % HOP == 0
        assert row["duration"] == pytest.approx(row["num_samples"] / SAMPLE_RATE)
        assert Path(row["path"]).is_file()
        assert row["split"] in {"train", "val", "test"}


def test_prepared_json_records_config_speakers_and_counts(fixtures_prepared: Path) -> None:
    info = json.loads((fixtures_prepared / "prepared.json").read_text())
    assert info["format_version"] == 1
    assert info["mel"] == tiny_preset().mel.model_dump()
    assert info["data"] == tiny_preset().data.model_dump()
    assert info["speakers"] == ["asterisk"]
    assert info["counts"]["utterances"] == len(clips())


def test_attribution_is_copied_next_to_the_data(fixtures_prepared: Path) -> None:
    assert "Allison Smith" in (fixtures_prepared / "ATTRIBUTION.md").read_text()


def test_stored_audio_is_trimmed_normalised_int16(fixtures_prepared: Path) -> None:
    corpus = PreparedCorpus(fixtures_prepared)
    for row in corpus.utterances():
        audio = _stored_audio(fixtures_prepared, row["id"])
        assert audio.dtype == np.int16 and audio.shape == (row["num_samples"],)
        assert np.abs(audio).max() <= 0.95 * 32768 + 1
        source, _ = sf.read(row["path"])
        assert row["num_samples"] < len(source)  # leading/trailing silence trimmed


def test_stored_mel_is_the_front_end_of_the_stored_audio(fixtures_prepared: Path) -> None:
    corpus = PreparedCorpus(fixtures_prepared)
    front_end = MelFrontEnd(corpus.mel_config)
    row = corpus.utterances()[0]
    audio, mel = corpus.load(row)
    assert mel.shape == (40, row["num_samples"] // HOP + 1)
    torch.testing.assert_close(mel, front_end(audio)[0])


def test_ljspeech_layout_uses_metadata_ids(tmp_path: Path) -> None:
    src = tmp_path / "LJSpeech-1.1"
    (src / "wavs").mkdir(parents=True)
    lines = []
    for index, path in enumerate(clips()[:4]):
        utt_id = f"LJ001-{index:04d}"
        (src / "wavs" / f"{utt_id}.wav").write_bytes(path.read_bytes())
        lines.append(f"{utt_id}|Text {index}.|Text {index}.")
    lines.append("LJ001-0099|missing|missing")
    (src / "metadata.csv").write_text("\n".join(lines) + "\n")
    (src / "wavs" / "unlisted.wav").write_bytes(clips()[5].read_bytes())
    report = prepare_corpus(src, tmp_path / "out", tiny_preset(), progress=False)
    assert report["layout"] == "ljspeech"
    assert sorted(rows_by_id(tmp_path / "out")) == [f"LJ001-{i:04d}" for i in range(4)]
    assert report["skipped_by_kind"] == {"missing": 1}
    assert report["ignored"]["by_reason"] == {"not listed in metadata.csv": 1}


def test_vctk_layout_makes_speaker_folders_speaker_ids(tmp_path: Path) -> None:
    src = tmp_path / "VCTK"
    src.mkdir()
    (src / "speaker-info.txt").write_text("ID AGE GENDER\n")
    for index, path in enumerate(clips()[:6]):
        speaker = ["p225", "p226"][index % 2]
        audio, rate = sf.read(path)
        target = src / "wav48_silence_trimmed" / speaker / f"{speaker}_{index:03d}_mic1.flac"
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, audio, rate)
    report = prepare_corpus(src, tmp_path / "out", tiny_preset(), progress=False)
    assert report["layout"] == "speakers"
    corpus = PreparedCorpus(tmp_path / "out")
    assert corpus.speakers == ["p225", "p226"]
    for row in corpus.utterances():
        assert row["id"].startswith(f"{row['speaker']}/")
        assert row["speaker_id"] == corpus.speakers.index(row["speaker"])


def test_explicit_speakers_layout_without_vctk_markers(tmp_path: Path) -> None:
    for index, path in enumerate(clips()[:4]):
        target = tmp_path / "src" / f"spk{index % 2}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    prepare_corpus(
        tmp_path / "src", tmp_path / "out", tiny_preset(), layout="speakers", progress=False
    )
    assert PreparedCorpus(tmp_path / "out").speakers == ["spk0", "spk1"]


@pytest.mark.parametrize(
    ("suffix", "rate", "channels"),
    [(".flac", 16000, 1), (".ogg", 22050, 2), (".mp3", 44100, 1), (".wav", 48000, 2)],
)
def test_other_formats_rates_and_channels_are_read(
    tmp_path: Path, suffix: str, rate: int, channels: int
) -> None:
    source, source_rate = sf.read(clips()[0])
    audio = librosa.resample(source, orig_sr=source_rate, target_sr=rate)
    if channels == 2:
        audio = np.stack([audio, 0.5 * audio], axis=1)
    (tmp_path / "src").mkdir()
    sf.write(tmp_path / "src" / f"clip{suffix}", audio, rate)
    prepare_corpus(tmp_path / "src", tmp_path / "out", tiny_preset(), progress=False)
    (row,) = manifest(tmp_path / "out")
    assert row["source_sample_rate"] == rate
    assert row["source_channels"] == channels
    assert row["source_seconds"] == pytest.approx(len(source) / source_rate, abs=0.06)


def _prepare_one(tmp_path: Path, name: str, audio: np.ndarray, rate: int) -> dict:
    src = tmp_path / name
    src.mkdir()
    sf.write(src / "clip.wav", audio, rate, subtype="FLOAT")
    try:
        prepare_corpus(src, tmp_path / f"{name}-out", tiny_preset(), progress=False)
    except UserError:
        report = json.loads((tmp_path / f"{name}-out" / "prepare_report.json").read_text())
        return {"skipped": report["skipped"][0]}
    return {
        "row": manifest(tmp_path / f"{name}-out")[0],
        "audio": _stored_audio(tmp_path / f"{name}-out", "clip"),
    }


def test_resampling_keeps_the_pitch_and_does_not_alias(tmp_path: Path) -> None:
    rate = 44100
    t = np.arange(int(1.5 * rate)) / rate
    # 440 Hz stays; 6 kHz is above the new Nyquist (4 kHz) and would alias to 2 kHz
    tones = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.3 * np.sin(2 * np.pi * 6000.0 * t)
    result = _prepare_one(tmp_path, "tone", np.stack([tones, tones], axis=1), rate)
    audio = result["audio"].astype(np.float64)
    assert len(audio) == pytest.approx(1.5 * SAMPLE_RATE, abs=2 * HOP)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    hz = np.fft.rfftfreq(len(audio), 1.0 / SAMPLE_RATE)
    assert hz[np.argmax(spectrum)] == pytest.approx(440.0, abs=2.0)
    alias = spectrum[np.abs(hz - 2000.0) < 20].max()
    assert 20 * np.log10(alias / spectrum.max()) < -60.0


def test_channels_are_averaged_not_picked(tmp_path: Path) -> None:
    speech, rate = sf.read(clips()[0])
    mono = _prepare_one(tmp_path, "mono", speech, rate)["audio"]
    right_only = _prepare_one(tmp_path, "right", np.stack([0 * speech, speech], 1), rate)
    assert np.abs(right_only["audio"].astype(int) - mono.astype(int)).max() <= 1
    cancelling = _prepare_one(tmp_path, "cancel", np.stack([speech, -speech], 1), rate)
    assert cancelling["skipped"]["kind"] == "silent"


def _bad_corpus(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src = root / "bad"
    copy_clips(src, 3)
    good = clips()[0].read_bytes()
    (src / "corrupt.wav").write_bytes(good[:4] + b"\xff" * 36 + good[40:])  # broken header
    (src / "random.flac").write_bytes(os.urandom(4000))
    (src / "empty.wav").write_bytes(b"")
    (src / "text.wav").write_text("this is not audio\n" * 50)  # wrong extension
    (src / "notes.txt").write_text("a text file is ignored, not skipped")
    sf.write(src / "silence.wav", np.zeros(SAMPLE_RATE), SAMPLE_RATE)
    sf.write(src / "zero-length.wav", np.zeros(0), SAMPLE_RATE)
    nan = sf.read(clips()[1], dtype="float32")[0]
    nan[100:120] = np.nan
    sf.write(src / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    inf = sf.read(clips()[1], dtype="float32")[0]
    inf[5] = np.inf
    sf.write(src / "inf.wav", inf, SAMPLE_RATE, subtype="FLOAT")
    sf.write(src / "short.wav", sf.read(clips()[2])[0][2000:2600], SAMPLE_RATE)
    locked = src / "locked.wav"
    locked.write_bytes(good)
    locked.chmod(0)
    real_read = processing.read_file

    def read_file(path: str) -> bytes:
        if Path(path).name == "locked.wav":  # root reads anything: make the denial explicit
            raise PermissionError(13, "Permission denied", path)
        return real_read(path)

    monkeypatch.setattr(processing, "read_file", read_file)
    return src


@pytest.fixture(scope="module")
def bad_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bad")
    with pytest.MonkeyPatch.context() as monkeypatch:
        src = _bad_corpus(root, monkeypatch)
        report = prepare_corpus(src, root / "out", tiny_preset(), progress=False)
    report["out_rows"] = manifest(root / "out")
    return report


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("corrupt.wav", "undecodable"),
        ("random.flac", "undecodable"),
        ("text.wav", "undecodable"),
        ("empty.wav", "empty"),
        ("silence.wav", "silent"),
        ("zero-length.wav", "no_samples"),
        ("nan.wav", "non_finite"),
        ("inf.wav", "non_finite"),
        ("short.wav", "too_short"),
        ("locked.wav", "unreadable"),
    ],
)
def test_bad_file_is_skipped_with_its_reason(bad_report: dict, name: str, kind: str) -> None:
    records = {Path(r["path"]).name: r for r in bad_report["skipped"]}
    assert records[name]["kind"] == kind
    assert records[name]["reason"]


def test_bad_files_do_not_stop_the_good_ones(bad_report: dict) -> None:
    assert len(bad_report["out_rows"]) == 3
    assert bad_report["counts"]["skipped"] == 10
    assert sum(bad_report["skipped_by_kind"].values()) == 10
    assert bad_report["ignored"]["by_reason"] == {"not an audio extension (.txt)": 1}


def test_no_usable_audio_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "empty.wav").write_bytes(b"")
    with pytest.raises(UserError, match="no usable audio") as caught:
        prepare_corpus(tmp_path / "src", tmp_path / "out", tiny_preset(), progress=False)
    assert caught.value.exit_code == 2
    assert (tmp_path / "out" / "prepare_report.json").is_file()


@pytest.mark.parametrize("problem", ["missing", "file", "same"])
def test_bad_paths_are_user_errors(tmp_path: Path, problem: str) -> None:
    src = tmp_path / "src"
    copy_clips(src, 1)
    if problem == "missing":
        src = tmp_path / "nope"
    elif problem == "file":
        src = clips()[0]
    out = src if problem == "same" else tmp_path / "out"
    with pytest.raises(UserError):
        prepare_corpus(src, out, tiny_preset(), progress=False)


def test_unrelated_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    copy_clips(tmp_path / "src", 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not empty"):
        prepare_corpus(tmp_path / "src", tmp_path / "out", tiny_preset(), progress=False)


def test_worker_processes_give_the_same_result_as_one(tmp_path: Path) -> None:
    copy_clips(tmp_path / "src", 4)
    prepare_corpus(tmp_path / "src", tmp_path / "one", tiny_preset(), workers=1, progress=False)
    prepare_corpus(tmp_path / "src", tmp_path / "two", tiny_preset(), workers=2, progress=False)
    one, two = PreparedCorpus(tmp_path / "one"), PreparedCorpus(tmp_path / "two")
    assert [r["id"] for r in one.utterances()] == [r["id"] for r in two.utterances()]
    for row_one, row_two in zip(one.utterances(), two.utterances(), strict=True):
        audio_one, mel_one = one.load(row_one)
        audio_two, mel_two = two.load(row_two)
        assert torch.equal(audio_one, audio_two)
        torch.testing.assert_close(mel_one, mel_two)

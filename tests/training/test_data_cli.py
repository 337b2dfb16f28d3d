"""``distilwave data prepare`` / ``data fetch`` on the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distilwave.cli.data import app
from models.errors import UserError
from tests.training.test_data_support import copy_clips, manifest, tiny_preset
from training.config import ConfigError
from training.data import fetch


@pytest.fixture()
def preset_file(tmp_path: Path) -> Path:
    preset = tiny_preset()
    path = tmp_path / "tiny.yaml"
    raw = {"name": "tiny", "mel": preset.mel.model_dump(), "data": preset.data.model_dump()}
    path.write_text(yaml.safe_dump(raw))
    return path


def _distilwave(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "distilwave.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_prepare_command_writes_a_corpus_and_a_summary(tmp_path: Path, preset_file: Path) -> None:
    copy_clips(tmp_path / "src", 4)
    (tmp_path / "src" / "empty.wav").write_bytes(b"")
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            str(tmp_path / "src"),
            str(tmp_path / "out"),
            "--preset",
            str(preset_file),
            "--set",
            "data.trim_top_db=35",
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "kept 4 utterances" in result.output
    assert "skipped by reason: empty 1" in result.output
    assert len(manifest(tmp_path / "out")) == 4


def test_prepare_rejects_an_unknown_layout(tmp_path: Path, preset_file: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            str(tmp_path),
            str(tmp_path / "out"),
            "--preset",
            str(preset_file),
            "--layout",
            "tree",
        ],
    )
    assert isinstance(result.exception, UserError)


def test_prepare_rejects_an_unknown_override(tmp_path: Path, preset_file: Path) -> None:
    copy_clips(tmp_path / "src", 1)
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            str(tmp_path / "src"),
            str(tmp_path / "out"),
            "--preset",
            str(preset_file),
            "--set",
            "data.no_such_key=1",
        ],
    )
    assert isinstance(result.exception, ConfigError)


def test_console_errors_are_one_line_with_exit_code_2(tmp_path: Path, preset_file: Path) -> None:
    (tmp_path / "silent").mkdir()
    (tmp_path / "silent" / "empty.wav").write_bytes(b"")
    cases = [
        [
            "data",
            "prepare",
            str(tmp_path / "missing"),
            str(tmp_path / "o1"),
            "--preset",
            str(preset_file),
        ],
        [
            "data",
            "prepare",
            str(tmp_path / "silent"),
            str(tmp_path / "o2"),
            "--preset",
            str(preset_file),
            "--no-progress",
        ],
    ]
    for args in cases:
        result = _distilwave(*args)
        assert result.returncode == 2, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, result.stderr
    assert "no usable audio" in _distilwave(*cases[1]).stderr


def test_fetch_command_reports_where_the_corpus_is(tmp_path: Path, deb: Path) -> None:
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["fetch", "--cache-dir", str(cache), "--deb", str(deb)])
    assert result.exit_code == 0, result.output
    audio_dir = cache / fetch.SPEAKER
    assert f"3 WAV files in {audio_dir}" in result.output


def test_unknown_option_is_one_line_with_exit_code_2(tmp_path: Path) -> None:
    result = _distilwave("data", "prepare", str(tmp_path), str(tmp_path / "out"), "--frobnicate")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr

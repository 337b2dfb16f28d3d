"""``distilwave bench`` runs on a tiny bundle and writes valid JSON (no timing is checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.report import render_markdown
from models.bundle import save_bundle
from models.config import (
    MelConfig,
    PitchConfig,
    StudentConfig,
    UpsamplerConfig,
    WaveNetConfig,
)
from models.student import IAFStudent

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A smoke-preset-shaped student (same front end as the smoke preset), untrained."""
    config = StudentConfig(
        flows=2,
        wavenet=WaveNetConfig(
            layers=3, cycle=3, residual_channels=8, gate_channels=16, skip_channels=8
        ),
        upsampler=UpsamplerConfig(channels=8),
    )
    mel = MelConfig(sample_rate=8000, n_fft=1024, hop_length=100, n_mels=80)
    return save_bundle(tmp_path / "bundle", IAFStudent(config, mel))


def test_bench_writes_valid_json(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "distilwave.cli", "bench", "--bundle", str(tiny_bundle),
        "--preset", "smoke", "--quick", "--sections", "generation,limit,scaling",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"machine", "models", "generation", "limit", "scaling"} <= report.keys()
    assert report["machine"]["load_average_start"]
    rows = report["generation"]["rows"]
    assert {(r["batch"], r["audio_seconds"]) for r in rows} == {
        (1, 0.1),
        (1, 0.2),
        (2, 0.1),
        (2, 0.2),
    }
    for row in rows:
        for key in ("student", "student_module", "teacher_cached", "teacher_naive"):
            assert row[key]["samples_per_second"] > 0
        assert row["teacher_naive"]["extrapolated"] is True
        assert row["ratio_student_teacher_cached"] > 0
    assert report["limit"]["matmul_peak_gflops"] > 0
    assert [r["audio_seconds"] for r in report["scaling"]["rows"]] == [0.1, 0.2, 0.4]
    assert len(report["limit"]["threads"]) >= 1
    assert "## Performance" in done.stdout and "student / teacher cached" in done.stdout


def test_bench_rejects_unknown_section(tiny_bundle: Path) -> None:
    command = [sys.executable, "-m", "distilwave.cli", "bench", "--bundle", str(tiny_bundle)]
    done = subprocess.run(
        [*command, "--sections", "speed"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "unknown sections" in done.stderr


def test_student_flops_counts_every_layer() -> None:
    config = StudentConfig(
        flows=1,
        wavenet=WaveNetConfig(
            layers=1, cycle=1, residual_channels=4, gate_channels=8, skip_channels=4
        ),
        upsampler=UpsamplerConfig(channels=2, kernel_size=1),
    )
    mel = MelConfig(sample_rate=8000, n_fft=64, hop_length=10, n_mels=5)
    student = IAFStudent(config, mel)
    flops = student.flops_per_sample()
    # input 1x4, dilated 2 taps 4 -> 8, output 4 -> 4 (last layer: skip only), head 4x4 and 4x2,
    # conditioning 2 -> 8 at frame rate plus interpolation, FIR 128 taps, upsampler 5 -> 2 / hop
    wavenet = 2 * 4 + 2 * 2 * 4 * 8 + 2 * 4 * 4 + 2 * 16 + 2 * 8
    conditioning = 8 * (2 * 2 / 10 + 2)
    assert flops["wavenet_1"] == pytest.approx(wavenet + conditioning)
    assert flops["synthesis"] == 2 * 128
    assert flops["upsampler"] == pytest.approx(2 * 5 * 2 / 10)
    assert flops["gain"] == 0 and "excitation" not in flops
    assert flops["total"] == pytest.approx(wavenet + conditioning + 256 + 2)
    assert torch.get_num_threads() >= 1


def test_student_flops_of_a_pitch_student_count_lag_inputs_source_and_excitation() -> None:
    pitch = PitchConfig(enabled=True, lag_taps=3, source_harmonics=1)
    config = StudentConfig(
        flows=1,
        wavenet=WaveNetConfig(
            layers=1, cycle=1, residual_channels=4, gate_channels=8, skip_channels=4
        ),
        upsampler=UpsamplerConfig(channels=2, kernel_size=1),
        pitch=pitch,
        mixed_excitation=True,
    )
    mel = MelConfig(sample_rate=8000, n_fft=64, hop_length=10, n_mels=5)
    flops = IAFStudent(config, mel).flops_per_sample()
    # input v_{t-1} and 3 lag taps (4 -> 4); 5 source channels per sample (2 harmonics, pulses,
    # voicing, log-F0) into each layer's gate besides the frame features at frame rate
    wavenet = 2 * 4 * 4 + 2 * 2 * 4 * 8 + 2 * 4 * 4 + 2 * 16 + 2 * 8
    conditioning = 8 * (2 * 2 / 10 + 2 * 5 + 2)
    assert flops["wavenet_1"] == pytest.approx(wavenet + conditioning)
    assert flops["excitation"] == pytest.approx(2 * 2 / 10 + 6)


def test_render_markdown_without_optional_sections() -> None:
    report = {
        "machine": {
            "cpu": "x",
            "cores": 2,
            "threads": 2,
            "torch": "2",
            "python": "3",
            "load_average_start": [1.0, 1.0, 1.0],
        },
        "models": {"trained": False},
        "training": {"skipped": "no prepared corpus"},
        "service": {"skipped": "service.loadtest is not available"},
    }
    text = render_markdown(report)
    assert "untrained" in text and "no prepared corpus" in text


def test_generalisation_reads_a_folder_of_recordings_at_the_bundle_rate(tmp_path):
    """`--recordings DIR`: every WAV / FLAC of a folder, any rate and channels, becomes a mono
    clip at the bundle's rate, cut to the benchmark's 6 s; a folder without audio is refused."""
    import soundfile as sf

    from benchmarks.generalisation import MAX_SECONDS, recordings_set

    folder = tmp_path / "my-voice"
    (folder / "sub").mkdir(parents=True)
    t = np.arange(16_000 * 8) / 16_000
    sf.write(folder / "a.wav", (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 16_000)
    stereo = np.stack([np.sin(2 * np.pi * 220 * t[:22_050]), np.zeros(22_050)], axis=1) * 0.3
    sf.write(folder / "sub" / "b.flac", stereo.astype(np.float32), 22_050)
    (folder / "notes.txt").write_text("not audio")
    clips = recordings_set(folder, 8000)
    assert [name for name, _ in clips] == ["a", "b"]
    assert clips[0][1].shape == (int(MAX_SECONDS * 8000),)
    assert clips[1][1].shape == (8000,) and clips[1][1].dtype == np.float32
    assert np.abs(clips[1][1]).max() == pytest.approx(0.15, abs=0.01)  # mean of the channels
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no .wav or .flac"):
        recordings_set(empty, 8000)
    # the CLI refuses such a folder before loading anything: one line, non-zero exit
    done = subprocess.run(
        [sys.executable, "-m", "distilwave", "bench", "--sections", "generalisation",
         "--recordings", str(empty)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"distilwave: error: --recordings {empty}: not a folder of .wav or .flac recordings"
    ]


def test_prior_halves_recombines_the_prior_with_the_real_spectrum() -> None:
    """benchmarks.prior_halves: every recombination spans the prior's frames; its "prior" row is
    the prior's own output; with the real audio's own spectrum in place of the prior's phase
    and magnitude, the true-phase and true-magnitude rows become the real audio."""
    from benchmarks.prior_halves import recombinations
    from models.config import MelConfig, PriorConfig
    from models.mel import MelFrontEnd
    from models.prior import MelInversionPrior

    mel_config = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=20)
    prior = MelInversionPrior(
        PriorConfig(enabled=True, n_fft=256, channels=8, layers=2), mel_config
    )
    prior = prior.double().eval()
    real = torch.randn(64 * 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mel = MelFrontEnd(mel_config).double()(real[None])[0]
    with torch.no_grad():
        out = recombinations(prior, mel, real)
        assert set(out) == {
            "prior",
            "prior_magnitude_true_phase",
            "true_magnitude_prior_phase",
            "prior_magnitude_griffin_lim_32_from_prior_phase",
        }
        assert all(w.shape == (64 * 20,) and bool(torch.isfinite(w).all()) for w in out.values())
        torch.testing.assert_close(out["prior"], prior(mel[None])[0])
        # a "prior" whose spectrum is the real one: both recombinations give back the real audio
        window = prior.window
        true = torch.stft(real, 256, 64, window=window, center=True, return_complex=True)
        prior.spectrum = lambda _m: (true[None], true.abs().log()[None])  # type: ignore[method-assign]
        again = recombinations(prior, mel, real)
    inner = slice(128, -128)  # away from the edges the centred frames pad
    for name in ("prior_magnitude_true_phase", "true_magnitude_prior_phase"):
        torch.testing.assert_close(again[name][inner], real[inner], atol=1e-9, rtol=0)


def test_prior_runs_scores_each_prior_run_on_the_test_split_and_on_recordings(
    smoke_pipeline, tmp_path
) -> None:
    """benchmarks.prior_runs: the report's test row is the prior's own resynthesis of the test
    utterances scored against them; a recordings folder is a set; a run without a prior checkpoint
    is a one-line error."""
    import soundfile as sf

    from benchmarks.prior_runs import score_prior
    from training.data.dataset import UtteranceDataset
    from training.recipes.common import load_prior

    folder = tmp_path / "my-voice"
    folder.mkdir()
    t = np.arange(16_000 * 2) / 16_000
    sf.write(folder / "a.wav", 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)),
             16_000)  # fmt: skip
    out = tmp_path / "priors.json"
    command = [
        sys.executable, "-m", "benchmarks.prior_runs", "--data", str(smoke_pipeline.data),
        "--runs", str(smoke_pipeline.prior), "--recordings", str(folder), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    rows = report["runs"][str(smoke_pipeline.prior)]
    assert set(rows) == {"test", "my-voice"}
    prior = load_prior(smoke_pipeline.prior, torch.device("cpu"))
    test = UtteranceDataset(smoke_pipeline.data, "test", max_seconds=6.0, limit=10)
    expected = score_prior(prior, [test[i]["audio"].numpy() for i in range(len(test))])
    assert rows["test"] == pytest.approx(expected, rel=1e-6)
    assert -0.5 <= rows["my-voice"]["pesq"] <= 4.6 and rows["my-voice"]["lsd_db"] > 0

    empty = tmp_path / "no-run"
    empty.mkdir()
    done = subprocess.run(
        [*command[:5], "--runs", str(empty)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"{empty}: no trained prior")


def test_band_errors_put_a_dc_offset_in_the_lowest_band_only() -> None:
    """An offset added to a signal (fading in and out over the clip, so the zero-padded edge
    frames see no step) changes its Hann-windowed STFT at 0 Hz and the next bins only (15.6 Hz
    apart at 512 points, 8 kHz): its LSD lands in the band below 32 Hz."""
    from training.evaluation.metrics import band_errors

    t = np.arange(8000) / 8000
    generator = np.random.default_rng(0)
    reference = 0.3 * np.sin(2 * np.pi * 200 * t) + 0.01 * generator.standard_normal(8000)
    edges = [0.0, 32.0, 1000.0, 4001.0]
    assert band_errors(reference, reference, 8000, edges) == [0.0, 0.0, 0.0]
    offset = 0.01 * np.hanning(8000)  # below 1 Hz
    low, middle, high = band_errors(reference, reference + offset, 8000, edges)
    assert low > 10.0
    assert middle < 0.05 and high < 1e-3


def test_prior_halves_reports_the_served_student_with_its_bands_and_dc(smoke_pipeline, tmp_path):
    """benchmarks.prior_halves on the smoke run: the prior, its recombinations and the bundle's
    student, each with PESQ/LSD, the RMS dB error in bands spanning 0 Hz to Nyquist and its DC
    offset; the real audio's DC offset beside them."""
    out = tmp_path / "halves.json"
    command = [
        sys.executable, "-m", "benchmarks.prior_halves", "--bundle", str(smoke_pipeline.bundle),
        "--data", str(smoke_pipeline.data), "--utterances", "2", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["real"]) == {"dc_offset"}
    for name in ("prior", "student", "prior_magnitude_true_phase"):
        row = report[name]
        bands = [key for key in row if key.startswith("band_rms_db ")]
        assert bands[0].endswith(" 0-32 Hz") and bands[-1].endswith("-4000 Hz"), bands
        assert all(row[key] >= 0 for key in bands) and "lsd_db" in row and "dc_offset" in row

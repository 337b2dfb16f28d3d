"""``distilwave export`` and ``distilwave generate`` on the smoke run's student."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from models.bundle import load_bundle
from tests.training.pipeline.support import FIXTURE_CORPUS
from training.data.dataset import PreparedCorpus
from training.export import load_student

CLIP = FIXTURE_CORPUS / "hello-world.wav"


@pytest.fixture(scope="module")
def exported(smoke, tmp_path_factory):
    """``distilwave export`` of the smoke student with its data and evaluation in the card."""
    from distilwave.cli import main

    out = tmp_path_factory.mktemp("export") / "bundle"
    eval_json = smoke.eval_dir / "eval.json"
    main(["export", "--student", str(smoke.student), "--out", str(out), "--data", str(smoke.data),
          "--eval", str(eval_json)])  # fmt: skip
    return out


def test_export_writes_a_bundle_that_loads(exported):
    bundle = load_bundle(exported)
    assert (bundle.sample_rate, bundle.hop_length) == (8000, 100)
    assert (exported / "README.md").read_text().startswith("# distilwave-smoke")


def test_export_card_describes_model_training_data_and_metrics(smoke, exported):
    card = json.loads((exported / "card.json").read_text())
    report = json.loads((smoke.eval_dir / "eval.json").read_text())
    assert card["name"] == "distilwave-smoke"
    assert card["preset"] == "smoke"
    assert (card["sample_rate"], card["hop_length"]) == (8000, 100)
    assert card["architecture"]["flows"] == 2
    assert card["architecture"]["parameters"] > 0
    assert card["training"]["checkpoint"] == "best.pt"
    # a card is public: the trainer's paths stay out of it
    assert str(smoke.teacher) not in json.dumps(card) and str(smoke.data) not in json.dumps(card)
    assert card["data"]["counts"]["utterances"] == 10
    assert "CC-BY-SA-3.0" in card["data"]["attribution"]
    keys = ("teacher", "student", "resynthesis", "teacher_samples", "speed")
    assert card["metrics"] == {k: report[k] for k in keys}


def test_exported_bundle_generates_what_the_ema_student_generates(smoke, exported):
    bundle = load_bundle(exported)
    student, _, _ = load_student(smoke.student, torch.device("cpu"))
    mel = torch.randn(1, 80, 11)
    context = student.context(mel=mel)
    noise = student.draw_noise(context, 1.0, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = student.generate(context, noise=noise)
        actual = bundle.student.generate(bundle.student.context(mel=mel), noise=noise)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_export_of_a_teacher_run_is_a_one_line_error(smoke, cli, tmp_path):
    result = cli("export", "--student", smoke.teacher, "--out", tmp_path / "bundle")
    assert result.code == 2
    assert result.error_lines == [
        f"distilwave: error: {smoke.teacher / 'checkpoints' / 'best.pt'} is a teacher "
        "checkpoint, not a student"
    ]
    assert not (tmp_path / "bundle").exists()


def test_generate_from_audio_keeps_length_and_rate(smoke, cli, tmp_path):
    out = tmp_path / "out.wav"
    result = cli("generate", "--bundle", smoke.bundle, "--audio", CLIP, "--out", out)
    assert result.code == 0, result.stderr
    audio, rate = sf.read(out)
    assert rate == 8000
    assert len(audio) == sf.info(CLIP).frames
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_generate_from_audio_resamples_other_rates(smoke, cli, tmp_path):
    source, _ = sf.read(CLIP)
    clip = tmp_path / "clip16k.wav"
    sf.write(clip, np.repeat(source, 2), 16000)
    out = tmp_path / "out.wav"
    result = cli("generate", "--bundle", smoke.bundle, "--audio", clip, "--out", out)
    assert result.code == 0, result.stderr
    audio, rate = sf.read(out)
    assert rate == 8000
    assert len(audio) == len(source)


@pytest.fixture(scope="module")
def corpus_mel(smoke, tmp_path_factory):
    """A prepared utterance's mel (the bundle's own features), saved bands x frames."""
    corpus = PreparedCorpus(smoke.data)
    _, mel = corpus.load(corpus.utterances("test")[0])
    path = tmp_path_factory.mktemp("mel") / "mel.npy"
    np.save(path, mel.numpy())
    return path


def test_generate_from_mel_writes_hop_samples_per_frame(smoke, cli, corpus_mel, tmp_path):
    out = tmp_path / "out.wav"
    result = cli("generate", "--bundle", smoke.bundle, "--mel", corpus_mel, "--out", out)
    assert result.code == 0, result.stderr
    audio, rate = sf.read(out)
    frames = np.load(corpus_mel).shape[1]
    assert rate == 8000
    assert len(audio) == frames * 100  # the last frame repeated once, as the service vocodes
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_generate_reads_a_mel_in_either_orientation(smoke, cli, corpus_mel, tmp_path):
    transposed = tmp_path / "frames_by_bands.npy"
    np.save(transposed, np.load(corpus_mel).T)
    outputs = []
    for mel in (corpus_mel, transposed):
        out = tmp_path / f"{mel.stem}.wav"
        assert cli("generate", "--bundle", smoke.bundle, "--mel", mel, "--out", out).code == 0
        outputs.append(sf.read(out)[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def _bad_inputs(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 80, 5), dtype=np.float32))
    np.save(tmp_path / "no_bands.npy", np.zeros((7, 5), dtype=np.float32))
    (tmp_path / "text.npy").write_text("not numpy")
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(tmp_path / "empty.wav", np.zeros(0), 8000)
    (tmp_path / "not_a_bundle").mkdir()


GENERATE_ERRORS = {
    "no input": ([], "give exactly one of --mel, --audio or --seconds"),
    "two inputs": (
        ["--audio", CLIP, "--mel", "{tmp}/no_bands.npy"],
        "give exactly one of --mel, --audio or --seconds",
    ),
    "seconds for a conditional bundle": (
        ["--seconds", "1"],
        "this model is conditioned on a mel: give mel or audio",
    ),
    "mel of three dimensions": (["--mel", "{tmp}/cube.npy"], "a mel must be 2-D"),
    "mel without a band axis": (["--mel", "{tmp}/no_bands.npy"], "no axis of length 80"),
    "mel file not numpy": (["--mel", "{tmp}/text.npy"], "not a readable .npy file"),
    "undecodable audio": (["--audio", "{tmp}/noise.wav"], "cannot decode audio"),
    "empty audio": (["--audio", "{tmp}/empty.wav"], "the audio holds no samples"),
    "missing mel file": (["--mel", "{tmp}/absent.npy"], "does not exist"),
    "negative temperature": (["--audio", CLIP, "--temperature", "-1"], "--temperature"),
    "output not a wav file": (["--audio", CLIP, "--out", "{tmp}/out.xyz"], "give a .wav file"),
    "output a folder": (["--audio", CLIP, "--out", "{tmp}"], "give a .wav file"),
}


@pytest.mark.parametrize(("args", "expected"), GENERATE_ERRORS.values(), ids=GENERATE_ERRORS)
def test_generate_bad_input_is_a_one_line_error(smoke, cli, tmp_path, args, expected):
    _bad_inputs(tmp_path)
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    out = tmp_path / "out.wav"
    result = cli("generate", "--bundle", smoke.bundle, "--out", out, *args)  # a later --out wins
    assert result.code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("distilwave: error: ")
    assert expected in line
    assert not out.exists()


def test_generate_from_a_folder_that_is_not_a_bundle_is_a_one_line_error(cli, tmp_path):
    result = cli("generate", "--bundle", tmp_path, "--audio", CLIP, "--out", tmp_path / "o.wav")
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"distilwave: error: {tmp_path} is not a distilwave bundle (config.json, model.safetensors)"
    ]


def test_generate_undecodable_audio_error_comes_without_decoder_warnings(smoke, cli, tmp_path):
    _bad_inputs(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli(
            "generate", "--bundle", smoke.bundle, "--audio", tmp_path / "noise.wav",
            "--out", tmp_path / "out.wav",
        )  # fmt: skip
    assert result.code == 2
    shown = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert [str(w.message) for w in shown] == []


def test_export_refuses_to_replace_a_folder_that_is_not_a_bundle(smoke, cli, tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    result = cli("export", "--student", smoke.student, "--out", tmp_path)
    assert result.code == 2
    assert result.error_lines == [
        f"distilwave: error: {tmp_path} is not empty and not a distilwave bundle: refusing to "
        "replace it; choose another --out"
    ]
    assert keep.read_text() == "mine"


def test_export_replaces_an_earlier_bundle(smoke, cli, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(smoke.bundle, out)
    (out / "README.md").write_text("stale")
    result = cli("export", "--student", smoke.student, "--out", out)
    assert result.code == 0, result.stderr
    assert (out / "README.md").read_text().startswith("# distilwave-smoke")
    load_bundle(out)

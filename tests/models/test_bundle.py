"""The model bundle: save -> load gives the same student; anything malformed is a ValueError."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from models.bundle import FORMAT_VERSION, load_bundle, save_bundle
from models.wavenet import fold_weight_norm
from tests.models.helpers import VARIANT_IDS, VARIANTS, make_context, make_student, random_signal

ALL_VARIANTS = pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)


def _student(variant, weight_norm=False):
    # Bundles hold float32 weights: compare float32 models so equality can be exact.
    return make_student(variant, weight_norm=weight_norm, dtype=torch.float32)


def _generate(student, variant):
    context = make_context(student, variant, batch=2, frames=4)
    dtype = next(student.parameters()).dtype
    noise = random_signal(context, seed=51, scale=1.0).to(dtype)
    return student.generate(context, noise=noise)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved bundle (source-filter, speakers, weight norm) to corrupt in copies."""
    variant = VARIANTS[5]
    path = tmp_path_factory.mktemp("bundle") / "model"
    save_bundle(path, _student(variant, weight_norm=True), speakers=["a", "b", "c"])
    return path


@pytest.fixture
def bundle_copy(saved, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


def _edit_config(path, edit):
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


# --- round trip ------------------------------------------------------------------------------


@ALL_VARIANTS
@pytest.mark.parametrize("weight_norm", [False, True], ids=["no-wn", "wn"])
def test_bundle_round_trip_generates_identical_audio(variant, weight_norm, tmp_path):
    student = _student(variant, weight_norm)
    save_bundle(tmp_path / "model", student)
    loaded = load_bundle(tmp_path / "model").student
    assert torch.equal(_generate(loaded, variant), _generate(student, variant))


@ALL_VARIANTS
def test_folding_weight_norm_keeps_the_students_output(variant):
    student = make_student(variant, weight_norm=True)
    expected = _generate(student, variant)
    # (Folding a deepcopy breaks the original: torch's parametrised class is shared between
    # the copies and remove_parametrizations deletes its ``weight`` property. Use it after.)
    folded = fold_weight_norm(copy.deepcopy(student))
    torch.testing.assert_close(_generate(folded, variant), expected, rtol=0, atol=1e-13)


def test_saved_bundle_has_no_weight_norm_and_leaves_the_student_untouched(tmp_path):
    variant = VARIANTS[0]
    student = _student(variant, weight_norm=True)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    bundle = load_bundle(save_bundle(tmp_path / "model", student))
    assert not bundle.config.wavenet.weight_norm
    assert not [name for name, _ in bundle.student.named_parameters() if "parametriz" in name]
    after = student.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_saving_a_weight_norm_student_leaves_it_usable(tmp_path):
    variant = VARIANTS[4]
    student = _student(variant, weight_norm=True)
    expected = _generate(student, variant)
    save_bundle(tmp_path / "model", student)
    assert torch.equal(_generate(student, variant), expected)


def test_bundle_keeps_its_description(tmp_path):
    student = _student(VARIANTS[1])
    save_bundle(
        tmp_path / "model",
        student,
        speakers=["ann", "bob", "cy"],
        default_temperature=0.7,
        card={"data": "tiny"},
        readme="# tiny\n",
    )
    bundle = load_bundle(tmp_path / "model")
    assert bundle.speakers == ["ann", "bob", "cy"]
    assert bundle.default_temperature == 0.7
    assert bundle.card == {"data": "tiny"}
    assert (bundle.sample_rate, bundle.hop_length) == (8000, 8)
    assert bundle.mel == student.mel_config and bundle.config == student.config
    assert (tmp_path / "model" / "README.md").read_text() == "# tiny\n"


def test_loaded_student_is_in_eval_mode(tmp_path):
    bundle = load_bundle(save_bundle(tmp_path / "model", _student(VARIANTS[0])))
    assert not bundle.student.training


def test_saving_over_a_bundle_replaces_it_and_leaves_no_staging(tmp_path):
    first, second = _student(VARIANTS[0]), make_student(VARIANTS[0], dtype=torch.float32, seed=7)
    save_bundle(tmp_path / "model", first)
    save_bundle(tmp_path / "model", second)
    loaded = load_bundle(tmp_path / "model").student
    assert torch.equal(_generate(loaded, VARIANTS[0]), _generate(second, VARIANTS[0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_save_rejects_the_wrong_number_of_speaker_names(tmp_path):
    with pytest.raises(ValueError, match="speaker names"):
        save_bundle(tmp_path / "model", _student(VARIANTS[1]), speakers=["only-one"])
    assert not (tmp_path / "model").exists()


# --- malformed bundles -----------------------------------------------------------------------


def test_load_rejects_a_directory_without_a_bundle(tmp_path):
    with pytest.raises(ValueError, match="not a distilwave bundle"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_load_rejects_a_bundle_with_a_missing_file(bundle_copy, name):
    (bundle_copy / name).unlink()
    with pytest.raises(ValueError, match="not a distilwave bundle"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("text", ["{", "[1, 2]", "\udcff"], ids=["truncated", "a-list", "binary"])
def test_load_rejects_a_config_that_is_not_a_json_object(bundle_copy, text):
    (bundle_copy / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match="config.json"):
        load_bundle(bundle_copy)


def test_load_rejects_another_format(bundle_copy):
    _edit_config(bundle_copy, lambda c: c.update(format="something-else"))
    with pytest.raises(ValueError, match="not a distilwave bundle"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None, "1"])
def test_load_rejects_an_unsupported_format_version(bundle_copy, version):
    _edit_config(bundle_copy, lambda c: c.update(format_version=version))
    with pytest.raises(ValueError, match="format version"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("key", ["mel", "student"])
def test_load_rejects_a_config_without_a_section(bundle_copy, key):
    _edit_config(bundle_copy, lambda c: c.pop(key))
    with pytest.raises(ValueError, match=key):
        load_bundle(bundle_copy)


def test_load_rejects_unknown_config_keys(bundle_copy):
    _edit_config(bundle_copy, lambda c: c["student"].update(surprise=1))
    with pytest.raises(ValueError, match="surprise"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "key,value", [("sample_rate", 16000), ("hop_length", 100), ("sample_rate", None)]
)
def test_load_rejects_a_sample_rate_or_hop_that_disagrees_with_the_mel(bundle_copy, key, value):
    _edit_config(bundle_copy, lambda c: c.update({key: value}))
    with pytest.raises(ValueError, match=key):
        load_bundle(bundle_copy)


def test_load_rejects_weights_of_the_wrong_shape(bundle_copy):
    _edit_config(bundle_copy, lambda c: c["student"]["wavenet"].update(residual_channels=5))
    with pytest.raises(ValueError, match="do not match"):
        load_bundle(bundle_copy)


def test_load_rejects_weights_for_another_number_of_flows(bundle_copy):
    _edit_config(bundle_copy, lambda c: c["student"].update(flows=3))
    with pytest.raises(ValueError, match="do not match"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("cut", [0, 7, 200])
def test_load_rejects_truncated_weights(bundle_copy, cut):
    weights = bundle_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:cut])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("speakers", [None, "abc", [1, 2, 3]])
def test_load_rejects_malformed_speaker_names(bundle_copy, speakers):
    _edit_config(bundle_copy, lambda c: c.update(speakers=speakers))
    with pytest.raises(ValueError, match="speakers"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("temperature", [None, "hot"])
def test_load_rejects_a_malformed_default_temperature(bundle_copy, temperature):
    _edit_config(bundle_copy, lambda c: c.update(default_temperature=temperature))
    with pytest.raises(ValueError, match="default_temperature"):
        load_bundle(bundle_copy)


def test_load_rejects_a_malformed_card(bundle_copy):
    (bundle_copy / "card.json").write_text("{")
    with pytest.raises(ValueError, match="card.json"):
        load_bundle(bundle_copy)

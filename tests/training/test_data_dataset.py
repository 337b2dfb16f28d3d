"""SegmentDataset / UtteranceDataset / PreparedCorpus over a prepared fixture corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader, DistributedSampler

from models.mel import MelFrontEnd
from tests.training.test_data_support import (
    FIXTURES,
    HOP,
    N_FFT,
    SAMPLE_RATE,
    SEGMENT,
    tiny_preset,
)
from training.data.dataset import (
    QUANTIZATION_STEP,
    PreparedCorpus,
    SegmentDataset,
    UtteranceDataset,
)
from training.data.prepare import prepare_corpus


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset") / "prepared"
    prepare_corpus(FIXTURES, out, tiny_preset(shard_size=3), progress=False)
    return out


def _locate(corpus: PreparedCorpus, audio: torch.Tensor) -> tuple[dict, int]:
    """The utterance and hop index a (noise-free) segment was cut from."""
    for row in corpus.utterances():
        full, _ = corpus.load(row)
        for i in range((len(full) - len(audio)) // HOP + 1):
            if torch.equal(full[i * HOP : i * HOP + len(audio)], audio):
                return row, i
    raise AssertionError("segment not found at any hop-aligned offset")


def test_segment_shapes_and_types(root: Path) -> None:
    item = SegmentDataset(root, segment_samples=SEGMENT)[0]
    assert item["audio"].shape == (SEGMENT,) and item["audio"].dtype == torch.float32
    assert item["mel"].shape == (40, SEGMENT // HOP + 1) and item["mel"].dtype == torch.float32
    assert item["speaker"].dtype == torch.long and item["speaker"].dim() == 0


def test_segment_mel_is_the_utterance_mel_at_a_hop_aligned_offset(root: Path) -> None:
    dataset = SegmentDataset(root, segment_samples=SEGMENT, dequantize=False)
    for index in range(5):
        item = dataset[index]
        row, start = _locate(dataset.corpus, item["audio"])
        _, mel = dataset.corpus.load(row)
        assert row["split"] == "train"
        torch.testing.assert_close(item["mel"], mel[:, start : start + SEGMENT // HOP + 1])


def test_segment_mel_equals_mel_recomputed_from_its_samples_away_from_edges(root: Path) -> None:
    dataset = SegmentDataset(root, segment_samples=SEGMENT, dequantize=False)
    front_end = MelFrontEnd(dataset.corpus.mel_config)
    margin = N_FFT // 2 // HOP + 1  # frames whose window reaches past the segment differ
    for index in range(5):
        item = dataset[index]
        recomputed = front_end(item["audio"])[0]
        inner = slice(margin, SEGMENT // HOP + 1 - margin)
        torch.testing.assert_close(item["mel"][:, inner], recomputed[:, inner], atol=1e-4, rtol=0)


def test_dequantization_noise_is_within_one_int16_step(root: Path) -> None:
    noisy = SegmentDataset(root, segment_samples=SEGMENT, dequantize=True, seed=3)[4]
    clean = SegmentDataset(root, segment_samples=SEGMENT, dequantize=False, seed=3)[4]
    difference = noisy["audio"] - clean["audio"]
    assert difference.abs().max() <= QUANTIZATION_STEP / 2
    assert difference.std() > QUANTIZATION_STEP / 5
    assert torch.equal(noisy["mel"], clean["mel"])


def test_items_are_deterministic_given_seed_epoch_and_index(root: Path) -> None:
    first, second = (
        SegmentDataset(root, segment_samples=SEGMENT),
        SegmentDataset(root, segment_samples=SEGMENT),
    )
    assert torch.equal(first[7]["audio"], second[7]["audio"])
    first.set_epoch(1)
    assert not torch.equal(first[7]["audio"], second[7]["audio"])
    other_seed = SegmentDataset(root, segment_samples=SEGMENT, seed=1)
    assert not torch.equal(other_seed[7]["audio"], second[7]["audio"])


def test_length_counts_non_overlapping_segments(root: Path) -> None:
    dataset = SegmentDataset(root, segment_samples=SEGMENT)
    rows = dataset.corpus.utterances("train")
    assert len(dataset) == sum(row["num_samples"] // SEGMENT for row in rows)


def test_short_utterances_are_never_drawn(root: Path) -> None:
    lengths = sorted(r["num_samples"] for r in PreparedCorpus(root).utterances("train"))
    segment = (lengths[len(lengths) // 2] // HOP) * HOP
    dataset = SegmentDataset(root, segment_samples=segment, dequantize=False)
    assert all(row["num_samples"] >= segment for row in dataset.rows)
    assert len(dataset.rows) < len(lengths)
    for index in range(20):
        assert dataset[index]["audio"].shape == (segment,)


def test_segment_not_a_multiple_of_hop_is_rejected(root: Path) -> None:
    with pytest.raises(ValueError, match="multiple of hop_length"):
        SegmentDataset(root, segment_samples=SEGMENT + 1)


def test_segment_longer_than_every_utterance_is_rejected(root: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        SegmentDataset(root, segment_samples=400 * HOP)


def test_loader_workers_and_distributed_sampler_see_the_same_batches(root: Path) -> None:
    dataset = SegmentDataset(root, segment_samples=SEGMENT)
    batches = {}
    for workers in (0, 2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=5)
        sampler.set_epoch(2)
        dataset.set_epoch(2)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers)
        batches[workers] = [batch["audio"] for batch in loader]
    assert len(batches[0]) == len(batches[2]) > 0
    for serial, parallel in zip(batches[0], batches[2], strict=True):
        assert torch.equal(serial, parallel)


def test_utterance_dataset_yields_whole_utterances_in_id_order(root: Path) -> None:
    corpus = PreparedCorpus(root)
    dataset = UtteranceDataset(root, split="train")
    ids = [dataset[i]["id"] for i in range(len(dataset))]
    assert ids == sorted(row["id"] for row in corpus.utterances("train"))
    item = dataset[0]
    row = next(r for r in corpus.utterances() if r["id"] == item["id"])
    audio, mel = corpus.load(row)
    assert torch.equal(item["audio"], audio)
    assert torch.equal(item["mel"], mel)


def test_utterance_dataset_crops_to_whole_hops_and_limits(root: Path) -> None:
    dataset = UtteranceDataset(root, split="train", max_seconds=0.5, limit=2)
    assert len(dataset) == 2
    item = dataset[0]
    expected = int(0.5 * 8000) // HOP * HOP
    assert item["audio"].shape == (expected,)
    assert item["mel"].shape == (40, expected // HOP + 1)


def test_val_and_test_splits_are_not_empty_for_the_fixtures(root: Path) -> None:
    assert len(UtteranceDataset(root, split="val")) >= 1
    assert len(UtteranceDataset(root, split="test")) >= 1


def test_missing_prepared_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distilwave data prepare"):
        PreparedCorpus(tmp_path)


# --------------------------------------------------------------------- speed perturbation


def _speed_segment(dataset: SegmentDataset, speed: float, seed: int = 0) -> tuple:
    row = max(dataset.rows, key=lambda r: r["num_samples"])
    perturbed = dataset._perturbed(row, speed, np.random.default_rng(seed))
    assert perturbed is not None
    return row, *perturbed


def test_speed_one_gives_the_stored_samples_and_frames(root: Path) -> None:
    """The resampling path at speed 1 cuts exactly a stored span, and its mel, computed on
    the cut with half a window of real context each side, equals the stored frames."""
    dataset = SegmentDataset(
        root, segment_samples=SEGMENT, dequantize=False, speed_range=(0.8, 1.25)
    )
    row, audio, mel = _speed_segment(dataset, 1.0)
    found, start = _locate(dataset.corpus, audio)
    assert found["id"] == row["id"]
    _, stored = dataset.corpus.load_span(row, start, SEGMENT // HOP)
    assert audio.shape == (SEGMENT,) and mel.shape == stored.shape
    torch.testing.assert_close(mel, stored.float(), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tone_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus of steady 200 Hz harmonic tones."""
    folder = tmp_path_factory.mktemp("tones")
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * 200 * k * t) / k for k in (1, 2, 3)) * 0.2
    for index in range(6):
        sf.write(folder / f"tone{index}.wav", tone.astype(np.float32), SAMPLE_RATE)
    out = tmp_path_factory.mktemp("tones-prepared") / "prepared"
    prepare_corpus(folder, out, tiny_preset(shard_size=3), progress=False)
    return out


@pytest.mark.parametrize("speed", [0.8, 1.0, 1.24])
def test_speed_scales_the_pitch(tone_root: Path, speed: float) -> None:
    dataset = SegmentDataset(
        tone_root, segment_samples=8 * SEGMENT, dequantize=False, speed_range=(0.8, 1.25)
    )
    _, audio, mel = _speed_segment(dataset, speed)
    spectrum = np.abs(np.fft.rfft(audio.numpy() * np.hanning(len(audio))))
    peak = np.argmax(spectrum) * SAMPLE_RATE / len(audio)
    assert abs(peak - 200 * speed) < SAMPLE_RATE / len(audio) * 1.5
    # the frames are the front end's of the played audio
    expected = MelFrontEnd(dataset.corpus.mel_config)(audio[None])[0]
    inner = slice(N_FFT // 2 // HOP + 1, -(N_FFT // 2 // HOP + 1))
    torch.testing.assert_close(mel[:, inner], expected[:, inner], atol=1e-4, rtol=0)


def test_speed_range_items_are_reproducible_and_differ_from_plain(root: Path) -> None:
    plain = SegmentDataset(root, segment_samples=SEGMENT, dequantize=False, seed=2)
    played = SegmentDataset(
        root, segment_samples=SEGMENT, dequantize=False, seed=2, speed_range=(0.7, 1.4)
    )
    again = SegmentDataset(
        root, segment_samples=SEGMENT, dequantize=False, seed=2, speed_range=(0.7, 1.4)
    )
    differ = 0
    for index in range(12):
        item = played[index]
        assert item["audio"].shape == (SEGMENT,) and item["mel"].shape == plain[index]["mel"].shape
        assert torch.equal(item["audio"], again[index]["audio"])
        assert torch.equal(item["mel"], again[index]["mel"])
        differ += not torch.equal(item["audio"], plain[index]["audio"])
    assert differ >= 6


@pytest.mark.parametrize("bad", [(1.1, 1.3), (0.7, 0.9), (0.0, 1.2)])
def test_a_speed_range_without_one_is_rejected(root: Path, bad: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="speed_range"):
        SegmentDataset(root, segment_samples=SEGMENT, speed_range=bad)

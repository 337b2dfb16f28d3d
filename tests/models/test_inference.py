"""The optimised CPU inference path equals the reference student module."""

from __future__ import annotations

import pytest
import torch

from models.bundle import load_bundle, save_bundle
from models.config import MelConfig, StudentConfig, UpsamplerConfig, WaveNetConfig
from models.inference import InferenceStudent
from models.student import IAFStudent
from tests.models.helpers import VARIANT_IDS, VARIANTS, make_context, make_student, randomise


@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_generate_equals_module(variant, kernel_size):
    student = make_student(variant, kernel_size=kernel_size)
    context = make_context(student, variant, batch=2, frames=9)
    noise = torch.randn(context.batch, context.num_samples, dtype=torch.float64)
    expected = student.generate(context, noise=noise)
    for chunk in (1, 5, 16, 10_000):
        got = InferenceStudent(student, chunk=chunk).generate(context, noise=noise)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_stream_concatenates_to_one_pass(variant):
    student = make_student(variant)
    context = make_context(student, variant, batch=2, frames=9)
    noise = torch.randn(context.batch, context.num_samples, dtype=torch.float64)
    fast = InferenceStudent(student, chunk=5)
    expected = student.generate(context, noise=noise)
    for chunk in (3, 8, 64):
        chunks = list(fast.stream(context, noise, chunk))
        assert all(c.shape[1] <= chunk for c in chunks)
        torch.testing.assert_close(torch.cat(chunks, dim=1), expected, rtol=1e-10, atol=1e-10)


def test_rejects_bad_noise_and_chunk():
    variant = VARIANTS[0]
    student = make_student(variant)
    context = make_context(student, variant)
    fast = InferenceStudent(student)
    with pytest.raises(ValueError, match="noise has shape"):
        fast.generate(context, noise=torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk"):
        InferenceStudent(student, chunk=0)
    with pytest.raises(ValueError, match="chunk"):
        next(iter(fast.stream(context, torch.zeros(2, context.num_samples), 0)))


def test_float32_bundle_matches_module_within_float_tolerance(tmp_path):
    """A cpu-8k-like student (smaller) in float32 through a bundle, as the service loads it."""
    mel = MelConfig(sample_rate=8000, n_fft=256, hop_length=50, n_mels=20)
    config = StudentConfig(
        flows=2,
        wavenet=WaveNetConfig(
            layers=4, cycle=4, residual_channels=16, gate_channels=32, skip_channels=16
        ),
        upsampler=UpsamplerConfig(channels=8),
    )
    student = randomise(IAFStudent(config, mel), seed=4, std=0.1)
    student = load_bundle(save_bundle(tmp_path / "bundle", student)).student
    features = torch.randn(2, 20, 13) * 0.5
    with torch.inference_mode():
        context = student.context(mel=features)
        noise = torch.randn(context.batch, context.num_samples)
        expected = student.generate(context, noise=noise)
        got = InferenceStudent(student, chunk=128).generate(context, noise=noise)
        streamed = torch.cat(list(InferenceStudent(student).stream(context, noise, 100)), 1)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(streamed, expected, rtol=1e-4, atol=1e-5 * scale)


def _cpu8k_like(tmp_path) -> IAFStudent:
    mel = MelConfig(sample_rate=8000, n_fft=256, hop_length=50, n_mels=20)
    config = StudentConfig(
        flows=2,
        wavenet=WaveNetConfig(
            layers=4, cycle=4, residual_channels=16, gate_channels=32, skip_channels=16
        ),
        upsampler=UpsamplerConfig(channels=8),
    )
    student = randomise(IAFStudent(config, mel), seed=5, std=0.1)
    return load_bundle(save_bundle(tmp_path / "bundle", student)).student


def test_a_clip_in_a_batch_equals_the_clip_alone_bitwise(tmp_path):
    """What the service's exact batching needs (oneDNN off, as the service runs)."""
    student = _cpu8k_like(tmp_path)
    fast = InferenceStudent(student, chunk=200)
    features = torch.randn(3, 20, 13) * 0.5
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch.inference_mode():
            batch = student.context(mel=features)
            noise = torch.randn(batch.batch, batch.num_samples)
            together = fast.generate(batch, noise=noise)
            for index in range(3):
                alone = fast.generate(
                    student.context(mel=features[index : index + 1]),
                    noise=noise[index : index + 1],
                )
                assert torch.equal(together[index], alone[0])
    finally:
        torch.backends.mkldnn.enabled = previous


def test_chunking_and_streaming_change_no_bit(tmp_path):
    student = _cpu8k_like(tmp_path)
    features = torch.randn(2, 20, 13) * 0.5
    with torch.inference_mode():
        context = student.context(mel=features)
        noise = torch.randn(context.batch, context.num_samples)
        whole = InferenceStudent(student, chunk=200).generate(context, noise=noise)
        for chunk in (32, 333, 10_000):
            fast = InferenceStudent(student, chunk=chunk)
            assert torch.equal(fast.generate(context, noise=noise), whole)
            for size in (50, 400):  # whole hops, as the service streams (the FIR flow's
                # fast path needs them; other sizes agree within float tolerance)
                assert torch.equal(torch.cat(list(fast.stream(context, noise, size)), 1), whole)
            odd = torch.cat(list(fast.stream(context, noise, 170)), 1)
            torch.testing.assert_close(odd, whole, rtol=1e-5, atol=1e-6)

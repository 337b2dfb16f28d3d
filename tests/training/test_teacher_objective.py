"""The teacher's objective: without input noise it is exactly the teacher's negative
log-likelihood per sample; with it, the likelihood of the clean x under conditionals that read
a past perturbed by noise scaled to each frame's residual RMS, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from models.mel import MelFrontEnd
from models.teacher import GaussianWaveNet
from models.transforms import gaussian_log_prob
from training.config import load_preset
from training.objectives.context import model_context
from training.objectives.likelihood import TeacherObjective, frame_rms

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/audio/asterisk/hello-world.wav"


def _case(prior: bool) -> tuple[GaussianWaveNet, dict[str, torch.Tensor]]:
    preset = load_preset("smoke")
    config = preset.teacher.model_copy(
        update={"prior": preset.teacher.prior.model_copy(update={"enabled": prior})}
    )
    torch.manual_seed(0)
    teacher = GaussianWaveNet(config, preset.mel)
    audio, _ = soundfile.read(FIXTURE, dtype="float32")
    hop = preset.mel.hop_length
    real = torch.from_numpy(audio[None, : (len(audio) // 2 // hop) * hop])
    return teacher, {"audio": real, "mel": MelFrontEnd(preset.mel)(real)}


def test_frame_rms_is_each_frames_rms_including_a_short_last_frame():
    signal = torch.randn(2, 250, dtype=torch.float64)
    rms = frame_rms(signal, 100)
    reference = np.concatenate(
        [
            np.repeat(np.sqrt(np.mean(signal[:, s:e].numpy() ** 2, axis=1))[:, None], e - s, 1)
            for s, e in [(0, 100), (100, 200), (200, 250)]
        ],
        axis=1,
    )
    np.testing.assert_allclose(rms.numpy(), reference, rtol=1e-12)
    assert not rms.requires_grad


@pytest.mark.parametrize("prior", [False, True])
def test_without_noise_the_loss_is_the_nll_per_sample(prior):
    teacher, batch = _case(prior)
    x = batch["audio"]
    out = TeacherObjective(teacher)(batch)
    context = model_context(teacher, batch["mel"], None, x.shape[1])
    expected = -teacher.log_prob(x, context).mean() / x.shape[1]
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("prior", [False, True])
def test_with_noise_the_past_is_perturbed_by_the_residuals_frame_rms(prior):
    teacher, batch = _case(prior)
    x = batch["audio"]
    torch.manual_seed(3)
    out = TeacherObjective(teacher, input_noise=0.5)(batch)
    context = model_context(teacher, batch["mel"], None, x.shape[1])
    residual = x - context.prior if prior else x
    torch.manual_seed(3)
    past = x + 0.5 * frame_rms(residual, context.hop) * torch.randn_like(x)
    mean, log_scale = teacher.flow.conditionals(past, context)
    expected = -gaussian_log_prob(x, mean, log_scale).mean()
    torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=1e-7)
    clean = TeacherObjective(teacher)(batch)["loss"].detach()
    assert abs(float(out["loss"].detach()) - float(clean)) > 1e-4  # the noise changed what it read
    out["loss"].backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in teacher.parameters())

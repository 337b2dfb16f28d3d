"""The distillation objective's terms: the deterministic-path spectral and DC terms are exactly
the MR-STFT distance and the DC distance of the student's T = 0 output, each added with its
weight and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile
import torch

from models.mel import MelFrontEnd
from models.student import IAFStudent
from models.teacher import GaussianWaveNet
from training.config import load_preset
from training.objectives.context import model_context
from training.objectives.distillation import DistillObjective
from training.objectives.spectral import dc_distance, multi_resolution_stft

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/audio/asterisk/hello-world.wav"


def _batch(hop: int, mel_front: MelFrontEnd) -> dict[str, torch.Tensor]:
    audio, _ = soundfile.read(FIXTURE, dtype="float32")
    length = (len(audio) // 2 // hop) * hop
    real = torch.from_numpy(audio[None, :length])
    return {"audio": real, "mel": mel_front(real)}


def _student_case() -> tuple[IAFStudent, GaussianWaveNet, dict[str, torch.Tensor]]:
    """The smoke preset's student (nudged off its identity start, so the T = 0 output is not
    just h(mel)), its teacher and a batch of half the fixture."""
    preset = load_preset("smoke")
    torch.manual_seed(0)
    student = IAFStudent(preset.student, preset.mel)
    teacher = GaussianWaveNet(preset.teacher, preset.mel).eval()
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return student, teacher, _batch(preset.mel.hop_length, MelFrontEnd(preset.mel))


@pytest.mark.parametrize(
    ("field", "key", "distance"),
    [
        ("mean_stft_weight", "loss/mean_stft",
         lambda x, real, ffts: sum(multi_resolution_stft(x, real, ffts))),
        ("dc_weight", "loss/dc", lambda x, real, ffts: dc_distance(x, real)),
    ],
)  # fmt: skip
def test_each_deterministic_path_term_is_its_distance_of_the_t0_output(field, key, distance):
    student, teacher, batch = _student_case()
    config = load_preset("smoke").distillation.model_copy(
        update={"mean_stft_weight": 0.0, "dc_weight": 0.0}
    )
    plain = DistillObjective(student, teacher, config)
    weighted = DistillObjective(student, teacher, config.model_copy(update={field: 3.0}))
    torch.manual_seed(1)
    base = plain(batch)
    torch.manual_seed(1)
    out = weighted(batch)
    assert "loss/mean_stft" not in base and "loss/dc" not in base
    context = model_context(student, batch["mel"], None, batch["audio"].shape[1])
    mean_waveform = student.generate(context, temperature=0.0)
    term = float(distance(mean_waveform, batch["audio"], config.stft_ffts).detach())
    assert term > 0
    assert float(out[key]) == term
    torch.testing.assert_close(out["loss"], base["loss"] + 3.0 * term, rtol=1e-6, atol=1e-6)
    out["loss"].backward()  # the term reaches the student's weights
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in student.parameters())

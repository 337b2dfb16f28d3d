"""The teacher's recipe: maximum likelihood of real segments under the Gaussian WaveNet (MAF),
validated in bits per sample on held-out whole utterances."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from models.errors import UserError
from models.prior import MelInversionPrior
from models.teacher import GaussianWaveNet
from training.config import Preset
from training.data.dataset import UtteranceDataset
from training.evaluation.plots import spectrogram_figure
from training.loop.distributed import DistInfo
from training.objectives.context import model_context
from training.objectives.likelihood import TeacherObjective, utterance_bits
from training.recipes.common import check_corpus

log = logging.getLogger(__name__)


class TeacherRecipe:
    """Builds the teacher and validates it on held-out whole utterances (bits/sample)."""

    kind = "teacher"

    def __init__(
        self,
        preset: Preset,
        data_dir: Path,
        dist: DistInfo,
        prior: MelInversionPrior | None = None,
    ) -> None:
        corpus = check_corpus(preset, data_dir)
        if preset.teacher.n_speakers and preset.teacher.n_speakers < len(corpus.speakers):
            raise UserError(
                f"the corpus has {len(corpus.speakers)} speakers; set teacher.n_speakers and "
                f"student.n_speakers to at least that"
            )
        self.preset = preset
        self.dist = dist
        teacher = GaussianWaveNet(preset.teacher, preset.mel)
        if teacher.prior is not None:
            if prior is None:
                raise UserError("this teacher models x - h: it needs the trained prior")
            # the teacher's copy of the trained prior, frozen: it reads h, never learns it
            teacher.prior.load_state_dict(prior.state_dict())
            teacher.prior.requires_grad_(False)
        teacher = teacher.to(dist.device)
        self.model: nn.Module = teacher
        self.objective: nn.Module = TeacherObjective(teacher, preset.teacher_training.input_noise)
        loop = preset.teacher_training.loop
        self.validation = UtteranceDataset(
            data_dir, "val", max_seconds=loop.val_max_seconds, limit=loop.val_utterances
        )
        self.history: list[tuple[int, float]] = []

    def validate(
        self, model: nn.Module, step: int, writer: SummaryWriter | None
    ) -> dict[str, float]:
        assert isinstance(model, GaussianWaveNet)
        items = [self.validation[i] for i in range(len(self.validation))]
        bits = utterance_bits(model, items, self.dist.device)
        self.history.append((step, bits))
        seconds = self.preset.teacher_training.sample_seconds
        if writer is not None and seconds > 0 and items:
            self._write_sample(model, items[0], seconds, step, writer)
        return {"bits": bits, "metric": bits}

    def _write_sample(
        self,
        model: GaussianWaveNet,
        item: dict[str, Any],
        seconds: float,
        step: int,
        writer: SummaryWriter,
    ) -> None:
        """A short autoregressive sample (slow by nature) next to the real audio."""
        hop = self.preset.mel.hop_length
        frames = max(2, int(seconds * self.preset.mel.sample_rate) // hop + 1)
        mel = item["mel"][None, :, :frames].to(self.dist.device)
        real = item["audio"][: (mel.shape[-1] - 1) * hop]
        speaker = item["speaker"].reshape(1).to(self.dist.device)
        context = model_context(model, mel, speaker, real.shape[0])
        generator = torch.Generator(device=self.dist.device).manual_seed(step)
        sample = model.sample(context, generator=generator)[0].float().cpu()
        rate = self.preset.mel.sample_rate
        writer.add_audio("sample/teacher", sample.clamp(-1, 1)[None], step, sample_rate=rate)
        writer.add_audio("sample/real", real[None], step, sample_rate=rate)
        fig = spectrogram_figure({"real": real.numpy(), "teacher sample": sample.numpy()}, rate)
        writer.add_figure("spectrogram/teacher", fig, step)

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))

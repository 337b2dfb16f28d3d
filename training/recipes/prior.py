"""The prior's recipe: the mel-inversion network alone, trained with spectral losses against
the real audio, validated on held-out whole utterances (log-mel distance, LSD)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from models.mel import MelFrontEnd
from models.prior import MelInversionPrior
from training.config import Preset
from training.data.dataset import UtteranceDataset
from training.evaluation.metrics import log_spectral_distance
from training.evaluation.plots import spectrogram_figure
from training.loop.distributed import DistInfo
from training.objectives.prior import PriorObjective
from training.objectives.spectral import log_mel_distance
from training.recipes.common import check_corpus

log = logging.getLogger(__name__)


class PriorRecipe:
    """Builds the prior and validates it on held-out utterances (log-mel L1, lower is better)."""

    kind = "prior"

    def __init__(self, preset: Preset, data_dir: Path, dist: DistInfo) -> None:
        check_corpus(preset, data_dir)
        self.preset = preset
        self.dist = dist
        prior = MelInversionPrior(preset.student.prior, preset.mel).to(dist.device)
        self.model: nn.Module = prior
        self.objective: nn.Module = PriorObjective(prior, preset.prior_training, preset.mel)
        loop = preset.prior_training.loop
        self.validation = UtteranceDataset(
            data_dir, "val", max_seconds=loop.val_max_seconds, limit=loop.val_utterances
        )
        self.front_end = MelFrontEnd(preset.mel).to(dist.device)
        self.history: list[tuple[int, float, float]] = []

    @torch.no_grad()
    def validate(
        self, model: nn.Module, step: int, writer: SummaryWriter | None
    ) -> dict[str, float]:
        assert isinstance(model, MelInversionPrior)
        distances, spectral, sample = [], [], None
        for index in range(len(self.validation)):
            item = self.validation[index]
            mel = item["mel"][None].to(self.dist.device)
            waveform = model(mel)
            real = item["audio"][None, : waveform.shape[1]].to(self.dist.device)
            distances.append(float(log_mel_distance(waveform, real, self.front_end)))
            fake = waveform[0].float().cpu().numpy()
            spectral.append(log_spectral_distance(real[0].cpu().numpy(), fake))
            if sample is None:
                sample = (real[0].cpu().numpy(), fake)
        mel_l1, lsd = float(np.mean(distances)), float(np.mean(spectral))
        self.history.append((step, mel_l1, lsd))
        if writer is not None and sample is not None:
            rate = self.preset.mel.sample_rate
            real_np, fake_np = sample
            writer.add_audio("sample/prior", np.clip(fake_np, -1, 1)[None], step, sample_rate=rate)
            writer.add_audio("sample/real", real_np[None], step, sample_rate=rate)
            fig = spectrogram_figure({"real": real_np, "prior h(mel)": fake_np}, rate)
            writer.add_figure("spectrogram/prior", fig, step)
        return {"mel_l1": mel_l1, "lsd_db": lsd, "metric": mel_l1}

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = [(r[0], r[1], r[2]) for r in state.get("history", [])]

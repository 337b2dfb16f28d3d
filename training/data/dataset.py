"""PyTorch datasets over a prepared directory (``distilwave data prepare``).

Shards are memory-mapped and sliced lazily, so a DataLoader worker reads only the samples and
frames it returns; handles are opened per process on first use (fork- and spawn-safe).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset

from models.audio import from_int16
from models.config import MelConfig
from models.mel import MelFrontEnd
from training.data.shards import MANIFEST_FILE, PREPARED_FILE, audio_key, mel_key
from training.data.split import SPLITS

QUANTIZATION_STEP = 2.0**-15  # one int16 step on [-1, 1)


def check_speed_range(speed_range: tuple[float, float] | None) -> None:
    """``ValueError`` unless ``speed_range`` is None or ``0 < low <= 1 <= high``."""
    if speed_range is not None and not 0 < speed_range[0] <= 1 <= speed_range[1]:
        raise ValueError(f"speed_range must satisfy 0 < low <= 1 <= high, got {speed_range}")


class PreparedCorpus:
    """Read access to a prepared directory.

    Args:
        root: The folder ``distilwave data prepare`` wrote.

    Raises:
        ValueError: If ``root`` is not a complete prepared directory.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path, manifest_path = self.root / PREPARED_FILE, self.root / MANIFEST_FILE
        if not info_path.is_file() or not manifest_path.is_file():
            raise ValueError(
                f"{self.root} is not a prepared corpus (no {PREPARED_FILE} or {MANIFEST_FILE}); "
                "run `distilwave data prepare` first"
            )
        self.info: dict[str, Any] = json.loads(info_path.read_text(encoding="utf-8"))
        self.mel_config = MelConfig.model_validate(self.info["mel"])
        self.speakers: list[str] = list(self.info["speakers"])
        with manifest_path.open(encoding="utf-8") as handle:
            self.rows: list[dict[str, Any]] = [json.loads(line) for line in handle if line.strip()]
        self._handles: dict[str, Any] = {}
        self._pid = os.getpid()

    @property
    def hop_length(self) -> int:
        return self.mel_config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    def utterances(self, split: str | None = None) -> list[dict[str, Any]]:
        """Manifest rows of ``split`` (all rows for ``None``), in manifest order."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        return [row for row in self.rows if split is None or row["split"] == split]

    def _shard(self, row: dict[str, Any]) -> Any:
        if os.getpid() != self._pid:  # a forked DataLoader worker opens its own maps
            self._handles, self._pid = {}, os.getpid()
        name = row["shard"]
        if name not in self._handles:
            self._handles[name] = safe_open(str(self.root / name), framework="numpy")
        return self._handles[name]

    def load(self, row: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """A whole utterance: audio float32 ``(T,)`` and mel float32 ``(n_mels, T // hop + 1)``."""
        shard = self._shard(row)
        audio = torch.from_numpy(shard.get_tensor(audio_key(row["id"])))
        mel = torch.from_numpy(shard.get_tensor(mel_key(row["id"])))
        return from_int16(audio), mel

    def load_span(
        self, row: dict[str, Any], start_frame: int, num_hops: int
    ) -> tuple[Tensor, Tensor]:
        """Samples ``[s, s + num_hops*hop)`` with ``s = start_frame*hop``, and their frames.

        Returns:
            int16 audio ``(num_hops * hop,)`` and mel ``(n_mels, num_hops + 1)``: frames
            ``start_frame .. start_frame + num_hops`` of the utterance's mel.
        """
        hop = self.hop_length
        if start_frame < 0 or (start_frame + num_hops) * hop > row["num_samples"]:
            raise ValueError(
                f"span of {num_hops} hops at frame {start_frame} is outside {row['id']!r} "
                f"({row['num_samples']} samples)"
            )
        shard = self._shard(row)
        start = start_frame * hop
        audio = shard.get_slice(audio_key(row["id"]))[start : start + num_hops * hop]
        mel = shard.get_slice(mel_key(row["id"]))[:, start_frame : start_frame + num_hops + 1]
        return torch.from_numpy(np.ascontiguousarray(audio)), torch.from_numpy(
            np.ascontiguousarray(mel)
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # maps are not picklable; each process opens its own
        return state


class SegmentDataset(Dataset[dict[str, Tensor]]):
    """Random fixed-length training segments with their exactly aligned mel frames.

    Item ``index`` in epoch ``e`` draws, from a generator seeded with ``(seed, e, index)``, an
    utterance with probability proportional to its length and a hop-aligned start
    ``s = i * hop``; it returns ``audio`` ``(segment_samples,)``, ``mel``
    ``(n_mels, segment_samples // hop + 1)`` = frames ``i .. i + segment_samples // hop`` of the
    utterance's mel, and ``speaker`` (long scalar). With ``dequantize``, uniform noise of one
    int16 step (width 2^-15, centred on the stored value) is added to the audio. Items depend
    only on (seed, epoch, index), so any sampler (``DistributedSampler`` too) and any number of
    DataLoader workers see the same data; call ``set_epoch`` each epoch.

    With ``speed_range = (low, high)``, each item is also played at a random speed ``f`` (log-
    uniform in the range, in steps of 1/50): ``y(t) = x(f t)``, band-limited resampling of a
    span ``f`` times as long, which scales pitch and formants together (a deeper or higher
    voice; the mel-inversion prior then does not learn one speaker's spectra). Its mel is
    computed by the corpus's front end on the resampled audio with ``n_fft / 2`` of real
    context on each side, so frame ``j`` is centred on sample ``j * hop`` as in the stored
    mels. Utterances too short for the drawn speed keep ``f = 1`` (the stored frames).

    Args:
        root: A prepared directory.
        split: ``train``, ``val`` or ``test``.
        segment_samples: Segment length, a multiple of hop.
        dequantize: Add dequantisation noise.
        seed: Base seed.
        speed_range: ``(low, high)`` speed factors, ``0 < low <= 1 <= high`` (None: off).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        segment_samples: int = 4000,
        dequantize: bool = True,
        seed: int = 0,
        speed_range: tuple[float, float] | None = None,
    ) -> None:
        self.corpus = PreparedCorpus(root)
        hop = self.corpus.hop_length
        check_speed_range(speed_range)
        self.speed_range = speed_range
        # hops of real context each side of a resampled segment (the front end's half window)
        self._margin_hops = -(-(self.corpus.mel_config.n_fft // 2) // hop)
        self._front_end: MelFrontEnd | None = None
        if segment_samples <= 0 or segment_samples % hop:
            raise ValueError(
                f"segment_samples={segment_samples} must be a positive multiple of hop_length {hop}"
            )
        self.segment_samples = segment_samples
        self.segment_hops = segment_samples // hop
        self.rows = [
            row for row in self.corpus.utterances(split) if row["num_samples"] >= segment_samples
        ]
        if not self.rows:
            raise ValueError(
                f"no {split!r} utterance in {self.corpus.root} is at least {segment_samples} "
                "samples long; use shorter segments or more data"
            )
        lengths = np.array([row["num_samples"] for row in self.rows], dtype=np.float64)
        self._cumulative = np.cumsum(lengths) / lengths.sum()
        self._length = max(1, int(sum(n // segment_samples for n in lengths.astype(np.int64))))
        self.dequantize = dequantize
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        choice = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        row = self.rows[min(choice, len(self.rows) - 1)]
        last_start = (row["num_samples"] - self.segment_samples) // self.corpus.hop_length
        start_frame = int(rng.integers(0, last_start + 1))
        speed = self._speed(rng)
        perturbed = self._perturbed(row, speed, rng) if speed != 1 else None
        if perturbed is not None:
            waveform, mel = perturbed
        else:
            audio, mel = self.corpus.load_span(row, start_frame, self.segment_hops)
            waveform = from_int16(audio)
        if self.dequantize:
            noise = rng.random(self.segment_samples, dtype=np.float32) - 0.5
            waveform = waveform + torch.from_numpy(noise) * QUANTIZATION_STEP
        return {
            "audio": waveform,
            "mel": mel,
            "speaker": torch.tensor(row["speaker_id"], dtype=torch.long),
        }

    SPEED_STEPS = 50  # speeds are multiples of 1/50: resampling 50 f -> 50 (small kernels)

    def _speed(self, rng: np.random.Generator) -> float:
        if self.speed_range is None:
            return 1.0
        low, high = self.speed_range
        drawn = math.exp(rng.uniform(math.log(low), math.log(high)))
        return round(drawn * self.SPEED_STEPS) / self.SPEED_STEPS

    def _perturbed(
        self, row: dict[str, Any], speed: float, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor] | None:
        """A segment of ``row`` played at ``speed`` and its mel, or None if ``row`` is too short."""
        hop = self.corpus.hop_length
        margin = self._margin_hops * hop
        wanted = self.segment_samples + 2 * margin  # output samples, context included
        source_rate = round(speed * self.SPEED_STEPS)
        # input samples: the output's span times the speed, plus the resampler's own edges
        needed_hops = -(-math.ceil(wanted * speed) // hop) + 2
        if needed_hops * hop > row["num_samples"]:
            return None
        start_frame = int(rng.integers(0, row["num_samples"] // hop - needed_hops + 1))
        audio, _ = self.corpus.load_span(row, start_frame, needed_hops)
        played = torchaudio.functional.resample(
            from_int16(audio), source_rate, self.SPEED_STEPS
        )
        offset = (played.shape[0] - wanted) // 2
        played = played[offset : offset + wanted]
        if self._front_end is None:
            self._front_end = MelFrontEnd(self.corpus.mel_config)
        with torch.no_grad():
            mel = self._front_end(played[None])[0]
        frames = slice(self._margin_hops, self._margin_hops + self.segment_hops + 1)
        segment = played[margin : margin + self.segment_samples].contiguous()
        return segment, mel[:, frames].contiguous()


class UtteranceDataset(Dataset[dict[str, Any]]):
    """Whole utterances of a split in a fixed order (for validation and evaluation).

    Item: ``id`` (str), ``audio`` ``(T,)``, ``mel`` ``(n_mels, T // hop + 1)``, ``speaker``
    (long scalar), where ``T`` is the utterance cropped to ``max_seconds`` (rounded down to a
    multiple of hop). Rows are ordered by id; ``limit`` keeps the first ``limit``.

    Args:
        root: A prepared directory.
        split: ``train``, ``val`` or ``test``.
        max_seconds: Crop longer utterances (``None``: whole).
        limit: Use at most this many utterances.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        max_seconds: float | None = None,
        limit: int | None = None,
    ) -> None:
        self.corpus = PreparedCorpus(root)
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {max_seconds}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        rows = sorted(self.corpus.utterances(split), key=lambda row: row["id"])
        self.rows = rows if limit is None else rows[:limit]
        hop = self.corpus.hop_length
        self.max_hops = (
            None
            if max_seconds is None
            else max(1, math.floor(max_seconds * self.corpus.sample_rate / hop))
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        hops = row["num_samples"] // self.corpus.hop_length
        if self.max_hops is not None:
            hops = min(hops, self.max_hops)
        audio, mel = self.corpus.load_span(row, 0, hops)
        return {
            "id": row["id"],
            "audio": from_int16(audio),
            "mel": mel,
            "speaker": torch.tensor(row["speaker_id"], dtype=torch.long),
        }

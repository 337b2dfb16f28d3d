"""Trained priors alone, side by side: how a prior recipe change is judged before a full run.

    python -m benchmarks.prior_runs --data runs/<run>/data --runs runs/A runs/B ...
        [--recordings DIR [DIR ...]] [--out FILE.json]

Each ``--runs`` entry is a ``distilwave train prior`` run (or any run directory holding a prior
checkpoint); its EMA prior h(mel) alone resynthesises every file from the corpus front end's
mel of it, and is scored against the file (PESQ-NB, LSD, STOI, MCD). Sets: ``test`` (the
prepared corpus's held-out test split, the 10 utterances of up to 6 s that ``distilwave
evaluate`` scores) and, with ``--recordings``, each folder of recordings (up to 12 files, the
first 6 s, brought to the corpus's loudness as the service does) as a set named after the
folder. Writes a JSON report into benchmarks/results/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, machine
from benchmarks.generalisation import recordings_set
from models.audio import normalize_loudness
from models.errors import UserError
from models.files import atomic_write_json
from models.mel import MelFrontEnd
from models.prior import MelInversionPrior
from training.data.dataset import UtteranceDataset
from training.evaluation.metrics import all_metrics
from training.export import audio_convention
from training.recipes.common import load_prior, trained_preset

TEST_UTTERANCES = 10
MAX_SECONDS = 6.0


def score_prior(prior: MelInversionPrior, clips: list[np.ndarray]) -> dict[str, float]:
    """Mean metrics of ``prior(front_end(clip))`` against each clip (whole hops of it)."""
    front_end = MelFrontEnd(prior.mel_config)
    hop, rate = prior.mel_config.hop_length, prior.mel_config.sample_rate
    rows = []
    with torch.inference_mode():
        for clip in clips:
            audio = torch.from_numpy(clip[: len(clip) // hop * hop])
            waveform = prior(front_end(audio))[0]
            rows.append(all_metrics(audio.numpy(), waveform.numpy(), rate))
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def sets(data: Path, recordings: list[Path], run: Path, rate: int) -> dict[str, list[np.ndarray]]:
    """The test split as stored, and each recordings folder at the corpus's loudness (as
    ``run``'s bundle would record it)."""
    test = UtteranceDataset(data, "test", max_seconds=MAX_SECONDS, limit=TEST_UTTERANCES)
    if len(test) == 0:
        raise SystemExit(f"{data} has no test utterances")
    out = {"test": [test[i]["audio"].numpy() for i in range(len(test))]}
    convention = audio_convention(trained_preset(run, "prior"), data)
    for folder in recordings:
        out[folder.name] = [
            normalize_loudness(
                torch.from_numpy(audio), rate, convention.loudness_lufs, convention.peak_limit
            )[0].numpy()
            for _, audio in recordings_set(folder, rate)
        ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared corpus: its test split")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="prior runs")
    parser.add_argument("--recordings", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    priors = {}
    for run in args.runs:
        try:
            priors[str(run)] = load_prior(run, torch.device("cpu"))
        except (OSError, ValueError, UserError) as exc:
            raise SystemExit(f"{run}: no trained prior ({exc})") from None
    rates = {p.mel_config.sample_rate for p in priors.values()}
    if len(rates) != 1:
        raise SystemExit(f"the runs' priors work at different rates {sorted(rates)}")
    clips = sets(args.data, args.recordings, args.runs[0], rates.pop())
    report: dict[str, Any] = {"machine": machine(), "data": str(args.data), "runs": {}}
    for name, prior in priors.items():
        report["runs"][name] = {key: score_prior(prior, audio) for key, audio in clips.items()}
        for key, means in report["runs"][name].items():
            line = (
                f"{name}  {key}: PESQ-NB {means['pesq']:.2f}  LSD {means['lsd_db']:.2f} dB  "
                f"STOI {means['stoi']:.3f}  MCD {means['mcd_db']:.2f} dB"
            )
            print(line, flush=True)
    out = args.out or RESULTS / f"prior-runs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_json(out, report, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

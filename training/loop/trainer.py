"""The training loop shared by the teacher and the student: they differ by their recipe only.

A recipe owns the model (what is averaged, checkpointed and exported), an objective module
whose ``forward(batch)`` returns named metrics with a ``"loss"`` (what DDP wraps), and a
``validate(model, step, writer)`` run on the EMA weights. The loop owns everything else:
AdamW with warm-up and cosine decay, clipping, the EMA, non-finite guards, progress bar,
TensorBoard, atomic checkpoints, exact resume and the wall-time limit.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from models.errors import UserError
from training.config import LoopConfig, OptimConfig
from training.loop.checkpoint import CheckpointManager, rng_state, set_rng_state
from training.loop.distributed import DistInfo, all_true, barrier
from training.loop.optim import EMA, make_optimizer, make_scheduler

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


class Recipe(Protocol):
    kind: str
    model: nn.Module
    objective: nn.Module

    def validate(
        self, model: nn.Module, step: int, writer: SummaryWriter | None
    ) -> dict[str, float]:
        """Metrics on held-out data with ``model`` (EMA weights); ``"metric"`` is lower-better."""
        ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...


@dataclass
class LoopResult:
    step: int
    best_metric: float
    last_metrics: dict[str, float]
    stopped: str
    elapsed_seconds: float
    checkpoint_dir: Path


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


class Trainer:
    """Runs a recipe for ``loop.steps`` optimiser steps (or until ``loop.max_minutes``)."""

    def __init__(
        self,
        recipe: Recipe,
        loop: LoopConfig,
        optim: OptimConfig,
        run_dir: Path,
        dist: DistInfo,
        batches: Callable[[int], Iterator[Batch]],
        snapshot: dict[str, Any],
    ) -> None:
        self.recipe = recipe
        self.loop = loop
        self.optim_config = optim
        self.run_dir = run_dir
        self.dist = dist
        self.batches = batches
        self.snapshot = snapshot
        self.checkpoints = CheckpointManager(run_dir / "checkpoints", loop.keep_checkpoints)
        params = [p for p in recipe.model.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = make_optimizer(params, optim)
        self.scheduler = make_scheduler(self.optimizer, loop.steps, optim)
        self.step = 0
        self.elapsed_before = 0.0
        self.skipped_total = 0
        objective: nn.Module = recipe.objective
        if dist.distributed:
            objective = DistributedDataParallel(
                objective, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None
            )
        if loop.compile:
            objective = torch.compile(objective)  # type: ignore[assignment]
        self.objective = objective
        # bf16 autocast on GPUs only (CPU bf16 is slow without AMX); losses stay fp32
        self.amp = loop.amp and dist.device.type == "cuda"
        # after the DDP wrap, which broadcasts rank 0's initial weights: every replica's EMA
        # starts from the same weights as its model
        self.ema = EMA(recipe.model, optim.ema_decay)

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "kind": self.recipe.kind,
            "model": self.recipe.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "elapsed": self.elapsed_before + (time.monotonic() - self._started),
            "skipped_steps": self.skipped_total,
            "config": self.snapshot,
            "recipe": self.recipe.extra_state(),
        }

    def resume(self) -> bool:
        """Load the newest complete checkpoint of this run directory; False if there is none."""
        found = self.checkpoints.latest()
        if found is None:
            return False
        path, state = found
        if state.get("kind") != self.recipe.kind:
            raise UserError(f"{path} is a {state.get('kind')} checkpoint, not {self.recipe.kind}")
        saved_optim = state.get("config", {}).get("optim")
        if saved_optim is not None and saved_optim != self.optim_config.model_dump(mode="json"):
            log.warning(
                "resuming with optimiser settings that differ from the checkpoint's: the "
                "checkpoint's optimiser, schedule and EMA state continue unchanged"
            )
        try:
            self.recipe.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = " ".join(line.strip() for line in str(exc).splitlines()[:2])
            raise UserError(
                f"{path} does not fit this {self.recipe.kind} (was the model configuration "
                f"changed since it was written?): {first}"
            ) from exc
        self.scheduler.load_state_dict(state["scheduler"])
        by_rank = state.get("rng_by_rank")
        if by_rank is not None and len(by_rank) == self.dist.world_size:
            set_rng_state(by_rank[self.dist.rank])
        else:  # a single process, or another number of ranks: rank 0's stream
            set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.skipped_total = int(state.get("skipped_steps", 0))
        self.recipe.load_extra_state(state.get("recipe", {}))
        log.info("resumed %s from %s at step %d", self.recipe.kind, path, self.step)
        return True

    # -- loop -----------------------------------------------------------------------------
    def _validate(self, writer: SummaryWriter | None) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            model = copy.deepcopy(self.recipe.model)
            self.ema.copy_to(model)
            model.eval()
            metrics = self.recipe.validate(model, self.step, writer)
            if writer is not None:
                for name, value in metrics.items():
                    writer.add_scalar(f"val/{name}", value, self.step)
                writer.flush()
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            log.info("%s step %d validation: %s", self.recipe.kind, self.step, shown)
        barrier(self.dist)
        return metrics

    def _skip(self, what: str, bad_in_row: int, writer: SummaryWriter | None) -> None:
        """Drop this step's gradients and count it; stop after ``max_bad_steps`` in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_total += 1
        log.warning("non-finite %s at step %d: step skipped", what, self.step)
        if writer is not None:
            writer.add_scalar("train/skipped_steps", self.skipped_total, self.step)
        if bad_in_row >= self.loop.max_bad_steps:
            saved = self.checkpoints.steps()
            last = f"the last good checkpoint is {saved[-1][1]}" if saved else "no checkpoint yet"
            raise UserError(
                f"{bad_in_row} non-finite batches, losses or gradients in a row at step "
                f"{self.step}: "
                f"stopping; {last}",
                exit_code=1,
            )

    def _checkpoint(self, metric: float | None) -> None:
        extra: dict[str, Any] = {}
        if self.dist.distributed:
            # each rank draws its own noise (the student's samples): keep every rank's stream,
            # or a resumed run gives rank 0's to all ranks and departs from an uninterrupted one
            rng_by_rank: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(rng_by_rank, rng_state())
            extra["rng_by_rank"] = rng_by_rank
        if self.dist.is_main:
            self.checkpoints.save({**self.state(), **extra}, self.step, metric)
        barrier(self.dist)

    def fit(self) -> LoopResult:
        loop = self.loop
        self._started = time.monotonic()
        writer = SummaryWriter(str(self.run_dir / "tensorboard")) if self.dist.is_main else None
        # every batch drawn either made a step or was skipped: resume from the next one, so a
        # run that skipped steps before its checkpoint resumes onto the batches it would see
        data = self.batches(self.step + self.skipped_total)
        bad_in_row = 0
        last_metrics: dict[str, float] = {}
        stopped = "steps"
        # a bar with its ETA on a terminal; plain periodic lines in a log or a pipe
        terminal = sys.stderr.isatty()
        bar = tqdm(
            total=loop.steps,
            initial=self.step,
            desc=self.recipe.kind,
            disable=not self.dist.is_main or not terminal,
            dynamic_ncols=True,
        )
        every = max(loop.log_every, loop.steps // 20)
        first_step, first_time = self.step, time.monotonic()
        self.recipe.objective.train()
        try:
            while self.step < loop.steps:
                batch = _to_device(next(data), self.dist.device)
                finite_batch = all(
                    bool(torch.isfinite(v).all())
                    for v in batch.values()
                    if isinstance(v, Tensor) and v.is_floating_point()
                )
                if not all_true(finite_batch, self.dist):
                    # corrupt data: skip before any forward pass, on every rank alike
                    bad_in_row += 1
                    self._skip("batch", bad_in_row, writer)
                    continue
                with torch.autocast(self.dist.device.type, torch.bfloat16, enabled=self.amp):
                    out = self.objective(batch)
                loss = out["loss"]
                if not all_true(bool(torch.isfinite(loss)), self.dist):
                    # keep DDP's reducer in step, then drop the step entirely
                    (torch.nan_to_num(loss) * 0.0).backward()
                    bad_in_row += 1
                    self._skip("loss", bad_in_row, writer)
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.optim_config.grad_clip)
                if not all_true(bool(torch.isfinite(grad_norm)), self.dist):
                    bad_in_row += 1
                    self._skip("gradient", bad_in_row, writer)
                    continue
                bad_in_row = 0
                self.optimizer.step()
                self.scheduler.step()
                self.ema.update(self.recipe.model)
                self.step += 1
                bar.update(1)
                if self.step % loop.log_every == 0 or self.step == 1:
                    scalars = {k: float(v.detach()) for k, v in out.items()}
                    scalars["grad/norm"] = float(grad_norm)
                    scalars["lr"] = float(self.scheduler.get_last_lr()[0])
                    bar.set_postfix(loss=f"{scalars['loss']:.4g}", gnorm=f"{float(grad_norm):.3g}")
                    if self.dist.is_main and not terminal and self.step % every == 0:
                        rate = (time.monotonic() - first_time) / (self.step - first_step)
                        log.info(
                            "%s step %d/%d: loss %.4g, %.2f s/step, ETA %.1f min",
                            self.recipe.kind,
                            self.step,
                            loop.steps,
                            scalars["loss"],
                            rate,
                            rate * (loop.steps - self.step) / 60,
                        )
                    if writer is not None:
                        for name, value in scalars.items():
                            tag = name if "/" in name else f"train/{name}"
                            writer.add_scalar(tag, value, self.step)
                elapsed = self.elapsed_before + time.monotonic() - self._started
                out_of_time = loop.max_minutes is not None and elapsed > loop.max_minutes * 60
                out_of_time = not all_true(not out_of_time, self.dist)
                done = self.step >= loop.steps or out_of_time
                validated = self.step % loop.validate_every == 0 or done
                if validated:
                    last_metrics = self._validate(writer)
                if self.step % loop.checkpoint_every == 0 or done:
                    self._checkpoint(last_metrics.get("metric") if validated else None)
                if out_of_time:
                    stopped = "time limit"
                    log.warning(
                        "%s stopped by the %.1f-minute limit at step %d of %d",
                        self.recipe.kind,
                        loop.max_minutes or 0.0,
                        self.step,
                        loop.steps,
                    )
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        elapsed = self.elapsed_before + time.monotonic() - self._started
        best = self.checkpoints.best_metric()
        return LoopResult(
            step=self.step,
            best_metric=best if math.isfinite(best) else float("nan"),
            last_metrics=last_metrics,
            stopped=stopped,
            elapsed_seconds=elapsed,
            checkpoint_dir=self.checkpoints.directory,
        )

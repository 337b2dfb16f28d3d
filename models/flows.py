"""One affine autoregressive step, run as MAF or IAF, and the cascade of named steps.

A step maps ``u -> x = mean_t + exp(log_scale_t) * u_t``. What the conditioner reads is the
direction (Papamakarios et al., 2017; Kingma et al., 2016):

* ``"maf"`` reads the *output* ``x_<t``: density (x -> u) is one parallel pass, sampling
  (u -> x) is sequential. The teacher.
* ``"iaf"`` reads the *input* ``u_<t``: sampling is one parallel pass, density of an
  external x is sequential. Every student flow.

A conditioner is a function of ``(v, context, position, past)``: it gets the variable it reads
**delayed by one** (``v_{t-1}`` at step ``t``, so it only ever sees the strict past), the
absolute position of the chunk, and what it carried from the chunks before; it returns the
chunk's means and log-scales and what to carry on. The *step* owns the stream state (the
position and the delay), so a conditioner cannot forget to advance it. The same conditioner
call runs a whole clip, a chunk of a stream, and one sample of the sequential direction.

``FlowSequence`` is the cascade, written once: sample (with the composed Gaussian cached),
generate, stream and inverse are one loop over named steps (nflows' ``CompositeTransform``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.conditioning import Context
from models.mel import check_finite
from models.transforms import compose_affine

Direction = Literal["maf", "iaf"]


class Conditioner(nn.Module):
    """Maps the delayed variable ``v_{t-1}`` (causally) to ``(mean_t, log_scale_t)``."""

    def forward(
        self, delayed: Tensor, context: Context, position: int = 0, past: Any = None
    ) -> tuple[Tensor, Tensor, Any]:
        """``delayed`` ``(B, n)`` holds ``v_{t-1}`` for ``t`` in ``[position, position + n)``;
        ``past`` is what the previous chunk returned (None at the start). Returns the chunk's
        mean and log-scale ``(B, n)`` and what to carry to the next chunk."""
        raise NotImplementedError

    def flops_per_sample(self, hop: int) -> float:
        """Multiply-adds x 2 per sample of one pass (0 for per-sample arithmetic)."""
        return 0.0


@dataclass
class StepState:
    """A step's stream state: the position, the last value read (the delay) and the past."""

    position: int = 0
    last: Tensor | None = None  # (B,)
    past: Any = None


@dataclass
class FlowStep:
    """Result of one step: the output, ``log|det J|`` per sequence ``(B,)``, and the
    per-step ``mean`` and ``log_scale`` ``(B, T)`` it used."""

    output: Tensor
    logabsdet: Tensor
    mean: Tensor
    log_scale: Tensor


class AffineAutoregressive(nn.Module):
    """``x_t = mean_t + exp(log_scale_t) u_t`` with the conditioner reading ``u`` (IAF) or
    ``x`` (MAF). ``forward`` is u -> x, ``inverse`` is x -> u; each is parallel in one
    direction and sequential in the other. ``cached=False`` makes the sequential direction
    recompute the conditioner over the whole prefix for every sample (the O(T^2) reference
    the carried state is tested against)."""

    def __init__(self, conditioner: Conditioner, direction: Direction) -> None:
        super().__init__()
        if direction not in ("maf", "iaf"):
            raise ValueError(f"direction must be 'maf' or 'iaf', got {direction!r}")
        self.conditioner = conditioner
        self.direction = direction

    def conditionals(
        self, read: Tensor, context: Context, state: StepState | None = None
    ) -> tuple[Tensor, Tensor]:
        """Means and log-scales ``(B, n)`` of one chunk, from the values the conditioner reads
        (``u`` for IAF, ``x`` for MAF); ``state`` carries a stream and is advanced."""
        state = state if state is not None else StepState()
        last = state.last if state.last is not None else read.new_zeros(read.shape[0])
        delayed = torch.cat([last[:, None], read[:, :-1]], dim=1)  # v_{t-1}
        mean, log_scale, state.past = self.conditioner(delayed, context, state.position, state.past)
        state.position += read.shape[1]
        state.last = read[:, -1]
        return mean, log_scale

    def forward(
        self, u: Tensor, context: Context, state: StepState | None = None, cached: bool = True
    ) -> FlowStep:
        """u -> x. Parallel for IAF (optionally one chunk of a stream), sequential for MAF."""
        if self.direction == "iaf":
            mean, log_scale = self.conditionals(u, context, state)
            x = mean + torch.exp(log_scale) * u
            return FlowStep(x, log_scale.sum(1), mean, log_scale)
        if state is not None:
            raise ValueError("a MAF step samples sequentially; it takes no stream")
        return self._sequential(u, context, cached, sampling=True)

    def inverse(self, x: Tensor, context: Context, cached: bool = True) -> FlowStep:
        """x -> u. Parallel for MAF, sequential for IAF. ``logabsdet`` is of x -> u."""
        if self.direction == "maf":
            mean, log_scale = self.conditionals(x, context)
            u = (x - mean) * torch.exp(-log_scale)
            return FlowStep(u, -log_scale.sum(1), mean, log_scale)
        return self._sequential(x, context, cached, sampling=False)

    def _sequential(
        self, given: Tensor, context: Context, cached: bool, sampling: bool
    ) -> FlowStep:
        """One sample at a time; the conditioner reads what was produced (MAF sampling: x) or
        recovered (IAF inversion: u) so far."""
        state = StepState()
        produced: list[Tensor] = []
        means, log_scales = [], []
        for t in range(given.shape[1]):
            last = produced[-1] if produced else given.new_zeros(given.shape[0])
            if cached:
                mean, log_scale, state.past = self.conditioner(
                    last[:, None], context, t, state.past
                )
            else:  # the naive reference: the whole delayed prefix again
                zero = [given.new_zeros(given.shape[0])]
                prefix = torch.stack(zero + produced, dim=1)  # (B, t + 1)
                mean, log_scale, _ = self.conditioner(prefix, context, 0, None)
                mean, log_scale = mean[:, -1:], log_scale[:, -1:]
            mean, log_scale = mean[:, 0], log_scale[:, 0]
            if sampling:  # MAF forward: x_t from u_t
                out = mean + torch.exp(log_scale) * given[:, t]
            else:  # IAF inverse: u_t from x_t
                out = (given[:, t] - mean) * torch.exp(-log_scale)
            produced.append(out)
            means.append(mean)
            log_scales.append(log_scale)
        log_scale_all = torch.stack(log_scales, dim=1)
        sign = 1.0 if sampling else -1.0
        return FlowStep(
            torch.stack(produced, dim=1),
            sign * log_scale_all.sum(1),
            torch.stack(means, dim=1),
            log_scale_all,
        )


@dataclass
class Cascade:
    """The output of a pass through every step, and the composed per-step Gaussian
    ``x_t = mean_t + exp(log_scale_t) z_t`` when it was asked for (all ``(B, T)``)."""

    output: Tensor
    mean: Tensor | None = None
    log_scale: Tensor | None = None


class FlowSequence(nn.ModuleDict):
    """IAF steps addressed by name, applied in insertion order: the one cascade.

    Every step's mean and log-scale at ``t`` depend on the first input ``z_<t`` only, so the
    whole sequence is one Gaussian per step given the past; ``run(compose=True)`` keeps it
    (``compose_affine`` step after step) for the cached-noise density.
    """

    def __init__(self, steps: dict[str, AffineAutoregressive]) -> None:
        super().__init__(steps)
        if any(step.direction != "iaf" for step in steps.values()):
            raise ValueError("a FlowSequence runs IAF steps")

    def step(self, name: str) -> AffineAutoregressive:
        step = self[name]
        assert isinstance(step, AffineAutoregressive)
        return step

    def names(self) -> list[str]:
        return list(self.keys())

    def run(
        self,
        noise: Tensor,
        context: Context,
        states: dict[str, StepState] | None = None,
        compose: bool = False,
    ) -> Cascade:
        """``z -> x`` through every step (one chunk of a stream when ``states`` are given)."""
        value = noise
        mean = log_scale = None
        if compose:
            mean, log_scale = torch.zeros_like(noise), torch.zeros_like(noise)
        for name in self.names():
            step = self.step(name)(value, context, None if states is None else states[name])
            value = step.output
            if mean is not None and log_scale is not None:
                mean, log_scale = compose_affine(mean, log_scale, step.mean, step.log_scale)
        return Cascade(value, mean, log_scale)

    def stream(self, noise: Tensor, context: Context, chunk: int) -> Iterator[Tensor]:
        """Chunk by chunk with every step's state carried: the chunks concatenate to ``run``."""
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        states = {name: StepState() for name in self.names()}
        for start in range(0, noise.shape[1], chunk):
            yield self.run(noise[:, start : start + chunk], context, states).output

    def inverse(self, x: Tensor, context: Context, cached: bool = True) -> tuple[Tensor, Tensor]:
        """The sequential ``x -> z`` and ``log|det dz/dx|`` ``(B,)``, last step first."""
        check_finite("x", x)
        value = x
        logabsdet = x.new_zeros(x.shape[0])
        for name in reversed(self.names()):
            step = self.step(name).inverse(value, context, cached=cached)
            value = step.output
            logabsdet = logabsdet + step.logabsdet
        return value, logabsdet

    def flops_per_sample(self, hop: int) -> dict[str, float]:
        """Each step's conditioner cost per sample, by name."""
        return {name: self.step(name).conditioner.flops_per_sample(hop) for name in self.names()}

"""The student's fast CPU inference path: the same cascade with folded weights, in pieces.

``InferenceStudent`` wraps a trained ``IAFStudent`` and exposes the same ``generate`` and
``stream`` (equal to the module within float rounding; a stream's chunks concatenate to one
pass). It is not another implementation: it is the student's own ``FlowSequence`` in which
every WaveNet flow runs its weights folded (``models.folding``: biases and the residual scale
folded in, the gate's tanh as a sigmoid, residual and skip accumulated in place), and the clip
goes through all flows in pieces of about ``chunk`` rows (samples x batch) with every step's
state carried, so activations stay in cache and memory does not grow with the clip.

Every product has at least ``MIN_ROWS`` rows and pieces are whole hops, so a clip's samples
are bitwise the same alone or in a batch (with oneDNN off, as the service runs) and whatever
the piece size, and a stream in whole hops is bitwise ``generate``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from models.conditioners import WaveNetConditioner
from models.conditioning import Context
from models.flows import AffineAutoregressive, FlowSequence, StepState
from models.student import IAFStudent
from models.wavenet import MIN_ROWS

DEFAULT_CHUNK = 2000  # rows; measured best of 500-8000 at 1 and 2 threads (benchmarks/README.md)


class InferenceStudent:
    """The student's inference path, optimised for CPU; same results as ``IAFStudent``.

    Args:
        student: a student in eval mode (weight norm folded, as ``load_bundle`` gives it).
        chunk: rows (samples x batch) per internal piece, for cache blocking; every value
            gives bitwise the same result.
    """

    def __init__(self, student: IAFStudent, chunk: int = DEFAULT_CHUNK) -> None:
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        self.student = student
        self.chunk = chunk
        steps: dict[str, AffineAutoregressive] = {}
        with torch.no_grad():
            for name in student.flows.names():
                step = student.flows.step(name)
                conditioner = step.conditioner
                if isinstance(conditioner, WaveNetConditioner):
                    step = AffineAutoregressive(conditioner.folded(), "iaf")
                steps[name] = step
        self.flows = FlowSequence(steps)

    def _piece(self, context: Context) -> int:
        """Samples per piece: about ``chunk`` rows, in whole hops (the FIR flow's bits depend
        on it) and at least ``MIN_ROWS`` samples (BLAS's on that)."""
        hop = context.hop
        samples = max(MIN_ROWS, self.chunk // context.batch)
        return -(-samples // hop) * hop

    @torch.no_grad()
    def generate(self, context: Context, noise: Tensor) -> Tensor:
        """The waveform ``(B, T)`` from ``z^0`` ``noise`` (``IAFStudent.noise_for`` draws it);
        equal to ``IAFStudent.generate`` within float rounding."""
        return torch.cat(list(self.stream(context, noise, max(context.num_samples, 1))), dim=1)

    @torch.no_grad()
    def stream(self, context: Context, noise: Tensor, chunk: int) -> Iterator[Tensor]:
        """Chunk by chunk with carried state; the chunks concatenate to ``generate``."""
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        noise = self.student.noise_for(context, noise=noise)
        states = {name: StepState() for name in self.flows.names()}
        piece = self._piece(context)
        total = context.num_samples
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            bounds = list(range(start, stop, piece)) + [stop]
            if len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_ROWS:
                del bounds[-2]  # fold a short tail into the piece before it
            parts = [
                self.flows.run(noise[:, t0:t1], context, states).output
                for t0, t1 in zip(bounds[:-1], bounds[1:], strict=True)
            ]
            yield torch.cat(parts, dim=1)

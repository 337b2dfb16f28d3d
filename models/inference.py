"""A fast CPU inference path for the IAF student: same samples, fewer and larger kernels.

``InferenceStudent`` wraps a trained ``IAFStudent`` and exposes the same ``generate`` and
``stream`` (equal to the module within float tolerance; a stream's chunks concatenate to one
pass). What changes is only how the WaveNet flows are evaluated:

* **time-major matrices.** Every activation is a ``(T B, C)`` row-major matrix, so a causal
  tap of dilation ``d`` is the same matrix ``d B`` rows earlier and every convolution is a
  plain ``addmm`` on contiguous row blocks (no padding copies, no im2col);
* **conditioning at frame rate.** Each layer's 1x1 conditioning projection is applied to the
  ``M`` frames and interpolated afterwards (both are linear: ``hop`` times fewer FLOPs);
* **folded constants.** Biases, the residual ``sqrt(1/2)`` and the gate's tanh
  (``tanh(a) = 2 sigmoid(2 a) - 1``: PyTorch's CPU sigmoid is about 4x faster than its tanh)
  are folded into the weights once, so a layer is ``addmm_`` for the taps, one ``sigmoid_``
  and two in-place products for the gate, and one ``addmm_`` that accumulates residual and
  skip in place;
* **chunks.** The batch is processed about ``chunk`` rows (samples x batch) at a time through
  all flows with each layer's left context carried, so activations stay in cache and memory
  does not grow with the clip length.

The gain and FIR synthesis flows are the module's own code. Every product has at least
``MIN_ROWS`` rows, so a clip's samples are bitwise the same alone or in a batch (with oneDNN
off, as the service runs) and whatever the internal chunk, and a stream in whole hops is
bitwise ``generate``. References: Paine et al., "Fast Wavenet Generation Algorithm" (2016) for
the carried context; WaveGlow's ``WN`` for the per-layer conditioning projection.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.conditioning import Context
from models.flows import Stream, WaveNetConditioner
from models.pitch import history_length, lagged_taps
from models.student import IAFStudent
from models.wavenet import WaveNet

DEFAULT_CHUNK = 2000  # rows; measured best of 500-8000 at 1 and 2 threads (benchmarks/README.md)
MIN_ROWS = 16  # BLAS results of a row depend on the row count below about 12 rows


@dataclass
class _Layer:
    """One gated layer with every constant folded in (see ``_fold``)."""

    lags: list[int]  # lag (in samples) of each tap, oldest first: (K-1)d, ..., d, 0
    taps: list[Tensor]  # (R, G) per tap, applied to the scaled residual state
    out: Tensor  # (G/2, R + S), or (G/2, S) for the last layer
    history_init: Tensor  # (R,) the scaled state's value before t = 0 (zero padding)

    @property
    def span(self) -> int:
        return self.lags[0]


@dataclass
class _Flow:
    """A WaveNet flow as folded matrices."""

    input_weight: Tensor  # (I, R): rows for v_{t-1} and, with pitch, v_{t-P+k} per offset k
    cond_weight: Tensor | None  # (C, L G) for the frame features
    source_weight: Tensor | None  # (S, L G) for the per-sample pitch source channels
    constant: Tensor  # (L G,) every bias that lands in a layer's gate input
    layers: list[_Layer]
    skip_bias: Tensor  # (S,)
    hidden: tuple[Tensor, Tensor]  # (S, S) transposed weight, (S,) bias
    head: tuple[Tensor, Tensor]  # (S, 2), (2,)
    bound: float
    residual: int
    skip: int
    gate: int
    lag_offsets: list[int] = field(default_factory=list)


@dataclass
class _FlowState:
    """Left context of one flow: each layer's last ``span`` state rows, the last input."""

    histories: list[Tensor] = field(default_factory=list)  # (span B, R) per layer
    last: Tensor | None = None  # (B,)
    lag_history: Tensor | None = None  # (B, H) last inputs, for pitch-lagged inputs
    projected: Tensor | None = None  # (M, B, L G) conditioning at frame rate


def _fold(conditioner: WaveNetConditioner, frame_channels: int) -> _Flow:
    """Fold a WaveNet flow's biases, residual scale and sigmoid into plain matrices.

    With ``s = sqrt(1/2)`` the reference computes ``h_{l+1} = s (h_l + res_l)``. Writing
    ``h_l = s^l (g_l + k_l)`` with constant ``k_l`` makes the update ``g_{l+1} = g_l +
    (W_res / s^l) gate`` (an in-place accumulate) and moves every bias into the gate input of
    the next layers; zero padding before t = 0 becomes ``g = -k_l`` there.
    """
    net: WaveNet = conditioner.net
    cfg = net.config
    scale = math.sqrt(0.5)
    res, gate, skip = cfg.residual_channels, cfg.gate_channels, cfg.skip_channels
    half = gate // 2
    # tanh(a) = 2 sigmoid(2 a) - 1 (one sigmoid over both halves is cheaper than tanh here):
    # double the a half of every gate input; the output weights read
    # (sigmoid(2 a) - 1/2) sigmoid(b) = gate / 2.
    gate_scale = torch.ones(gate, dtype=torch.float64)
    gate_scale[:half] = 2.0

    def weight(layer: torch.nn.Module) -> Tensor:
        assert isinstance(layer, torch.nn.Conv1d)
        return layer.weight.detach().to(torch.float64)

    def bias(layer: torch.nn.Module) -> Tensor:
        assert isinstance(layer, torch.nn.Conv1d)
        if layer.bias is None:
            return torch.zeros(layer.out_channels, dtype=torch.float64)
        return layer.bias.detach().to(torch.float64)

    constant = bias(net.input_proj)  # k_0
    layers: list[_Layer] = []
    constants: list[Tensor] = []
    skip_bias = torch.zeros(skip, dtype=torch.float64)
    for index, dilation in enumerate(cfg.dilations):
        level = scale**index
        conv = net.dilated[index]
        w = weight(conv)  # (G, R, K)
        kernel = w.shape[-1]
        lags = [(kernel - 1 - j) * dilation for j in range(kernel)]
        taps = [(level * w[:, :, j] * gate_scale[:, None]).T for j in range(kernel)]  # (R, G)
        total = level * w.sum(-1) @ constant + bias(conv)  # every tap reads h + k: fold k
        if net.cond_projection is not None:
            total = total + bias(net.cond_projection)[index * gate : (index + 1) * gate]
        constants.append(total * gate_scale)
        out_w, out_b = weight(net.outputs[index])[:, :, 0], bias(net.outputs[index])
        if index < cfg.layers - 1:
            res_w, skip_w = out_w[:res] / level, out_w[res:]
            out = torch.cat([res_w, skip_w], dim=0).T * 2.0  # (G/2, R + S)
            skip_bias = skip_bias + out_b[res:]
            history = -constant.clone()
            constant = constant + out_b[:res] / level
        else:
            out = out_w.T * 2.0  # (G/2, S)
            skip_bias = skip_bias + out_b
            history = -constant.clone()
        layers.append(_Layer(lags=lags, taps=taps, out=out, history_init=history))
    cond_weight, source_weight = None, None
    if net.cond_projection is not None:
        projection = weight(net.cond_projection)[:, :, 0]  # (L G, C)
        layer_scale = gate_scale.repeat(cfg.layers)
        scaled = (projection * layer_scale[:, None]).T  # (C, L G)
        cond_weight = scaled[:frame_channels] if frame_channels else None
        source_weight = scaled[frame_channels:] if scaled.shape[0] > frame_channels else None
    dtype = next(net.parameters()).dtype

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype).contiguous()

    for layer in layers:
        layer.taps = [cast(t) for t in layer.taps]
        layer.out = cast(layer.out)
        layer.history_init = cast(layer.history_init)
    return _Flow(
        input_weight=cast(weight(net.input_proj)[:, :, 0].T),
        cond_weight=None if cond_weight is None else cast(cond_weight),
        source_weight=None if source_weight is None else cast(source_weight),
        constant=cast(torch.cat(constants)),
        layers=layers,
        skip_bias=cast(skip_bias),
        hidden=(cast(weight(net.head_hidden)[:, :, 0].T), cast(bias(net.head_hidden))),
        head=(cast(weight(net.head_out)[:, :, 0].T), cast(bias(net.head_out))),
        bound=conditioner.log_scale_bound,
        residual=res,
        skip=skip,
        gate=gate,
        lag_offsets=list(conditioner.lag_offsets),
    )


def _project(frames: Tensor, weight: Tensor) -> Tensor:
    """``(M, B, C) @ (C, N)``, padded to at least ``MIN_ROWS`` rows.

    BLAS picks other kernels for a handful of rows, and their last bits differ: with enough
    rows a row's result never depends on how many others (other requests) share the product.
    """
    frames_count, batch, channels = frames.shape
    rows = frames.reshape(frames_count * batch, channels)
    if rows.shape[0] < MIN_ROWS:
        rows = torch.cat([rows, rows.new_zeros(MIN_ROWS - rows.shape[0], channels)])
    return (rows @ weight)[: frames_count * batch].reshape(frames_count, batch, -1)


class InferenceStudent:
    """The student's inference path, optimised for CPU; same results as ``IAFStudent``.

    Args:
        student: a student in eval mode (weight norm folded, as ``load_bundle`` gives it).
        chunk: rows (samples x batch) per internal chunk, for cache blocking; every value
            gives bitwise the same result.
    """

    def __init__(self, student: IAFStudent, chunk: int = DEFAULT_CHUNK) -> None:
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        self.student = student
        self.chunk = chunk
        with torch.no_grad():
            frame_channels = student.upsampler.out_channels
            self.flows = [
                _fold(step.conditioner, frame_channels)  # type: ignore[arg-type]
                for step in student.wavenet_steps
            ]
        self.lag_input = any(flow.lag_offsets for flow in self.flows)
        # the mixed-excitation, gain and synthesis flows are per-sample arithmetic and one
        # FIR: the module's own code
        self.lead = student.leading_steps
        self.tail = student.tail_steps

    # The module's conditioning and noise, unchanged.
    def context(
        self,
        mel: Tensor | None = None,
        num_samples: int | None = None,
        speaker: Tensor | None = None,
        batch: int = 1,
    ) -> Context:
        return self.student.context(mel, num_samples, speaker, batch)

    def draw_noise(
        self, context: Context, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        return self.student.draw_noise(context, temperature, generator)

    @property
    def sample_rate(self) -> int:
        return self.student.sample_rate

    @property
    def hop_length(self) -> int:
        return self.student.hop_length

    @torch.no_grad()
    def generate(
        self,
        context: Context,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The waveform ``(B, T)``; equal to ``IAFStudent.generate`` within float tolerance."""
        if noise is None:
            noise = self.draw_noise(context, temperature, generator)
        self.student._check_noise(noise, context)
        states = self._start(context)
        source = noise
        for flow in self.lead:
            source = flow(source, context).output
        parts = [
            self._wavenet_flows(source[:, t0:t1], context, states, t0)
            for t0, t1 in self._pieces(0, context.num_samples, context.batch)
        ]
        value = torch.cat(parts, dim=1) if parts else source.clone()
        for flow in self.tail:
            value = flow(value, context).output
        return value

    @torch.no_grad()
    def stream(self, context: Context, noise: Tensor, chunk: int) -> Iterator[Tensor]:
        """Chunk by chunk with carried state; the chunks concatenate to ``generate``."""
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        self.student._check_noise(noise, context)
        states = self._start(context)
        leads = [Stream() for _ in self.lead]
        tails = [Stream() for _ in self.tail]
        for start in range(0, context.num_samples, chunk):
            stop = min(start + chunk, context.num_samples)
            source = noise[:, start:stop]
            for flow, state in zip(self.lead, leads, strict=True):
                source = flow(source, context, stream=state).output
            parts = [
                self._wavenet_flows(source[:, t0 - start : t1 - start], context, states, t0)
                for t0, t1 in self._pieces(start, stop, context.batch)
            ]
            value = torch.cat(parts, dim=1)
            for flow, state in zip(self.tail, tails, strict=True):
                value = flow(value, context, stream=state).output
            yield value

    # ------------------------------------------------------------------------ internals
    def _pieces(self, start: int, stop: int, batch: int) -> list[tuple[int, int]]:
        """Sample ranges of about ``chunk`` rows (samples x batch), none under ``MIN_ROWS``
        samples unless the whole range is (a row's bits never depend on the chunking)."""
        step = max(MIN_ROWS, self.chunk // batch)
        bounds = list(range(start, stop, step)) + [stop]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_ROWS:
            del bounds[-2]  # fold a short tail into the piece before it
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    def _start(self, context: Context) -> list[_FlowState]:
        states = []
        batch = context.batch
        for flow in self.flows:
            state = _FlowState()
            for layer in flow.layers:
                rows = layer.history_init.expand(layer.span * batch, -1)
                state.histories.append(rows.contiguous())
            if flow.cond_weight is not None:
                if context.frames is None:
                    raise ValueError("this student is conditional: the context needs frames")
                frames = context.frames.to(flow.cond_weight.dtype).permute(2, 0, 1)  # (M, B, C)
                state.projected = _project(frames, flow.cond_weight)  # (M, B, L G)
            if flow.source_weight is not None and context.source is None:
                raise ValueError("this student reads the pitch source: the context has none")
            if flow.input_weight.shape[0] > 1:
                if context.lag is None:
                    raise ValueError("this student reads pitch-lagged inputs: no pitch in context")
                state.lag_history = context.lag.new_zeros(0)  # sized on first use
            states.append(state)
        return states

    def _wavenet_flows(
        self, noise: Tensor, context: Context, states: list[_FlowState], t0: int
    ) -> Tensor:
        """The WaveNet flows over samples ``[t0, t0 + n)`` of ``noise`` ``(B, n)``."""
        value = noise.T.contiguous()  # (n, B) time-major
        for flow, state in zip(self.flows, states, strict=True):
            value = self._flow(flow, state, value, context, t0)
        return value.T

    def _flow(
        self, flow: _Flow, state: _FlowState, value: Tensor, context: Context, t0: int
    ) -> Tensor:
        steps, batch = value.shape
        rows = steps * batch
        res = flow.residual
        flat = value.reshape(rows)
        last = state.last if state.last is not None else value.new_zeros(batch)
        delayed = torch.cat([last, flat[: rows - batch]])  # v_{t-1}, time-major
        state.last = value[-1].clone()
        residual_and_skip = value.new_empty(rows, res + flow.skip)
        if flow.input_weight.shape[0] == 1:
            torch.outer(delayed, flow.input_weight[0], out=residual_and_skip[:, :res])
        else:
            taps = self._lagged(flow, state, value, context, t0)  # (n B, taps)
            inputs = torch.cat([delayed[:, None], taps], dim=1)
            torch.mm(inputs, flow.input_weight, out=residual_and_skip[:, :res])
        residual_and_skip[:, res:] = flow.skip_bias
        residual = residual_and_skip[:, :res]
        skip = residual_and_skip[:, res:]
        gate = flow.gate
        cond = self._conditioning(flow, state, context, t0, steps)  # (rows, L G) or None
        for index, layer in enumerate(flow.layers):
            if cond is not None:
                pre = cond[:, index * gate : (index + 1) * gate]
            else:
                pre = flow.constant[index * gate : (index + 1) * gate].expand(rows, -1).clone()
            # rows of time t - lag: the carried history, then this chunk (one copy, so every
            # product has the chunk's row count and a row's bits never depend on the batch)
            joined = torch.cat([state.histories[index], residual])  # ((span + n) B, R)
            span = layer.span
            for lag, weight in zip(layer.lags, layer.taps, strict=True):
                start = (span - lag) * batch
                pre.addmm_(residual if lag == 0 else joined[start : start + rows], weight)
            state.histories[index] = joined[rows:]
            activated = pre.sigmoid_()
            half = gate // 2
            gated = activated[:, :half].sub_(0.5).mul_(activated[:, half:])  # gate / 2
            if index < len(flow.layers) - 1:
                residual_and_skip.addmm_(gated, layer.out)
            else:
                skip.addmm_(gated, layer.out)
        weight, bias = flow.hidden
        hidden = torch.addmm(bias, skip.relu(), weight).relu_()
        weight, bias = flow.head
        out = torch.addmm(bias, hidden, weight)  # (rows, 2)
        mean, raw = out[:, 0], out[:, 1]
        log_scale = torch.tanh(raw / flow.bound).mul_(flow.bound)
        result = torch.addcmul(mean, log_scale.exp_(), flat)
        return result.reshape(steps, batch)

    @staticmethod
    def _lagged(flow: _Flow, state: _FlowState, value: Tensor, context: Context, t0: int) -> Tensor:
        """``v_{t - P_t + k}`` per offset, time-major ``(n B, taps)``, with the module's
        ``lagged_taps`` and history."""
        assert context.lag is not None and state.lag_history is not None
        sequence = value.T  # (B, n)
        if state.lag_history.numel() == 0:
            state.lag_history = sequence.new_zeros(context.batch, history_length(context.lag))
        history = state.lag_history
        lag = context.lag[:, t0 : t0 + value.shape[0]]
        taps = lagged_taps(sequence, lag, flow.lag_offsets, t0, history)  # (B, taps, n)
        state.lag_history = torch.cat([history, sequence], dim=1)[:, -history.shape[1] :]
        return taps.permute(2, 0, 1).reshape(-1, taps.shape[1])

    def _conditioning(
        self, flow: _Flow, state: _FlowState, context: Context, t0: int, steps: int
    ) -> Tensor | None:
        """Every layer's gate input from the conditioning, ``(n B, L G)``, constants added."""
        projected = state.projected
        batch = context.batch
        if projected is None:
            if flow.source_weight is None:
                return None
            dense = flow.constant.expand(steps * batch, -1).clone()
        else:
            hop = context.hop
            t1 = t0 + steps
            first, last = t0 // hop, (t1 - 1) // hop
            blocks = last - first + 1
            index = torch.arange(first, first + blocks + 1).clamp_max(projected.shape[0] - 1)
            knots = projected.index_select(0, index) + flow.constant  # (blocks + 1, B, L G)
            weight = (torch.arange(hop, dtype=knots.dtype) / hop)[None, :, None, None]
            step = (knots[1:] - knots[:-1])[:, None]  # (blocks, 1, B, L G)
            dense = torch.addcmul(knots[:-1, None], step, weight)  # (blocks, hop, B, L G)
            dense = dense.reshape(blocks * hop * batch, -1)  # (blocks hop B, L G)
            offset = (t0 - first * hop) * batch
            dense = dense[offset : offset + steps * batch]
        if flow.source_weight is not None:
            assert context.source is not None
            source = context.source[..., t0 : t0 + steps].to(dense.dtype)  # (B, S, n)
            dense.addmm_(source.permute(2, 0, 1).reshape(steps * batch, -1), flow.source_weight)
        return dense

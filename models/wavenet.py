"""A WaveNet-style causal dilated stack, run in parallel, in chunks, or one sample at a time.

Reference: van den Oord et al., "WaveNet: A Generative Model for Raw Audio" (2016); the
incremental queues follow Paine et al., "Fast Wavenet Generation Algorithm" (2016).

Tensors are channel-last, ``(B, T, C)``: a dilated convolution with kernel K is one
matrix product over the K taps ``h[t - (K-1-k) d]`` concatenated on the channel axis.
The stack is causal *including* the current sample: output ``t`` depends on inputs
``<= t``. Callers that need a strictly autoregressive conditioner shift by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from models.config import WaveNetConfig


def linear(in_features: int, out_features: int, weight_norm: bool) -> nn.Linear:
    """An ``nn.Linear``, weight-normalised over its output rows when asked."""
    layer = nn.Linear(in_features, out_features)
    if weight_norm:
        parametrizations.weight_norm(layer, name="weight", dim=0)
    return layer


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace every weight-norm parametrisation in ``module`` by its plain weight, in place."""
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
    return module


@dataclass
class WaveNetQueues:
    """Per-layer ring buffers of past layer inputs for one-sample-at-a-time use.

    ``buffers[l]`` is ``(B, (K-1) d_l, R)``: the input of layer ``l`` at time ``s``
    lives at row ``s mod (K-1) d_l``. Zeros stand for the zero padding before t = 0.
    """

    buffers: list[Tensor]
    t: int = 0


@dataclass
class WaveNetStream:
    """Left context carried between chunks: the last ``(K-1) d_l`` inputs of every layer."""

    context: list[Tensor] = field(default_factory=list)


class WaveNet(nn.Module):
    """Gated causal dilated convolutions with residual and skip paths.

    Args:
        config: the stack's shape.
        in_channels: channels of the input sequence.
        out_channels: channels of the head's output (zero-initialised, so it starts at 0).
        cond_channels: channels of the per-sample conditioning (0: unconditional).

    Conditioning enters every layer's gate through one linear map to ``2G * layers``
    channels (WaveGlow's ``WN``); callers may apply ``cond_projection`` at frame rate
    and interpolate its output, which is the same thing because both are linear.
    """

    def __init__(
        self, config: WaveNetConfig, in_channels: int, out_channels: int, cond_channels: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        res, gate, skip = config.residual_channels, config.gate_channels, config.skip_channels
        wn = config.weight_norm
        self.gate_half = gate // 2
        self.input_proj = linear(in_channels, res, wn)
        self.dilated = nn.ModuleList(
            linear(config.kernel_size * res, gate, wn) for _ in range(config.layers)
        )
        last = config.layers - 1
        self.outputs = nn.ModuleList(
            linear(self.gate_half, skip if i == last else res + skip, wn)
            for i in range(config.layers)
        )
        self.cond_projection = (
            linear(cond_channels, gate * config.layers, wn) if cond_channels > 0 else None
        )
        self.head_hidden = linear(skip, skip, wn)
        self.head_out = nn.Linear(skip, out_channels)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)

    @property
    def cond_width(self) -> int:
        """Channels of the projected conditioning: ``2G`` per layer (here ``gate_channels``)."""
        return self.config.gate_channels * self.config.layers

    def _layer(self, index: int, taps: Tensor, cond: Tensor | None) -> Tensor:
        """Gate activations ``(B, T, G/2)`` from the concatenated taps ``(B, T, K R)``."""
        pre = self.dilated[index](taps)
        if cond is not None:
            width = self.config.gate_channels
            pre = pre + cond[..., index * width : (index + 1) * width]
        a, b = pre.split(self.gate_half, dim=-1)  # (B, T, G) -> 2 x (B, T, G/2)
        return torch.tanh(a) * torch.sigmoid(b)

    def _head(self, skip: Tensor) -> Tensor:
        return self.head_out(torch.relu(self.head_hidden(torch.relu(skip))))

    def forward(
        self, inputs: Tensor, cond: Tensor | None = None, stream: WaveNetStream | None = None
    ) -> Tensor:
        """Run the stack over a whole sequence or the next chunk of one.

        Args:
            inputs: ``(B, T, in_channels)``.
            cond: projected conditioning ``(B, T, cond_width)`` or None.
            stream: carried left context; None means zeros before t = 0. Updated in place.

        Returns:
            ``(B, T, out_channels)``; output ``t`` depends on inputs ``<= t`` only.
        """
        cfg = self.config
        batch, steps = inputs.shape[0], inputs.shape[1]
        h = self.input_proj(inputs)
        skip: Tensor | None = None
        new_context: list[Tensor] = []
        for index, dilation in enumerate(cfg.dilations):
            span = (cfg.kernel_size - 1) * dilation
            if stream is not None and stream.context:
                left = stream.context[index]
            else:
                left = h.new_zeros(batch, span, h.shape[-1])
            full = torch.cat([left, h], dim=1)  # (B, span + T, R)
            taps = torch.cat(
                [full[:, k * dilation : k * dilation + steps] for k in range(cfg.kernel_size)],
                dim=-1,
            )  # (B, T, K R)
            new_context.append(full[:, steps:])
            out = self.outputs[index](self._layer(index, taps, cond))
            if index < cfg.layers - 1:
                residual, s = out.split([cfg.residual_channels, cfg.skip_channels], dim=-1)
                h = (h + residual) * math.sqrt(0.5)
            else:
                s = out
            skip = s if skip is None else skip + s
        if stream is not None:
            stream.context = new_context
        assert skip is not None
        return self._head(skip)

    def start_queues(self, batch: int, like: Tensor) -> WaveNetQueues:
        """Empty queues (zeros = the padding before t = 0) for ``step``."""
        cfg = self.config
        return WaveNetQueues(
            buffers=[
                like.new_zeros(batch, (cfg.kernel_size - 1) * d, cfg.residual_channels)
                for d in cfg.dilations
            ]
        )

    def step(self, inputs: Tensor, cond: Tensor | None, queues: WaveNetQueues) -> Tensor:
        """One new sample in O(layers) work: ``(B, in_channels) -> (B, out_channels)``.

        Equal to the last output of ``forward`` over the whole history; ``queues``
        advance by one sample.
        """
        cfg = self.config
        t = queues.t
        h = self.input_proj(inputs)  # (B, R)
        skip: Tensor | None = None
        for index, dilation in enumerate(cfg.dilations):
            buffer = queues.buffers[index]
            size = buffer.shape[1]
            past = [buffer[:, (t - j * dilation) % size] for j in range(cfg.kernel_size - 1, 0, -1)]
            taps = torch.cat([*past, h], dim=-1)  # (B, K R)
            buffer[:, t % size] = h
            out = self.outputs[index](self._layer(index, taps, cond))
            if index < cfg.layers - 1:
                residual, s = out.split([cfg.residual_channels, cfg.skip_channels], dim=-1)
                h = (h + residual) * math.sqrt(0.5)
            else:
                s = out
            skip = s if skip is None else skip + s
        queues.t = t + 1
        assert skip is not None
        return self._head(skip)

"""The causal dilated stack: against an independent Conv1d reference, causality, receptive
field, chunked streaming (down to one sample), folded weights, weight norm, FLOPs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import models.wavenet
from models.conditioning import interpolate_frames
from models.config import WaveNetConfig
from models.folding import fold
from models.wavenet import (
    Conditioning,
    StackState,
    WaveNet,
    fold_weight_norm,
    rows_of,
    run_stack,
)
from tests.models.helpers import randomise

CONFIGS = [
    WaveNetConfig(layers=3, cycle=2, residual_channels=4, gate_channels=4, skip_channels=8),
    WaveNetConfig(
        layers=4, cycle=3, residual_channels=3, gate_channels=6, skip_channels=7, kernel_size=3
    ),
    WaveNetConfig(
        layers=2,
        cycle=2,
        residual_channels=4,
        gate_channels=4,
        skip_channels=8,
        kernel_size=2,
        weight_norm=True,
    ),
]
CONFIG_IDS = ["k2", "k3", "k2-wn"]
EVERY_CONFIG = pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
CONDITIONING = pytest.mark.parametrize(
    "frames,source", [(3, 2), (3, 0), (0, 2), (0, 0)], ids=["both", "frames", "source", "none"]
)
IN, OUT, HOP = 2, 3, 4
T = 30


def _net(config, frames=3, source=2, seed=0):
    net = WaveNet(config, IN, OUT, frames, source).double()
    return randomise(net, seed)


def _inputs(frames=3, source=2, seed=1, batch=2, steps=T):
    """Inputs ``(B, IN, T)`` and the conditioning (frames ``(B, C, M)``, source ``(B, S, T)``)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, IN, steps, generator=generator, dtype=torch.float64)
    count = -(-steps // HOP) + 1
    features = torch.randn(batch, frames, count, generator=generator, dtype=torch.float64)
    channels = torch.randn(batch, source, steps, generator=generator, dtype=torch.float64)
    cond = Conditioning(features if frames else None, channels if source else None, HOP)
    return x, cond


def _run(net, x, cond, t0=0, state=None, matrices=None):
    """The stack on ``(B, I, n)`` -> ``(B, O, n)`` (time-major inside)."""
    batch, _, steps = x.shape
    m = matrices if matrices is not None else net.matrices()
    out = run_stack(m, rows_of(x), cond, t0, batch, state)
    return out.reshape(steps, batch, -1).permute(1, 2, 0)


def _conv_reference(net, x, cond):
    """The same stack written plainly with padded ``F.conv1d``, conditioning per sample."""
    cfg = net.config
    steps = x.shape[-1]
    parts = []
    if cond.frames is not None:
        parts.append(interpolate_frames(cond.frames, 0, steps, cond.hop))
    if cond.source is not None:
        parts.append(cond.source)
    per_sample = torch.cat(parts, 1) if parts else None
    h = net.input_proj(x)
    skip = 0.0
    for index, dilation in enumerate(cfg.dilations):
        layer = net.dilated[index]
        pre = F.conv1d(F.pad(h, ((cfg.kernel_size - 1) * dilation, 0)), layer.weight,
                       layer.bias, dilation=dilation)  # fmt: skip
        if per_sample is not None:
            width = cfg.gate_channels
            projection = net.cond_projection
            weight = projection.weight[index * width : (index + 1) * width]
            bias = projection.bias[index * width : (index + 1) * width]
            pre = pre + F.conv1d(per_sample, weight, bias)
        a, b = pre.chunk(2, dim=1)
        out = net.outputs[index](torch.tanh(a) * torch.sigmoid(b))
        if index < cfg.layers - 1:
            residual, out = out.split([cfg.residual_channels, cfg.skip_channels], dim=1)
            h = (h + residual) * math.sqrt(0.5)
        skip = skip + out
    return net.head_out(torch.relu(net.head_hidden(torch.relu(skip))))


@EVERY_CONFIG
@CONDITIONING
def test_wavenet_equals_a_plain_conv1d_reference(config, frames, source):
    net = _net(config, frames, source)
    x, cond = _inputs(frames, source)
    torch.testing.assert_close(_run(net, x, cond), _conv_reference(net, x, cond), rtol=0,
                               atol=1e-12)  # fmt: skip


@EVERY_CONFIG
@pytest.mark.parametrize("position", [0, 7, T - 1])
def test_wavenet_output_ignores_future_inputs(config, position):
    net = _net(config)
    x, cond = _inputs()
    perturbed = x.clone()
    perturbed[..., position + 1 :] += 1.0
    out, out_p = _run(net, x, cond), _run(net, perturbed, cond)
    assert torch.equal(out[..., : position + 1], out_p[..., : position + 1])


@EVERY_CONFIG
def test_wavenet_output_depends_on_the_current_input(config):
    # Some clip of the batch must feel it (one clip alone may sit in a dead ReLU).
    net = _net(config, 0, 0)
    x, cond = _inputs(0, 0, batch=8)
    perturbed = x.clone()
    perturbed[..., 7] += 1.0
    assert (_run(net, x, cond)[..., 7] != _run(net, perturbed, cond)[..., 7]).any()


@EVERY_CONFIG
def test_wavenet_receptive_field_is_exact(config):
    net = _net(config, 0, 0)
    field = config.receptive_field
    target = field + 2
    x, cond = _inputs(0, 0, batch=8, steps=target + 1)  # some clip must feel the oldest sample
    outside, inside = x.clone(), x.clone()
    outside[..., target - field] += 1.0  # one sample beyond the field
    inside[..., target - field + 1] += 1.0  # the oldest sample inside it
    base = _run(net, x, cond)[..., target]
    assert torch.equal(_run(net, outside, cond)[..., target], base)
    assert (_run(net, inside, cond)[..., target] != base).any()


@EVERY_CONFIG
@CONDITIONING
@pytest.mark.parametrize(
    "sizes",
    [[1] * T, [5, 5, 20], [7, 1, 13, 9], [29, 1]],
    ids=["ones", "5-5-20", "7-1-13-9", "29-1"],
)
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_wavenet_chunked_stream_matches_the_parallel_pass(
    config, frames, source, sizes, grad, monkeypatch
):
    # one sample at a time computes gate inputs ahead: make it cross their boundaries
    monkeypatch.setattr(models.wavenet, "SEQUENTIAL_CONDITIONING", 4)
    net = _net(config, frames, source)
    x, cond = _inputs(frames, source)
    state, outs, start = StackState(), [], 0
    with torch.set_grad_enabled(grad):
        for size in sizes:
            outs.append(_run(net, x[..., start : start + size], cond, start, state))
            start += size
        torch.testing.assert_close(torch.cat(outs, -1), _run(net, x, cond), rtol=0, atol=1e-13)


@EVERY_CONFIG
@CONDITIONING
@pytest.mark.parametrize("sizes", [[T], [1] * T, [7, 1, 13, 9]], ids=["whole", "ones", "mixed"])
def test_folded_weights_give_the_same_stack(config, frames, source, sizes):
    net = fold_weight_norm(_net(config, frames, source))
    x, cond = _inputs(frames, source)
    expected = _run(net, x, cond)
    folded = fold(net)
    assert folded.residual_scale == 1.0 and folded.input_bias is None
    with torch.no_grad():  # the folded stack accumulates in place: inference only
        state, outs, start = StackState(), [], 0
        for size in sizes:
            outs.append(_run(net, x[..., start : start + size], cond, start, state, folded))
            start += size
    torch.testing.assert_close(torch.cat(outs, -1), expected, rtol=0, atol=1e-12)


def test_fresh_wavenet_head_outputs_zero():
    net = WaveNet(CONFIGS[0], IN, OUT, 3, 2).double()
    x, cond = _inputs()
    assert torch.equal(_run(net, x, cond), torch.zeros(2, OUT, T, dtype=torch.float64))


def test_folding_weight_norm_keeps_outputs():
    net = _net(CONFIGS[2])
    x, cond = _inputs()
    expected = _run(net, x, cond)
    folded = fold_weight_norm(copy.deepcopy(net))
    torch.testing.assert_close(_run(folded, x, cond), expected, rtol=0, atol=1e-14)


def test_folding_weight_norm_leaves_plain_parameters():
    net = fold_weight_norm(copy.deepcopy(_net(CONFIGS[2])))
    names = [name for name, _ in net.named_parameters()]
    assert not [name for name in names if "parametrizations" in name]


def test_weight_norm_config_parametrises_every_hidden_layer():
    net = WaveNet(CONFIGS[2], IN, OUT, 3, 2)
    names = {name for name, _ in net.named_parameters()}
    expected = {"input_proj", "head_hidden", "cond_projection"}
    expected |= {f"dilated.{i}" for i in range(2)} | {f"outputs.{i}" for i in range(2)}
    assert {f"{layer}.parametrizations.weight.original0" for layer in expected} <= names


@pytest.mark.parametrize("missing", ["frames", "source"])
def test_wavenet_rejects_conditioning_it_needs_and_did_not_get(missing):
    net = _net(CONFIGS[0])
    x, cond = _inputs()
    cond = Conditioning(
        None if missing == "frames" else cond.frames,
        None if missing == "source" else cond.source,
        HOP,
    )
    with pytest.raises(ValueError, match="conditioning frames|source channels"):
        _run(net, x, cond)


def test_wavenet_flops_per_sample_count_every_product():
    config = WaveNetConfig(
        layers=3, cycle=3, residual_channels=4, gate_channels=6, skip_channels=5, kernel_size=2
    )
    net = WaveNet(config, 2, 2, frame_channels=10, source_channels=3)
    # L = 3, R = 4, G = 6, S = 5, K = 2, I = 2, O = 2, hop 4: multiply-adds per sample
    products = (
        2 * 4  # input projection, I x R
        + 3 * 2 * 4 * 6  # dilated taps, L K R G
        + 3 * ((4 + 5) * 2 + 5)  # outputs, G/2 x (R + S) for two layers, G/2 x S for the last
        + 5 * 5  # head hidden
        + 5 * 2  # head out
        + 3 * 6 * (3 + 10 / 4)  # conditioning: source per sample, frames shared by the hop
    )
    expected = 2.0 * products + 2 * 3 * 6  # and one interpolation (a lerp) per gate input
    assert expected == 746.0
    assert net.flops_per_sample(4) == pytest.approx(expected)


def test_wavenet_config_rejects_odd_gate_channels():
    with pytest.raises(ValueError, match="even"):
        WaveNetConfig(gate_channels=5)


def test_wavenet_config_derives_dilations_and_receptive_field():
    config = WaveNetConfig(layers=5, cycle=3, kernel_size=3)
    assert config.dilations == [1, 2, 4, 1, 2]
    assert config.receptive_field == 1 + 2 * (1 + 2 + 4 + 1 + 2)

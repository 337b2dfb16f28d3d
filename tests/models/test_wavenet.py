"""The causal dilated stack: causality, receptive field, queues, chunked streaming, weight norm."""

from __future__ import annotations

import copy

import pytest
import torch

from models.config import WaveNetConfig
from models.wavenet import WaveNet, WaveNetStream, fold_weight_norm
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
IN, OUT, COND = 2, 3, 5
T = 30


def _net(config, conditional=True, seed=0):
    net = WaveNet(config, IN, OUT, COND if conditional else 0).double()
    return randomise(net, seed)


def _inputs(conditional, seed=1, batch=2, steps=T):
    """Inputs ``(B, IN, T)`` and per-sample conditioning ``(B, COND, T)`` or None."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, IN, steps, generator=generator, dtype=torch.float64)
    cond = None
    if conditional:
        cond = torch.randn(batch, COND, steps, generator=generator, dtype=torch.float64)
    return x, cond


@EVERY_CONFIG
@pytest.mark.parametrize("conditional", [True, False], ids=["cond", "uncond"])
@pytest.mark.parametrize("position", [0, 7, T - 1])
def test_wavenet_output_ignores_future_inputs(config, conditional, position):
    net = _net(config, conditional)
    x, cond = _inputs(conditional)
    perturbed = x.clone()
    perturbed[..., position + 1 :] += 1.0
    out, out_p = net(x, cond), net(perturbed, cond)
    assert torch.equal(out[..., : position + 1], out_p[..., : position + 1])


@EVERY_CONFIG
def test_wavenet_output_depends_on_the_current_input(config):
    # Some clip of the batch must feel it (one clip alone may sit in a dead ReLU).
    net = _net(config, conditional=False)
    x, _ = _inputs(False, batch=8)
    perturbed = x.clone()
    perturbed[..., 7] += 1.0
    assert (net(x)[..., 7] != net(perturbed)[..., 7]).any()


@EVERY_CONFIG
def test_wavenet_receptive_field_is_exact(config):
    net = _net(config, conditional=False)
    field = config.receptive_field
    target = field + 2
    x, _ = _inputs(False, batch=8, steps=target + 1)  # some clip must feel the oldest sample
    outside, inside = x.clone(), x.clone()
    outside[..., target - field] += 1.0  # one sample beyond the field
    inside[..., target - field + 1] += 1.0  # the oldest sample inside it
    base = net(x)[..., target]
    assert torch.equal(net(outside)[..., target], base)
    assert (net(inside)[..., target] != base).any()


@EVERY_CONFIG
@pytest.mark.parametrize("conditional", [True, False], ids=["cond", "uncond"])
def test_wavenet_queued_steps_match_the_parallel_pass(config, conditional):
    net = _net(config, conditional)
    x, cond = _inputs(conditional)
    projected = None if cond is None else net.project_cond(cond)  # (B, G * layers, T)
    queues = net.start_queues(x.shape[0], x)
    steps = [
        net.step(x[..., t], None if projected is None else projected[..., t], queues)
        for t in range(T)
    ]
    torch.testing.assert_close(torch.stack(steps, -1), net(x, cond), rtol=0, atol=1e-13)


@EVERY_CONFIG
@pytest.mark.parametrize("conditional", [True, False], ids=["cond", "uncond"])
@pytest.mark.parametrize(
    "sizes",
    [[1] * T, [5, 5, 20], [7, 1, 13, 9], [29, 1]],
    ids=["ones", "5-5-20", "7-1-13-9", "29-1"],
)
def test_wavenet_chunked_stream_matches_the_parallel_pass(config, conditional, sizes):
    net = _net(config, conditional)
    x, cond = _inputs(conditional)
    stream, outs, start = WaveNetStream(), [], 0
    for size in sizes:
        part = None if cond is None else cond[..., start : start + size]
        outs.append(net(x[..., start : start + size], part, stream))
        start += size
    torch.testing.assert_close(torch.cat(outs, -1), net(x, cond), rtol=0, atol=1e-13)


def test_fresh_wavenet_head_outputs_zero():
    net = WaveNet(CONFIGS[0], IN, OUT, COND).double()
    x, cond = _inputs(True)
    assert torch.equal(net(x, cond), torch.zeros(2, OUT, T, dtype=torch.float64))


@pytest.mark.parametrize("conditional", [True, False], ids=["cond", "uncond"])
def test_folding_weight_norm_keeps_outputs(conditional):
    net = _net(CONFIGS[2], conditional)
    x, cond = _inputs(conditional)
    expected = net(x, cond)
    folded = fold_weight_norm(copy.deepcopy(net))
    torch.testing.assert_close(folded(x, cond), expected, rtol=0, atol=1e-14)


def test_folding_weight_norm_leaves_plain_parameters():
    net = fold_weight_norm(copy.deepcopy(_net(CONFIGS[2])))
    names = [name for name, _ in net.named_parameters()]
    assert not [name for name in names if "parametrizations" in name]


def test_weight_norm_config_parametrises_every_hidden_layer():
    net = WaveNet(CONFIGS[2], IN, OUT, COND)
    names = {name for name, _ in net.named_parameters()}
    expected = {"input_proj", "head_hidden", "cond_projection"}
    expected |= {f"dilated.{i}" for i in range(2)} | {f"outputs.{i}" for i in range(2)}
    assert {f"{layer}.parametrizations.weight.original0" for layer in expected} <= names


@pytest.mark.parametrize("conditional", [True, False], ids=["cond", "uncond"])
def test_wavenet_rejects_conditioning_that_does_not_match_the_stack(conditional):
    net = _net(CONFIGS[0], conditional)
    x, _ = _inputs(False)
    cond = None if conditional else torch.zeros(2, COND, T, dtype=torch.float64)
    with pytest.raises(ValueError, match="conditioning"):
        net(x, cond)


def test_wavenet_config_rejects_odd_gate_channels():
    with pytest.raises(ValueError, match="even"):
        WaveNetConfig(gate_channels=5)


def test_wavenet_config_derives_dilations_and_receptive_field():
    config = WaveNetConfig(layers=5, cycle=3, kernel_size=3)
    assert config.dilations == [1, 2, 4, 1, 2]
    assert config.receptive_field == 1 + 2 * (1 + 2 + 4 + 1 + 2)

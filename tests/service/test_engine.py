"""The engine in-process: exact batching, streaming, overload, deadlines, readiness, drain,
metrics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from models.conditioning import Context
from models.vocoder import load
from service.engine import Engine
from service.jobs import Job
from service.worker import Worker
from tests.service.conftest import assert_same_audio, mel_of, running, settings_for

pytestmark = pytest.mark.anyio


async def metric(client: Any, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` (with these labels) in /metrics."""
    text = (await client.get("/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def requests_for(kind: str, speech: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    """Requests of different lengths, seeds, temperatures (and speakers, for 'multi')."""
    if kind == "uncond":
        return [
            ("/v1/audio/generate", {"duration_s": d, "seed": i, "temperature": t})
            for i, (d, t) in enumerate([(0.4, 1.0), (1.3, 0.7), (0.05, 1.0), (0.9, 0.0)])
        ]
    lengths = [12, 31, 2, 25]
    out = []
    for i, frames in enumerate(lengths):
        body: dict[str, Any] = {"mel": mel_of(speech[i], frames), "seed": 10 + i}
        body["temperature"] = [1.0, 0.5, 1.0, 0.9][i]
        if kind == "multi":
            body["speaker"] = i % 3
        out.append(("/v1/audio/vocode", body))
    return out


@pytest.mark.parametrize(
    ("kind", "exact"),
    [
        ("cond", True),
        ("cond", False),
        ("multi", True),
        ("pitch", True),
        ("prior", True),
        ("prior", False),
        ("uncond", True),
    ],
)
async def test_batched_requests_equal_each_request_alone(bundles, speech, kind, exact):
    requests = requests_for(kind, speech)
    alone = settings_for(bundles[kind], max_batch=1, max_delay_ms=0, exact=exact)
    async with running(alone) as (client, _):
        solo = [(await client.post(route, json=body)).content for route, body in requests]
    # The batch closes when all four have arrived (or after 1 s, if the box is very busy).
    batched = settings_for(
        bundles[kind], max_batch=len(requests), max_delay_ms=1000, exact=exact, max_batch_padding=99
    )
    async with running(batched) as (client, _):
        responses = await asyncio.gather(
            *(client.post(route, json=body) for route, body in requests)
        )
        assert await metric(client, "distilwave_batch_size_count") == 1  # one batch of four
        assert await metric(client, "distilwave_batch_size_sum") == len(requests)
    for response, expected in zip(responses, solo, strict=True):
        assert response.status_code == 200
        assert_same_audio(response.content, expected, exact)  # same seed, any batch


async def test_resynthesis_batches_with_vocoding_exactly(bundles, speech):
    upload = {"file": ("a.wav", speech[1].read_bytes())}
    vocode = {"mel": mel_of(speech[0], 20), "seed": 5}
    async with running(settings_for(bundles["cond"], max_batch=1)) as (client, _):
        solo_up = await client.post("/v1/audio/resynthesize", files=upload, data={"seed": "4"})
        solo_voc = await client.post("/v1/audio/vocode", json=vocode)
    together = settings_for(bundles["cond"], max_batch=2, max_delay_ms=1000, max_batch_padding=99)
    async with running(together) as (client, _):
        both = await asyncio.gather(
            client.post("/v1/audio/resynthesize", files=upload, data={"seed": "4"}),
            client.post("/v1/audio/vocode", json=vocode),
        )
        assert await metric(client, "distilwave_batch_size_count") == 1
    assert_same_audio(both[0].content, solo_up.content, exact=False)
    assert_same_audio(both[1].content, solo_voc.content, exact=False)


def test_stacked_contexts_pad_by_repeating_the_last_block(bundles, speech):
    student = load(bundles["cond"]).student
    with torch.inference_mode():
        mels = [torch.tensor(mel_of(speech[0], n)).T[None] for n in (5, 9)]
        contexts = [student.context(mel=m) for m in mels]
        stacked = Context.stack(contexts)
    assert stacked.batch == 2 and stacked.num_samples == 800
    assert stacked.frames is not None and stacked.lpc is not None
    assert torch.equal(stacked.frames[0, :, 5:], contexts[0].frames[0, :, -1:].expand(-1, 4))
    assert torch.equal(stacked.lpc.gain[0, 4:], contexts[0].lpc.gain[0, -1:].expand(4))


@pytest.mark.parametrize(
    ("kind", "exact"), [("cond", True), ("cond", False), ("pitch", False), ("prior", False)]
)
async def test_stream_concatenation_equals_the_whole_clip(bundles, speech, kind, exact):
    mel = mel_of(speech[2], None)
    settings = settings_for(bundles[kind], stream_chunk_s=0.05, exact=exact)
    async with running(settings) as (client, _):
        for fmt in ("pcm", "wav"):
            body = {"mel": mel, "seed": 9, "response_format": fmt}
            whole = await client.post("/v1/audio/vocode", json=body)
            streamed = await client.post("/v1/audio/vocode", json={**body, "stream": True})
            assert streamed.status_code == 200
            assert streamed.headers["x-seed"] == "9"
            assert "content-length" not in streamed.headers
            if fmt == "wav":
                header = streamed.content[:44]
                assert header[4:8] == b"\xff\xff\xff\xff" and header[40:44] == b"\xff\xff\xff\xff"
                assert_same_audio(streamed.content[44:], whole.content[44:], exact)
            else:
                assert_same_audio(streamed.content, whole.content, exact)
        upload = {"file": ("a.wav", speech[3].read_bytes())}
        whole = await client.post("/v1/audio/resynthesize", files=upload, data={"seed": "2"})
        streamed = await client.post(
            "/v1/audio/resynthesize", files=upload, data={"seed": "2", "stream": "true"}
        )
        # The gain is undone and the padding trimmed chunk by chunk.
        assert_same_audio(streamed.content[44:], whole.content[44:], exact)


async def test_engine_stream_yields_chunks_of_whole_hops(bundles, speech):
    async with running(settings_for(bundles["cond"], stream_chunk_s=0.1)) as (_, app):
        engine: Engine = app.state.service.engine
        mel = np.asarray(mel_of(speech[0], 26), dtype=np.float32)
        job = Job(source={"mel": mel.T}, samples=2600, ticket=engine.admit(stream=True), seed=1)
        chunks = await engine.stream(job)
        sizes = [chunk.shape[0] async for chunk in chunks]
        assert engine.admission.streams == 0 and engine.admission.waiting == 0
    assert sizes == [800, 800, 800, 200]  # 26 frames: 26 hops (the last frame repeated)


def _block(engine: Engine) -> tuple[threading.Event, threading.Event]:
    """Make the inference thread wait inside its next batch until released."""
    entered, release = threading.Event(), threading.Event()
    original: Callable[..., Any] = engine._generate

    def blocked(prepared: Any) -> Any:
        entered.set()
        release.wait(20)
        return original(prepared)

    engine._generate = blocked  # type: ignore[method-assign]
    return entered, release


async def test_overload_answers_503_at_once_and_never_500(bundles):
    settings = settings_for(bundles["cond"], queue_size=2, max_batch=1, max_delay_ms=0)
    body = {"mel": [[0.0] * 80] * 5}
    async with running(settings) as (client, app):
        entered, release = _block(app.state.service.engine)
        first = asyncio.ensure_future(client.post("/v1/audio/vocode", json=body))
        await anyio.to_thread.run_sync(entered.wait, 10)
        queued = [
            asyncio.ensure_future(client.post("/v1/audio/vocode", json=body)) for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        with anyio.fail_after(2):  # answered while the engine is still blocked
            refused = await asyncio.gather(
                *(client.post("/v1/audio/vocode", json=body) for _ in range(3))
            )
        for response in refused:
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "queue_full"
        release.set()
        for response in [await first, *await asyncio.gather(*queued)]:
            assert response.status_code == 200
        assert await metric(client, "distilwave_rejected_requests_total", reason="queue_full") == 3


async def test_requests_end_at_their_deadline_and_expired_ones_are_never_generated(bundles):
    settings = settings_for(bundles["cond"], request_timeout_s=0.5, max_batch=1, max_delay_ms=0)
    body = {"mel": [[0.0] * 80] * 5}
    async with running(settings) as (client, app):
        entered, release = _block(app.state.service.engine)
        first = asyncio.ensure_future(client.post("/v1/audio/vocode", json=body))
        await anyio.to_thread.run_sync(entered.wait, 10)
        late = asyncio.ensure_future(client.post("/v1/audio/vocode", json=body))
        with anyio.fail_after(10):  # both answered while the engine is still stuck
            answers = await asyncio.gather(first, late)
        for answer in answers:
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "deadline_exceeded"
            assert "retry-after" in answer.headers
        release.set()
        with anyio.fail_after(10):  # the stuck batch ends; the expired job is dropped unrun
            while app.state.service.engine.admission.waiting:
                await asyncio.sleep(0.01)
            while await metric(client, "distilwave_batch_size_count") < 1:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert await metric(client, "distilwave_batch_size_count") == 1
        assert await metric(client, "distilwave_rejected_requests_total", reason="deadline") == 2


async def test_readiness_waits_for_the_warm_up(bundles, monkeypatch):
    gate = threading.Event()
    original = Worker._warm_up

    def slow_warm_up(self: Worker) -> None:
        gate.wait(20)
        original(self)

    monkeypatch.setattr(Worker, "_warm_up", slow_warm_up)
    async with running(settings_for(bundles["cond"]), ready=False) as (client, _):
        assert (await client.get("/livez")).status_code == 200
        loading = await client.get("/readyz")
        assert loading.status_code == 503
        assert loading.headers["retry-after"] == "1"
        assert loading.json()["error"]["code"] == "loading"
        refused = await client.post("/v1/audio/vocode", json={"mel": [[0.0] * 80] * 3})
        assert refused.status_code == 503
        assert await metric(client, "distilwave_model_ready") == 0
        gate.set()
        with anyio.fail_after(20):
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.01)
        assert await metric(client, "distilwave_model_ready") == 1


async def test_draining_refuses_new_work_and_fails_readiness(bundles):
    async with running(settings_for(bundles["cond"])) as (client, app):
        app.state.service.begin_drain()
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "draining"
        assert "retry-after" in ready.headers
        refused = await client.post("/v1/audio/vocode", json={"mel": [[0.0] * 80] * 3})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "draining"
        assert (await client.get("/livez")).status_code == 200
        assert await metric(client, "distilwave_model_ready") == 0


async def test_metrics_are_present_and_move(bundles):
    async with running(settings_for(bundles["cond"])) as (client, _):
        names = {
            f.name for f in text_string_to_metric_families((await client.get("/metrics")).text)
        }
        for name in (
            "distilwave_queue_wait_seconds",
            "distilwave_inference_seconds",
            "distilwave_batch_size",
            "distilwave_generated_audio_seconds",
            "distilwave_real_time_factor",
            "distilwave_queue_depth",
            "distilwave_rejected_requests",
            "distilwave_model_ready",
        ):
            assert name in names
        before = await metric(client, "distilwave_generated_audio_seconds_total")
        ok = await client.post("/v1/audio/vocode", json={"mel": [[0.0] * 80] * 40})
        assert ok.status_code == 200
        await client.post("/v1/audio/vocode", json={"mel": [[0.0] * 79]})
        after = await metric(client, "distilwave_generated_audio_seconds_total")
        assert after - before == pytest.approx(40 * 100 / 8000)
        route = "/v1/audio/vocode"
        assert await metric(client, "http_requests_total", handler=route, status="2xx") == 1
        assert await metric(client, "http_requests_total", handler=route, status="4xx") == 1
        assert await metric(client, "http_request_duration_seconds_count", handler=route) == 2
        assert await metric(client, "distilwave_rejected_requests_total", reason="invalid") == 1
        assert await metric(client, "distilwave_inference_seconds_count") >= 1
        assert await metric(client, "distilwave_real_time_factor_count") >= 1
        assert await metric(client, "distilwave_model_ready") == 1

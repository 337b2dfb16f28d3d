"""Limits and failure paths in-process (issue 14): capacity before decoding, liveness from the
inference threads' heartbeat, readiness of every worker, no stranded job, the gate behind a
root path, bounded decoding, off-loop JSON bodies with their OpenAPI schema intact, and stream
stalls. Each test failed before its fix; the over-the-wire ones are in ``test_attacks.py``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from service import parsing, routes
from service.app import create_app
from service.schemas import GenerateRequest, VocodeRequest
from tests.service.conftest import mel_of, running, settings_for
from tests.service.test_engine import _block, metric

pytestmark = pytest.mark.anyio

SILENCE = {"mel": [[0.0] * 80] * 5}


async def test_a_digit_like_speaker_name_is_a_422_not_a_500(bundles, speech):
    async with running(settings_for(bundles["multi"])) as (client, _):
        for name in ("²", "٣", "1.0", " 1"):
            body = {"mel": mel_of(speech[0], 10), "speaker": name}
            response = await client.post("/v1/audio/vocode", json=body)
            assert response.status_code == 422, (name, response.text)
            assert response.json()["error"]["param"] == "speaker"
        ok = await client.post("/v1/audio/vocode", json={**SILENCE, "speaker": "1"})
        assert ok.status_code == 200


async def test_uploads_are_refused_at_capacity_before_they_are_decoded(
    bundles, speech, monkeypatch
):
    decoded: list[int] = []
    original = routes.decode_upload

    def counting(*args: Any) -> Any:
        decoded.append(1)
        return original(*args)

    monkeypatch.setattr(routes, "decode_upload", counting)
    settings = settings_for(bundles["cond"], queue_size=1, max_batch=1, max_delay_ms=0)
    async with running(settings) as (client, app):
        entered, release = _block(app.state.service.engine)
        first = asyncio.ensure_future(client.post("/v1/audio/vocode", json=SILENCE))
        await anyio.to_thread.run_sync(entered.wait, 10)
        queued = asyncio.ensure_future(client.post("/v1/audio/vocode", json=SILENCE))
        with anyio.fail_after(10):
            while await metric(client, "distilwave_queue_depth") < 1:
                await asyncio.sleep(0.01)
        upload = {"file": ("a.wav", speech[0].read_bytes())}
        refused = await client.post("/v1/audio/resynthesize", files=upload)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "queue_full"
        assert decoded == []  # refused before any decoding
        release.set()
        assert (await first).status_code == (await queued).status_code == 200
        accepted = await client.post("/v1/audio/resynthesize", files=upload)
        assert accepted.status_code == 200 and decoded == [1]


async def test_a_stuck_inference_thread_turns_livez_503(bundles):
    settings = settings_for(bundles["cond"], liveness_timeout_s=0.5, request_timeout_s=60)
    async with running(settings) as (client, app):
        entered, release = _block(app.state.service.engine)
        stuck = asyncio.ensure_future(client.post("/v1/audio/vocode", json=SILENCE))
        await anyio.to_thread.run_sync(entered.wait, 10)
        with anyio.fail_after(20):
            while (live := await client.get("/livez")).status_code == 200:
                await asyncio.sleep(0.05)
        assert live.status_code == 503 and live.json()["error"]["code"] == "engine_stalled"
        assert (await client.get("/readyz")).status_code == 503
        refused = await client.post("/v1/audio/vocode", json=SILENCE)
        assert refused.status_code == 503
        release.set()
        assert (await stuck).status_code == 200
        with anyio.fail_after(20):
            while (await client.get("/livez")).status_code != 200:
                await asyncio.sleep(0.05)
        assert (await client.get("/readyz")).status_code == 200


async def test_a_failure_anywhere_in_a_turn_answers_every_job_it_took(bundles, monkeypatch):
    async with running(settings_for(bundles["cond"], max_batch=4, max_delay_ms=200)) as (
        client,
        app,
    ):
        metrics = app.state.service.metrics

        def broken(*args: Any) -> None:
            raise RuntimeError("a metrics backend failed")

        monkeypatch.setattr(metrics.batch_size, "observe", broken)  # after the batch ran
        with anyio.fail_after(20):
            answers = await asyncio.gather(
                *(client.post("/v1/audio/vocode", json=SILENCE) for _ in range(3))
            )
        assert [a.status_code for a in answers] == [500] * 3
        monkeypatch.undo()
        vocoder = app.state.service.engine.vocoder

        def unprepared(**kwargs: Any) -> Any:
            raise RuntimeError("not a ValueError")

        monkeypatch.setattr(vocoder, "request", unprepared)
        with anyio.fail_after(20):
            answer = await client.post("/v1/audio/vocode", json=SILENCE)
        assert answer.status_code == 500 and answer.json()["error"]["code"] == "server_error"
        monkeypatch.undo()
        assert (await client.post("/v1/audio/vocode", json=SILENCE)).status_code == 200
        assert app.state.service.engine.admission.waiting == 0


async def test_readyz_means_every_worker_is_ready(bundles, tmp_path):
    settings = settings_for(bundles["cond"], workers=2, ready_dir=tmp_path)
    async with running(settings, ready=False) as (client, _):
        with anyio.fail_after(20):
            while not list(tmp_path.iterdir()):  # this worker marked itself ready
                await asyncio.sleep(0.01)
        alone = await client.get("/readyz")
        assert alone.status_code == 503
        assert alone.json()["error"]["code"] == "workers_loading"
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (tmp_path / str(other.pid)).touch()
            assert (await client.get("/readyz")).status_code == 200
        finally:
            other.kill()
            other.wait()
        assert (await client.get("/readyz")).status_code == 503  # a dead worker's mark
    assert list(tmp_path.iterdir()) == [tmp_path / str(other.pid)]  # ours went at shutdown


async def test_root_path_does_not_get_around_the_gate(bundles):
    app = create_app(settings_for(bundles["cond"]))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            with anyio.fail_after(20):
                while (await client.get("/api/readyz")).status_code != 200:
                    await asyncio.sleep(0.01)
            app.state.service.begin_drain()
            refused = await client.post("/api/v1/audio/vocode", json=SILENCE)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "draining"


async def test_json_bodies_are_validated_off_the_event_loop(bundles, monkeypatch):
    """Small bodies in a thread (large ones in a child process: tests/service/test_parsing.py)."""
    threads: list[bool] = []
    original = parsing.parse

    def recording(*args: Any) -> Any:
        threads.append(_on_loop())
        return original(*args)

    monkeypatch.setattr(parsing, "parse", recording)
    async with running(settings_for(bundles["cond"])) as (client, _):
        assert (await client.post("/v1/audio/vocode", json=SILENCE)).status_code == 200
        bad = await client.post("/v1/audio/vocode", json={"mel": [["x"] * 80] * 2000})
        assert bad.status_code == 422
        # 160,000 bad numbers: validation stopped at the first (and the union's other branch)
        assert bad.json()["error"]["message"].endswith("(and 1 more problems)")
    assert threads == [False, False]


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def test_openapi_request_bodies_are_the_typed_routes(bundles):
    """The JSON routes parse their own body; their schema is what a typed parameter gives."""
    typed = FastAPI()

    @typed.post("/v1/audio/vocode")
    async def vocode(request: VocodeRequest) -> None: ...

    @typed.post("/v1/audio/generate")
    async def generate(request: GenerateRequest) -> None: ...

    expected = typed.openapi()
    async with running(settings_for(bundles["cond"])) as (client, _):
        ours = (await client.get("/openapi.json")).json()
    for path in ("/v1/audio/vocode", "/v1/audio/generate"):
        assert (
            ours["paths"][path]["post"]["requestBody"]
            == (expected["paths"][path]["post"]["requestBody"])
        )
    for name in ("VocodeRequest", "GenerateRequest"):
        assert ours["components"]["schemas"][name] == expected["components"]["schemas"][name]


async def test_admission_places_come_back_however_a_request_ends(bundles):
    settings = settings_for(bundles["cond"], queue_size=2, max_streams=1)
    async with running(settings) as (client, app):
        admission = app.state.service.engine.admission
        bad = await client.post("/v1/audio/vocode", json={"mel": [[99.0] * 80] * 3})
        assert bad.status_code == 422
        streamed = await client.post("/v1/audio/vocode", json={**SILENCE, "stream": True})
        assert streamed.status_code == 200
        upload = {"file": ("a.wav", b"not audio")}
        assert (await client.post("/v1/audio/resynthesize", files=upload)).status_code == 422
        assert (admission.waiting, admission.streams) == (0, 0)
        assert await metric(client, "distilwave_rejected_requests_total", reason="invalid") == 2


async def test_concurrent_streams_end_in_any_order(bundles, speech):
    """A stream that ends before one started earlier is taken out of the live streams (its
    job holds arrays: it is found by identity, not compared field by field)."""
    settings = settings_for(bundles["cond"], stream_chunk_s=0.05, max_delay_ms=200)
    long_mel, short_mel = mel_of(speech[2], None), mel_of(speech[0], 6)
    async with running(settings) as (client, app):
        bodies = [
            {"mel": long_mel, "stream": True, "response_format": "pcm"},
            {"mel": short_mel, "stream": True, "response_format": "pcm"},
            {"mel": short_mel, "stream": True, "response_format": "pcm", "seed": 3},
        ]
        with anyio.fail_after(30):
            answers = await asyncio.gather(
                *(client.post("/v1/audio/vocode", json=body) for body in bodies)
            )
        assert [a.status_code for a in answers] == [200] * 3
        assert [len(a.content) for a in answers] == [
            len(long_mel) * 200,
            len(short_mel) * 200,
            len(short_mel) * 200,
        ]
        assert app.state.service.engine.admission.streams == 0

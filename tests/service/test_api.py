"""Every endpoint in-process (httpx over ASGI, lifespan included): audio out, card, errors."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from tests.service.conftest import SPEAKERS, mel_of, running, settings_for

pytestmark = pytest.mark.anyio

HOP = 100
RATE = 8000


def decode(response: httpx.Response) -> np.ndarray:
    """int16 samples of a wav, flac or pcm response."""
    if response.headers["content-type"] == "audio/pcm":
        return np.frombuffer(response.content, dtype="<i2")
    samples, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
    assert rate == RATE
    return samples


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def mel(speech: list[Path]) -> list[list[float]]:
    return mel_of(speech[0], frames=40)


async def test_vocode_returns_wav_of_frames_times_hop_and_echoes_seed(bundles, mel):
    async with running(settings_for(bundles["cond"])) as (client, _):
        response = await client.post("/v1/audio/vocode", json={"mel": mel, "seed": 7})
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["x-seed"] == "7"
        samples = decode(response)
        assert samples.shape == (len(mel) * HOP,)
        assert np.abs(samples).max() > 0
        again = await client.post("/v1/audio/vocode", json={"mel": mel, "seed": 7})
        assert again.content == response.content
        other = await client.post("/v1/audio/vocode", json={"mel": mel, "seed": 8})
        assert other.content != response.content
        unseeded = await client.post("/v1/audio/vocode", json={"mel": mel})
        seed = int(unseeded.headers["x-seed"])
        replay = await client.post("/v1/audio/vocode", json={"mel": mel, "seed": seed})
        assert replay.content == unseeded.content


async def test_vocode_formats_carry_the_same_samples(bundles, mel):
    async with running(settings_for(bundles["cond"])) as (client, _):
        outputs = {}
        for fmt, media in (("wav", "audio/wav"), ("flac", "audio/flac"), ("pcm", "audio/pcm")):
            response = await client.post(
                "/v1/audio/vocode", json={"mel": mel, "seed": 1, "response_format": fmt}
            )
            assert response.status_code == 200
            assert response.headers["content-type"] == media
            outputs[fmt] = decode(response)
        np.testing.assert_array_equal(outputs["wav"], outputs["flac"])
        np.testing.assert_array_equal(outputs["wav"], outputs["pcm"])


async def test_vocode_base64_npy_equals_nested_lists(bundles, mel):
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(mel, dtype=np.float32))
    encoded = base64.b64encode(buffer.getvalue()).decode()
    async with running(settings_for(bundles["cond"])) as (client, _):
        lists = await client.post("/v1/audio/vocode", json={"mel": mel, "seed": 2})
        npy = await client.post("/v1/audio/vocode", json={"mel": encoded, "seed": 2})
        assert npy.status_code == 200
        assert npy.content == lists.content


async def test_temperature_zero_is_deterministic_without_a_seed(bundles, mel):
    async with running(settings_for(bundles["cond"])) as (client, _):
        first = await client.post("/v1/audio/vocode", json={"mel": mel, "temperature": 0})
        second = await client.post("/v1/audio/vocode", json={"mel": mel, "temperature": 0})
        assert first.content == second.content


BAD_VOCODE = [
    pytest.param(b'{"mel": [[0.0, 1.0]', 400, "invalid_json", id="malformed-json"),
    pytest.param(b"[1, 2]", 400, "invalid_body", id="not-an-object"),
    pytest.param(json.dumps({"mel": [[0.0] * 79] * 3}), 422, "mel_bands", id="wrong-bands"),
    pytest.param(json.dumps({"mel": [[0.0] * 80, [0.0] * 79]}), 422, "mel_bands", id="ragged"),
    pytest.param(b'{"mel": [[NaN' + b", 0.0" * 79 + b"]]}", 422, "finite_number", id="nan"),
    pytest.param(b'{"mel": [[Infinity' + b", 0.0" * 79 + b"]]}", 422, "finite_number", id="inf"),
    pytest.param(json.dumps({"mel": [[50.0] * 80] * 3}), 422, "mel_range", id="out-of-range"),
    pytest.param(json.dumps({"mel": []}), 422, "mel_bands", id="no-frames"),
    pytest.param(json.dumps({"mel": "not base64!"}), 422, "invalid_value", id="bad-base64"),
    pytest.param(
        json.dumps({"mel": base64.b64encode(b"plain bytes").decode()}),
        422,
        "invalid_npy",
        id="base64-not-npy",
    ),
    pytest.param(
        json.dumps({"mel": [[0.0] * 80] * 3, "temperature": -1}), 422, None, id="temperature"
    ),
    pytest.param(json.dumps({"mel": [[0.0] * 80] * 3, "seed": -5}), 422, None, id="seed"),
    pytest.param(json.dumps({"mel": [[0.0] * 80] * 3, "volume": 3}), 422, None, id="extra"),
    pytest.param(
        json.dumps({"mel": [[0.0] * 80] * 3, "response_format": "mp3"}), 422, None, id="format"
    ),
    pytest.param(
        json.dumps({"mel": [[0.0] * 80] * 3, "stream": True, "response_format": "flac"}),
        422,
        "stream_format",
        id="stream-flac",
    ),
    pytest.param(
        json.dumps({"mel": [[0.0] * 80] * 3, "speaker": 1}), 422, "invalid_value", id="speaker"
    ),
    pytest.param(json.dumps({"mel": [[0.0] * 80] * 2402}), 413, "too_many_frames", id="frames"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_VOCODE)
async def test_vocode_rejects_bad_input_with_the_envelope(bundles, body, status, code):
    async with running(settings_for(bundles["cond"])) as (client, _):
        response = await client.post(
            "/v1/audio/vocode", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, response.text
        error = error_of(response)
        if code is not None:
            assert error["code"] == code
        healthy = await client.post("/v1/audio/vocode", json={"mel": [[0.0] * 80] * 3})
        assert healthy.status_code == 200  # the worker survived


async def test_disallowed_format_is_refused(bundles, mel):
    settings = settings_for(bundles["cond"], allowed_formats=["wav"])
    async with running(settings) as (client, _):
        response = await client.post(
            "/v1/audio/vocode", json={"mel": mel, "response_format": "pcm"}
        )
        assert response.status_code == 422
        assert error_of(response)["code"] == "unsupported_format"


@pytest.mark.parametrize("kind", ["wav", "flac", "ogg"])
async def test_resynthesize_keeps_length_and_level_of_any_upload(bundles, speech_variants, kind):
    path = speech_variants[kind]
    original, rate = soundfile.read(path, dtype="float32", always_2d=True)
    expected = round(original.shape[0] * RATE / rate)
    async with running(settings_for(bundles["cond"])) as (client, _):
        with open(path, "rb") as handle:
            response = await client.post(
                "/v1/audio/resynthesize",
                files={"file": (path.name, handle)},
                data={"seed": "3", "response_format": "wav"},
            )
        assert response.status_code == 200, response.text
        assert response.headers["x-seed"] == "3"
        samples = decode(response).astype(np.float32) / 32768
        assert abs(samples.shape[0] - expected) <= 1
        # The input's level comes back (the model ran at the training loudness in between).
        level_in = 20 * np.log10(np.sqrt(np.mean(original.mean(axis=1) ** 2)))
        level_out = 20 * np.log10(np.sqrt(np.mean(samples**2)))
        assert abs(level_out - level_in) < 20


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"", 422, "empty_audio"),
        (b"this is not audio, just text" * 10, 422, "undecodable_audio"),
    ],
    ids=["empty", "undecodable"],
)
async def test_resynthesize_rejects_bad_uploads(bundles, content, status, code):
    async with running(settings_for(bundles["cond"])) as (client, _):
        response = await client.post(
            "/v1/audio/resynthesize", files={"file": ("clip.wav", content)}
        )
        assert response.status_code == status
        assert error_of(response)["code"] == code


async def test_resynthesize_refuses_uploads_longer_than_the_limit(bundles, speech):
    async with running(settings_for(bundles["cond"], max_upload_s=0.5)) as (client, _):
        response = await client.post(
            "/v1/audio/resynthesize", files={"file": ("clip.wav", speech[0].read_bytes())}
        )
        assert response.status_code == 413
        assert error_of(response)["code"] == "audio_too_long"


async def test_resynthesize_without_a_file_is_a_4xx(bundles):
    async with running(settings_for(bundles["cond"])) as (client, _):
        response = await client.post("/v1/audio/resynthesize", data={"seed": "1"})
        assert response.status_code == 422
        assert error_of(response)["param"] == "file"


async def test_generate_on_a_conditional_bundle_points_to_vocode(bundles):
    async with running(settings_for(bundles["cond"])) as (client, _):
        response = await client.post("/v1/audio/generate", json={"duration_s": 1.0})
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "model_is_conditional"
        assert "/v1/audio/vocode" in str(error["message"])


async def test_unconditional_generate_and_its_range(bundles):
    async with running(settings_for(bundles["uncond"], max_duration_s=2.0)) as (client, _):
        response = await client.post(
            "/v1/audio/generate", json={"duration_s": 0.5, "seed": 4, "response_format": "pcm"}
        )
        assert response.status_code == 200
        assert decode(response).shape == (4000,)
        for duration in (2.5, 0.001):
            bad = await client.post("/v1/audio/generate", json={"duration_s": duration})
            assert bad.status_code == 422
            assert error_of(bad)["code"] == "duration_out_of_range"
        for zero in (0, -1):
            bad = await client.post("/v1/audio/generate", json={"duration_s": zero})
            assert bad.status_code == 422
        vocode = await client.post("/v1/audio/vocode", json={"mel": [[0.0] * 80] * 3})
        assert vocode.status_code == 400
        assert error_of(vocode)["code"] == "model_is_unconditional"


async def test_speakers_by_name_or_id_and_wrong_ones(bundles, mel):
    async with running(settings_for(bundles["multi"])) as (client, _):
        by_name = await client.post(
            "/v1/audio/vocode", json={"mel": mel, "seed": 1, "speaker": "bob"}
        )
        by_id = await client.post("/v1/audio/vocode", json={"mel": mel, "seed": 1, "speaker": 1})
        other = await client.post("/v1/audio/vocode", json={"mel": mel, "seed": 1, "speaker": 2})
        assert by_name.status_code == by_id.status_code == other.status_code == 200
        assert by_name.content == by_id.content != other.content
        for wrong in (3, -1, "dave", None):
            response = await client.post(
                "/v1/audio/vocode", json={"mel": mel, "seed": 1, "speaker": wrong}
            )
            assert response.status_code == 422, wrong
            assert error_of(response)["param"] == "speaker"


async def test_models_card(bundles):
    async with running(settings_for(bundles["multi"])) as (client, _):
        response = await client.get("/v1/models")
        assert response.status_code == 200
        (card,) = response.json()["data"]
        assert card["id"] == "tiny-test"
        assert card["object"] == "model"
        assert (card["sample_rate"], card["hop_length"], card["n_mels"]) == (RATE, HOP, 80)
        assert card["speakers"] == SPEAKERS
        assert card["architecture"]["flows"] == 2
        assert card["architecture"]["layers_per_flow"] == 3
        assert card["architecture"]["parameters"] > 0
        assert card["training"] == {"corpus": "random weights", "hours": 0}
        assert card["metrics"] == {"lsd_db": 99.0}
        assert card["version"]
        assert card["limits"]["max_mel_frames"] == 2401


async def test_api_key_guards_v1_but_not_probes(bundles, mel):
    settings = settings_for(bundles["cond"], api_key="s3cret")
    async with running(settings) as (client, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = await client.post("/v1/audio/vocode", json={"mel": mel}, headers=headers)
            assert response.status_code == 401
            assert error_of(response)["type"] == "authentication_error"
            assert response.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/v1/models")).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert (
            await client.post("/v1/audio/vocode", json={"mel": mel}, headers=good)
        ).status_code == 200
        assert (await client.get("/v1/models", headers=good)).status_code == 200
        for probe in ("/livez", "/readyz", "/metrics"):
            assert (await client.get(probe)).status_code == 200


async def test_body_limit_counts_bytes_not_the_header(bundles):
    big = json.dumps({"mel": [[0.0] * 80] * 40}).encode()
    async with running(settings_for(bundles["cond"], max_body_bytes=4096)) as (client, _):
        declared = await client.post(
            "/v1/audio/vocode", content=big, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert error_of(declared)["code"] == "body_too_large"

        async def chunks():  # no Content-Length: chunked transfer
            for start in range(0, len(big), 1000):
                yield big[start : start + 1000]

        counted = await client.post(
            "/v1/audio/vocode", content=chunks(), headers={"content-type": "application/json"}
        )
        assert counted.status_code == 413
        assert error_of(counted)["code"] == "body_too_large"

        async def upload():
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            for _ in range(10):
                yield b"\0" * 1000
            yield b"\r\n--b--\r\n"

        multipart = await client.post(
            "/v1/audio/resynthesize",
            content=upload(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert multipart.status_code == 413


async def test_unknown_routes_and_methods_use_the_envelope(bundles):
    async with running(settings_for(bundles["cond"])) as (client, _):
        missing = await client.get("/v2/nothing")
        assert missing.status_code == 404
        assert error_of(missing)["type"] == "not_found_error"
        wrong = await client.delete("/v1/models")
        assert wrong.status_code == 405
        error_of(wrong)


async def test_openapi_documents_routes_and_audio_types(bundles):
    async with running(settings_for(bundles["cond"])) as (client, _):
        schema = (await client.get("/openapi.json")).json()
        paths = schema["paths"]
        for route in ("/v1/audio/vocode", "/v1/audio/resynthesize", "/v1/audio/generate"):
            content = paths[route]["post"]["responses"]["200"]["content"]
            assert {"audio/wav", "audio/flac", "audio/pcm"} <= set(content)
            for status in ("401", "413", "422", "503"):
                assert status in paths[route]["post"]["responses"]
        for route in ("/v1/models", "/livez", "/readyz", "/metrics"):
            assert "get" in paths[route]

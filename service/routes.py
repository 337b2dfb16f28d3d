"""The HTTP routes: generation under ``/v1/audio/``, the model card, probes and metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from models.vocoder import Prepared
from service.audio import (
    CONTENT_TYPES,
    check_mel,
    decode_upload,
    encode,
    mel_from_base64,
    pcm16,
    samples_for,
    wav_header,
)
from service.errors import APIError, error_response, invalid, unavailable
from service.jobs import Job
from service.metrics import exposition
from service.schemas import (
    AUDIO_RESPONSES,
    MAX_SEED,
    AudioFormat,
    AudioOptions,
    GenerateRequest,
    ModelList,
    Status,
    VocodeRequest,
    error_responses,
)
from service.state import Options, ServiceDep, ServiceState

router = APIRouter()


def _headers(options: Options, sample_rate: int) -> dict[str, str]:
    return {"X-Seed": str(options.seed), "X-Sample-Rate": str(sample_rate)}


async def _respond(service: ServiceState, job: Job, options: Options) -> Response:
    engine = service.require_engine()
    rate = engine.sample_rate
    media = CONTENT_TYPES[options.response_format]
    headers = _headers(options, rate)
    if options.stream:
        chunks = await engine.stream(job)

        async def body() -> AsyncIterator[bytes]:
            if options.response_format == "wav":
                yield wav_header(rate, None)
            async for chunk in chunks:
                yield pcm16(chunk)

        return StreamingResponse(body(), media_type=media, headers=headers)
    started = time.perf_counter()
    waveform = await engine.generate(job)
    # Queue wait and generation for this request, measured here; not decoding nor encoding.
    headers["X-Generation-Seconds"] = f"{time.perf_counter() - started:.4f}"
    headers["X-Audio-Seconds"] = f"{waveform.shape[0] / rate:.4f}"
    data = await run_in_threadpool(encode, waveform, rate, options.response_format)
    return Response(data, media_type=media, headers=headers)


async def _job(service: ServiceState, options: Options, **source: np.ndarray | int) -> Job:
    """Prepare the request off the event loop (its mel, context and noise) into a job."""
    vocoder = service.require_vocoder()

    def prepare() -> Prepared:
        try:
            return vocoder.request(
                **source,  # type: ignore[arg-type]
                speaker=options.speaker,
                temperature=options.temperature,
                seed=options.seed,
            )
        except ValueError as exc:
            raise invalid(str(exc)) from exc

    request = await run_in_threadpool(prepare)
    deadline = time.monotonic() + service.settings.request_timeout_s
    return Job(request=request, deadline=deadline)


def _conditional(service: ServiceState, endpoint: str) -> None:
    if not service.require_bundle().config.conditional:
        raise APIError(
            400,
            f"this model is unconditional (it takes no mel): use POST /v1/audio/generate, "
            f"not {endpoint}",
            param=None,
            code="model_is_unconditional",
        )


@router.post(
    "/v1/audio/vocode",
    response_class=Response,
    responses=AUDIO_RESPONSES,
    summary="Mel spectrogram to audio",
    tags=["audio"],
)
async def vocode(request: VocodeRequest, service: ServiceDep) -> Response:
    """Turn a normalised log-mel (frames x bands, the bundle's front end) into audio.

    M frames give M x hop samples: the last frame is repeated once, so frame i is centred
    on sample i x hop (the model describes the span between frame centres).
    """
    _conditional(service, "/v1/audio/vocode")
    options = service.options(request)
    bundle = service.require_bundle()
    if isinstance(request.mel, str):
        raw = mel_from_base64(request.mel)
    else:
        lengths = {len(frame) for frame in request.mel}
        if len(lengths) > 1:
            raise invalid("mel frames have different band counts", "mel", "mel_bands")
        raw = np.asarray(request.mel, dtype=np.float64)  # range-checked before float32
        if raw.ndim == 1:
            raw = raw[None]
    limit = service.settings.mel_frame_limit(bundle.sample_rate, bundle.hop_length)
    mel = check_mel(raw, bundle.mel.n_mels, limit, service.settings.max_mel_magnitude)
    job = await _job(service, options, mel=np.ascontiguousarray(mel.T))
    return await _respond(service, job, options)


@router.post(
    "/v1/audio/resynthesize",
    response_class=Response,
    responses=AUDIO_RESPONSES,
    summary="Audio file to audio, through the model",
    tags=["audio"],
)
async def resynthesize(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="any soundfile-readable audio, any rate")],
    response_format: Annotated[AudioFormat, Form()] = "wav",
    temperature: Annotated[float | None, Form(ge=0.0, le=10.0, allow_inf_nan=False)] = None,
    seed: Annotated[int | None, Form(ge=0, le=MAX_SEED)] = None,
    speaker: Annotated[str | None, Form(min_length=1, max_length=128)] = None,
    stream: Annotated[bool, Form()] = False,
) -> Response:
    """Decode the upload (mixed to mono, resampled), compute its mel with the bundle's own
    front end at the training loudness, and vocode it; the output has the input's length
    and level."""
    _conditional(service, "/v1/audio/resynthesize")
    options = service.options(
        AudioOptions(
            response_format=response_format,
            temperature=temperature,
            seed=seed,
            speaker=speaker,
            stream=stream,
        )
    )
    bundle = service.require_bundle()
    data = await file.read()
    decoded = await run_in_threadpool(
        decode_upload, data, bundle.sample_rate, service.settings.max_upload_s
    )
    job = await _job(service, options, waveform=decoded.waveform)
    return await _respond(service, job, options)


@router.post(
    "/v1/audio/generate",
    response_class=Response,
    responses=AUDIO_RESPONSES,
    summary="Unconditional generation",
    tags=["audio"],
)
async def generate(request: GenerateRequest, service: ServiceDep) -> Response:
    """Generate ``duration_s`` seconds from an unconditional bundle."""
    bundle = service.require_bundle()
    if bundle.config.conditional:
        raise APIError(
            400,
            "this model is conditioned on a mel spectrogram: use POST /v1/audio/vocode (send "
            "a mel) or POST /v1/audio/resynthesize (upload audio)",
            code="model_is_conditional",
        )
    options = service.options(request)
    low = bundle.hop_length / bundle.sample_rate
    high = service.settings.max_duration_s
    if not low <= request.duration_s <= high:
        raise invalid(
            f"duration_s must lie between {low:g} and {high:g} seconds",
            "duration_s",
            "duration_out_of_range",
        )
    job = await _job(
        service, options, num_samples=samples_for(request.duration_s, bundle.sample_rate)
    )
    return await _respond(service, job, options)


@router.get(
    "/v1/models", response_model=ModelList, responses=error_responses(401, 503), tags=["models"]
)
async def models(service: ServiceDep) -> ModelList:
    """The loaded bundle's card: rate, hop, architecture, training data, metrics, limits."""
    return ModelList(data=[service.card()])


@router.get("/livez", response_model=Status, responses=error_responses(503), tags=["probes"])
async def livez(service: ServiceDep) -> Response:
    """The process is alive (503 only if the model failed to warm up: restart it)."""
    if service.engine is not None and service.engine.failed is not None:
        return error_response(unavailable("the model failed to warm up", "model_failed", 60))
    return JSONResponse({"status": "alive"})


@router.get("/readyz", response_model=Status, responses=error_responses(503), tags=["probes"])
async def readyz(service: ServiceDep) -> Response:
    """200 once the bundle is loaded and a warm-up generation ran; 503 before and while
    draining."""
    if service.ready:
        return JSONResponse({"status": "ready"})
    retry = service.settings.retry_after_s
    if service.draining:
        return error_response(unavailable("draining", "draining", retry))
    return error_response(unavailable("loading", "loading", retry))


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition",
        }
    },
    tags=["probes"],
)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics (every worker's, in multiprocess mode)."""
    data, content_type = exposition(service.registry)
    return Response(data, media_type=content_type)

"""The HTTP routes: generation under ``/v1/audio/``, the model card, probes and metrics.

A generation request is admitted (a place under the engine's capacity, 503 at once when
full) before its body is parsed or its upload decoded; JSON bodies are parsed and validated
in a thread (large ones in a separate process: service/parsing.py) and uploads decoded in a
thread, never on the event loop, so the probes answer whatever is in flight. The JSON routes
read their body themselves (their OpenAPI request body is declared with the same schemas,
``json_body``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from models.bundle import Bundle
from service.audio import (
    CONTENT_TYPES,
    UploadLimits,
    check_mel,
    decode_upload,
    encode,
    mel_from_base64,
    pcm16,
    samples_for,
    wav_header,
)
from service.errors import APIError, error_response, invalid, unavailable
from service.jobs import Full, Job
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
    json_body,
)
from service.settings import Settings
from service.state import Options, ServiceDep, ServiceState

logger = logging.getLogger(__name__)
router = APIRouter()
# What a route hands the engine: the request's options, what Vocoder.request prepares, and
# how many samples that generates (whole hops).
Work = tuple[Options, dict[str, Any], int]


def _headers(options: Options, sample_rate: int) -> dict[str, str]:
    return {"X-Seed": str(options.seed), "X-Sample-Rate": str(sample_rate)}


class JobStreamingResponse(StreamingResponse):
    """A stream whose job ends with the response, however it ends; a client that reads
    nothing for ``stall_s`` is disconnected (its stream stopped generating long before)."""

    def __init__(self, job: Job, stall_s: float, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job = job
        self.stall_s = stall_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            await asyncio.wait_for(send(message), self.stall_s)

        try:
            await super().__call__(scope, receive, timed_send)
        except TimeoutError:
            logger.warning("a stream's client read nothing for %g s: disconnecting", self.stall_s)
        finally:
            self.job.cancelled.set()


async def _generation(
    service: ServiceState, request: Request, work: Callable[[], Awaitable[Work]], stream: bool
) -> Response:
    """Admit the request, check and decode it (``work``), generate and answer it. The place
    it holds is given back however it ends (by the engine once the job is queued)."""
    engine = service.require_engine()
    ticket = engine.admit(stream)
    deadline = time.monotonic() + service.settings.request_timeout_s
    job: Job | None = None
    try:
        options, source, samples = await work()
        if options.stream and not ticket.stream:
            try:
                engine.admission.to_stream(ticket)
            except Full as full:
                engine.metrics.reject(full.reason)
                raise engine.full_error(full.reason) from None
        job = Job(
            source=source,
            samples=samples,
            ticket=ticket,
            speaker=options.speaker,
            temperature=options.temperature,
            seed=options.seed,
            deadline=deadline,
        )
        return await _respond(service, request, job, options)
    finally:
        if job is None or not job.submitted:
            ticket.finish()


async def _respond(service: ServiceState, request: Request, job: Job, options: Options) -> Response:
    engine = service.require_engine()
    rate = engine.sample_rate
    media = CONTENT_TYPES[options.response_format]
    headers = _headers(options, rate)
    if options.stream:
        chunks = await engine.stream(job, request.receive)

        async def body() -> AsyncIterator[bytes]:
            if options.response_format == "wav":
                yield wav_header(rate, None)
            async for chunk in chunks:
                yield pcm16(chunk)

        stall = service.settings.request_timeout_s
        return JobStreamingResponse(job, stall, body(), media_type=media, headers=headers)
    started = time.perf_counter()
    waveform = await engine.generate(job, request.receive)
    # Queue wait and generation for this request, measured here; not decoding nor encoding.
    headers["X-Generation-Seconds"] = f"{time.perf_counter() - started:.4f}"
    headers["X-Audio-Seconds"] = f"{waveform.shape[0] / rate:.4f}"
    data = await service.offload(encode, waveform, rate, options.response_format)
    return Response(data, media_type=media, headers=headers)


def _hops(samples: int, hop: int) -> int:
    return -(-samples // hop) * hop


def _conditional(service: ServiceState, endpoint: str) -> None:
    if not service.require_bundle().config.conditional:
        raise APIError(
            400,
            f"this model is unconditional (it takes no mel): use POST /v1/audio/generate, "
            f"not {endpoint}",
            param=None,
            code="model_is_unconditional",
        )


def _vocode_mel(raw: np.ndarray | str, bundle: Bundle, settings: Settings) -> np.ndarray:
    """A parsed mel (frames x bands, or base64 text) checked: ``(n_mels, M)`` float32."""
    limit = settings.mel_frame_limit(bundle.sample_rate, bundle.hop_length)
    n_mels = bundle.mel.n_mels
    if isinstance(raw, str):
        raw = mel_from_base64(raw, n_mels, limit)
    mel = check_mel(raw, n_mels, limit, settings.max_mel_magnitude)
    return np.ascontiguousarray(mel.T)


@router.post(
    "/v1/audio/vocode",
    response_class=Response,
    responses=AUDIO_RESPONSES,
    summary="Mel spectrogram to audio",
    tags=["audio"],
    openapi_extra=json_body(VocodeRequest),
)
async def vocode(request: Request, service: ServiceDep) -> Response:
    """Turn a normalised log-mel (frames x bands, the bundle's front end) into audio.

    M frames give M x hop samples: the last frame is repeated once, so frame i is centred
    on sample i x hop (the model describes the span between frame centres).
    """
    _conditional(service, "/v1/audio/vocode")
    bundle = service.require_bundle()
    body = await request.body()

    async def work() -> Work:
        content_type = request.headers.get("content-type")
        parsed, raw = await service.parse("vocode", body, content_type)
        mel = await service.offload(_vocode_mel, raw, bundle, service.settings)
        options = service.options(parsed)
        return options, {"mel": mel}, mel.shape[1] * bundle.hop_length

    return await _generation(service, request, work, stream=False)


@router.post(
    "/v1/audio/resynthesize",
    response_class=Response,
    responses=AUDIO_RESPONSES,
    summary="Audio file to audio, through the model",
    tags=["audio"],
)
async def resynthesize(
    request: Request,
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
    settings = service.settings
    limits = UploadLimits(
        settings.max_upload_s, settings.max_upload_samples, settings.max_upload_rate
    )

    async def work() -> Work:
        data = await file.read()
        decoded = await service.offload(decode_upload, data, bundle.sample_rate, limits)
        waveform = decoded.waveform
        hop = bundle.hop_length
        samples = max(_hops(waveform.shape[0], hop), _hops(bundle.mel.n_fft // 2 + 1, hop))
        return options, {"waveform": waveform}, samples

    return await _generation(service, request, work, stream=options.stream)


@router.post(
    "/v1/audio/generate",
    response_class=Response,
    responses=AUDIO_RESPONSES,
    summary="Unconditional generation",
    tags=["audio"],
    openapi_extra=json_body(GenerateRequest),
)
async def generate(request: Request, service: ServiceDep) -> Response:
    """Generate ``duration_s`` seconds from an unconditional bundle."""
    bundle = service.require_bundle()
    if bundle.config.conditional:
        raise APIError(
            400,
            "this model is conditioned on a mel spectrogram: use POST /v1/audio/vocode (send "
            "a mel) or POST /v1/audio/resynthesize (upload audio)",
            code="model_is_conditional",
        )
    body = await request.body()

    async def work() -> Work:
        content_type = request.headers.get("content-type")
        parsed: GenerateRequest = await service.parse("generate", body, content_type)
        options = service.options(parsed)
        low = bundle.hop_length / bundle.sample_rate
        high = service.settings.max_duration_s
        if not low <= parsed.duration_s <= high:
            raise invalid(
                f"duration_s must lie between {low:g} and {high:g} seconds",
                "duration_s",
                "duration_out_of_range",
            )
        samples = samples_for(parsed.duration_s, bundle.sample_rate)
        return options, {"num_samples": samples}, _hops(samples, bundle.hop_length)

    return await _generation(service, request, work, stream=False)


@router.get(
    "/v1/models", response_model=ModelList, responses=error_responses(401, 503), tags=["models"]
)
async def models(service: ServiceDep) -> ModelList:
    """The loaded bundle's card: rate, hop, architecture, training data, metrics, limits."""
    return ModelList(data=[service.card()])


@router.get("/livez", response_model=Status, responses=error_responses(503), tags=["probes"])
async def livez(service: ServiceDep) -> Response:
    """The process is alive: 503 if the model failed to warm up or an inference thread is
    stuck or gone (restart it)."""
    if service.engine is not None:
        problem = service.engine.health()
        if problem is not None:
            return error_response(problem)
    return JSONResponse({"status": "alive"})


@router.get("/readyz", response_model=Status, responses=error_responses(503), tags=["probes"])
async def readyz(service: ServiceDep) -> Response:
    """200 once the bundle is loaded and a warm-up generation ran, in every worker; 503
    before, while draining, or when the engine is not alive."""
    retry = service.settings.retry_after_s
    if service.draining:
        return error_response(unavailable("draining", "draining", retry))
    if service.ready:
        workers = service.settings.workers
        ready = service.workers_ready()
        if service.settings.ready_dir is None or ready >= workers:
            return JSONResponse({"status": "ready"})
        message = f"{ready} of {workers} workers ready"
        return error_response(unavailable(message, "workers_loading", retry))
    problem = service.engine.health() if service.engine is not None else None
    if problem is not None:
        return error_response(problem)
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

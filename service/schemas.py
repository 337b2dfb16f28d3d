"""Request and response schemas: every field bounded, unknown fields rejected.

The static bounds here are hard caps for the schema; the operator's limits (settings) are
checked per request and can only be tighter.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from service.errors import ErrorResponse
from service.settings import AudioFormat

MAX_SEED = 2**32 - 1
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# fail_fast: a body of a million bad numbers stops at the first (it is not in the schema)
MelFrame = Annotated[list[FiniteFloat], Field(min_length=1, max_length=512, fail_fast=True)]
Speaker = int | Annotated[str, Field(min_length=1, max_length=128)]


class AudioOptions(BaseModel):
    """Options every generation endpoint takes."""

    model_config = ConfigDict(extra="forbid")

    response_format: AudioFormat = Field(
        "wav", description="wav (16-bit PCM), flac, or pcm (raw signed 16-bit little-endian)"
    )
    temperature: float | None = Field(
        None, ge=0.0, le=10.0, allow_inf_nan=False, description="noise scale; bundle default"
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="seed of this request's noise; echoed in X-Seed"
    )
    speaker: Speaker | None = Field(
        None, description="speaker id or name (multi-speaker bundles only)"
    )
    stream: bool = Field(
        False, description="send audio as it is generated (wav or pcm, chunked transfer)"
    )


class VocodeRequest(AudioOptions):
    """A mel spectrogram to turn into audio."""

    mel: (
        Annotated[list[MelFrame], Field(fail_fast=True)]
        | Annotated[str, Field(min_length=1, max_length=2**27)]
    ) = Field(
        ...,
        description=(
            "normalised log-mel, frames x bands, as nested lists or base64 of a float32 .npy; "
            "M frames give M x hop samples (the last frame is repeated once)"
        ),
    )


class GenerateRequest(AudioOptions):
    """Unconditional generation of a clip of a given length."""

    duration_s: float = Field(
        1.0, gt=0.0, le=3600.0, allow_inf_nan=False, description="seconds of audio"
    )


class Architecture(BaseModel):
    flows: int
    layers_per_flow: int
    residual_channels: int
    gate_channels: int
    skip_channels: int
    receptive_field: int
    parameters: int
    source_filter: bool
    conditional: bool
    prior: bool = Field(False, description="a mel-inversion prior h(mel) as the last flow step")
    flow_steps: list[str] = Field(default_factory=list, description="the cascade, in order")


class Limits(BaseModel):
    """Every limit a request meets (see the README for what a client sees at each)."""

    max_duration_s: float
    max_mel_frames: int
    max_upload_s: float
    max_body_bytes: int
    formats: list[AudioFormat]
    max_upload_samples: int = Field(description="decoded samples (frames x channels)")
    max_upload_rate: int = Field(description="highest upload sample rate, Hz")
    request_timeout_s: float = Field(description="answered (or 503) within this from arrival")
    body_timeout_s: float = Field(description="the whole body arrives within this (else 408)")
    queue_size: int = Field(description="requests admitted and waiting per worker (503 beyond)")
    max_streams: int = Field(description="live streams per worker (503 beyond)")
    max_mel_magnitude: float = Field(description="largest |value| of a normalised log-mel")
    max_connections: int = Field(description="open connections per worker (503 beyond)")
    max_batch: int = Field(description="requests generated together in one batch")


class ModelCard(BaseModel):
    """The loaded bundle, OpenAI model-object compatible (``id``, ``object``, ``owned_by``)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    version: str
    sample_rate: int
    hop_length: int
    n_mels: int
    speakers: list[str]
    default_temperature: float
    architecture: Architecture
    mel: dict[str, Any] = Field(description="the front end: compute mels with these settings")
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    license: str | None = None
    limits: Limits
    card: dict[str, Any] = Field(default_factory=dict, description="the bundle's full card")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Status(BaseModel):
    status: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses, all in the one envelope."""
    described = {
        400: "malformed request body, or an endpoint this model does not serve",
        401: "missing or wrong API key",
        413: "request too large (body, frames or upload seconds)",
        422: "invalid value",
        503: "loading, draining or overloaded; see Retry-After",
    }
    return {s: {"model": ErrorResponse, "description": described.get(s, "error")} for s in statuses}


AUDIO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the audio, 16-bit mono at the model's sample rate",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("audio/wav", "audio/flac", "audio/pcm")
        },
        "headers": {
            "X-Seed": {"description": "the seed used", "schema": {"type": "integer"}},
            "X-Sample-Rate": {"description": "samples per second", "schema": {"type": "integer"}},
        },
    },
    **error_responses(400, 401, 413, 422, 503),
}


# The JSON routes read and validate their body off the event loop; their OpenAPI request body
# is declared here with the same schemas FastAPI would generate from a typed parameter.
JSON_BODIES: tuple[type[BaseModel], ...] = (VocodeRequest, GenerateRequest)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is ``model`` (one of ``JSON_BODIES``) as JSON."""
    return {
        "requestBody": {
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
            "required": True,
        }
    }


def body_schemas() -> dict[str, Any]:
    """The component schemas of the ``JSON_BODIES``, exactly as FastAPI writes them for a
    route taking each as a typed body parameter."""
    typed = FastAPI()
    for model in JSON_BODIES:

        async def endpoint(**_: Any) -> None:
            return None

        parameter = inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=model)
        endpoint.__signature__ = inspect.Signature([parameter])  # type: ignore[attr-defined]
        typed.add_api_route(f"/{model.__name__}", endpoint, methods=["POST"])
    return dict(typed.openapi()["components"]["schemas"])

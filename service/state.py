"""What one running app holds: settings, bundle, engine, metrics, readiness and the drain
state; and the model card as served (read once, absolute paths reduced to their last part)."""

from __future__ import annotations

import functools
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from models.bundle import Bundle
from models.vocoder import Vocoder
from service.engine import Engine
from service.errors import APIError, invalid, unavailable
from service.metrics import ServiceMetrics
from service.middleware import InFlight
from service.parsing import FUNCTIONS, LARGE_BODY, ParserProcess
from service.schemas import (
    MAX_SEED,
    Architecture,
    AudioOptions,
    Limits,
    ModelCard,
)
from service.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Options:
    """A request's options resolved against the bundle and the settings."""

    response_format: str
    temperature: float
    seed: int
    speaker: int | None
    stream: bool


@dataclass
class ServiceState:
    settings: Settings
    registry: CollectorRegistry
    metrics: ServiceMetrics
    vocoder: Vocoder | None = None
    engine: Engine | None = None
    draining: bool = False
    requests: InFlight = field(default_factory=InFlight)
    background: set[Any] = field(default_factory=set)
    limiter: anyio.CapacityLimiter | None = None
    served_card: ModelCard | None = None
    parser: ParserProcess = field(default_factory=ParserProcess)

    @property
    def ready(self) -> bool:
        """This worker can serve: loaded, warmed up, alive, not draining."""
        return (
            self.engine is not None
            and self.engine.ready.is_set()
            and not self.draining
            and self.engine.health() is None
        )

    def workers_ready(self) -> int:
        """With several workers (``ready_dir``), how many live workers are ready."""
        directory = self.settings.ready_dir
        if directory is None:
            return int(self.ready)
        count = 0
        for marker in _listing(directory):
            if marker.isdigit() and _alive(int(marker)):
                count += 1
        return count

    def mark_ready(self) -> None:
        """This worker is ready (called from the inference thread after the warm-up)."""
        if self.settings.ready_dir is not None and not self.draining:
            try:
                (self.settings.ready_dir / str(os.getpid())).touch()
            except OSError as exc:
                logger.warning("cannot mark this worker ready: %s", exc)

    def unmark_ready(self) -> None:
        if self.settings.ready_dir is not None:
            (self.settings.ready_dir / str(os.getpid())).unlink(missing_ok=True)

    def begin_drain(self) -> None:
        """Readiness goes 503 and new generation requests are refused; in-flight ones go on."""
        self.draining = True
        self.metrics.model_ready.set(0)
        self.unmark_ready()

    async def parse(self, name: str, body: bytes, content_type: str | None) -> Any:
        """``parsing.FUNCTIONS[name](body, content_type)``: in the parser process for a large
        body, else in a thread like any blocking work (service/parsing.py)."""
        if len(body) >= LARGE_BODY:
            return await self.parser.run(name, body, content_type)
        return await self.offload(FUNCTIONS[name], body, content_type)

    async def offload(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work (parsing, decoding, encoding) in a thread, as many at once as
        there are inference threads."""
        return await anyio.to_thread.run_sync(
            functools.partial(function, *args), limiter=self.limiter
        )

    @property
    def in_flight(self) -> int:
        return self.requests.count

    def refusal(self) -> APIError | None:
        """Why a generation request cannot be admitted now (None: admit it)."""
        retry = self.settings.retry_after_s
        if self.draining:
            self.metrics.reject("draining")
            return unavailable("the server is shutting down; retry on another", "draining", retry)
        if self.engine is not None and self.engine.health() is not None:
            self.metrics.reject("not_ready")
            return self.engine.health()
        if not self.ready:
            self.metrics.reject("not_ready")
            return unavailable("the model is still loading; retry shortly", "loading", retry)
        return None

    def options(self, request: AudioOptions) -> Options:
        """Resolve format, temperature, seed and speaker; 422 for what cannot be served."""
        bundle = self.require_bundle()
        if request.response_format not in self.settings.allowed_formats:
            allowed = ", ".join(self.settings.allowed_formats)
            raise invalid(
                f"response_format {request.response_format!r} is not enabled here ({allowed})",
                "response_format",
                "unsupported_format",
            )
        if request.stream and request.response_format == "flac":
            raise invalid("streaming supports wav and pcm, not flac", "stream", "stream_format")
        temperature = request.temperature
        if temperature is None:
            temperature = bundle.default_temperature
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return Options(
            response_format=request.response_format,
            temperature=temperature,
            seed=seed,
            speaker=self.speaker_id(request.speaker),
            stream=request.stream,
        )

    def speaker_id(self, speaker: int | str | None) -> int | None:
        try:
            return self.require_vocoder().speaker_id(speaker)
        except ValueError as exc:
            raise invalid(str(exc), "speaker") from exc

    def require_vocoder(self) -> Vocoder:
        if self.vocoder is None:
            raise unavailable("the model is still loading", "loading", self.settings.retry_after_s)
        return self.vocoder

    def require_bundle(self) -> Bundle:
        return self.require_vocoder().bundle

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise unavailable("the model is still loading", "loading", self.settings.retry_after_s)
        return self.engine

    def card(self) -> ModelCard:
        """The card of the model being served (built once: never re-read from disk)."""
        if self.served_card is None:
            self.served_card = self._card()
        return self.served_card

    def _card(self) -> ModelCard:
        bundle = self.require_bundle()
        config, card, settings = bundle.config, public(bundle.card), self.settings
        wavenet = config.wavenet
        # what was loaded, never re-read: the card always describes the model being served
        created, version = int(bundle.created), bundle.distilwave_version
        name = card.get("name") or (bundle.path.name if bundle.path else "distilwave")
        return ModelCard(
            id=str(name),
            created=created,
            owned_by=str(card.get("owner", "distilwave")),
            version=str(card.get("version", version)),
            sample_rate=bundle.sample_rate,
            hop_length=bundle.hop_length,
            n_mels=bundle.mel.n_mels,
            speakers=bundle.speakers,
            default_temperature=bundle.default_temperature,
            architecture=Architecture(
                flows=config.flows,
                layers_per_flow=wavenet.layers,
                residual_channels=wavenet.residual_channels,
                gate_channels=wavenet.gate_channels,
                skip_channels=wavenet.skip_channels,
                receptive_field=wavenet.receptive_field,
                parameters=sum(p.numel() for p in bundle.student.parameters()),
                source_filter=config.source_filter.enabled,
                conditional=config.conditional,
                prior=config.prior.enabled,
                flow_steps=list(bundle.student.flows.names()),
            ),
            mel=bundle.mel.model_dump(),
            training=_section(card, "training", "data", "dataset"),
            metrics=_section(card, "metrics", "evaluation"),
            license=card.get("license"),
            limits=Limits(
                max_duration_s=settings.max_duration_s,
                max_mel_frames=settings.mel_frame_limit(bundle.sample_rate, bundle.hop_length),
                max_upload_s=settings.max_upload_s,
                max_body_bytes=settings.max_body_bytes,
                formats=list(settings.allowed_formats),
                max_upload_samples=settings.max_upload_samples,
                max_upload_rate=settings.max_upload_rate,
                request_timeout_s=settings.request_timeout_s,
                body_timeout_s=settings.body_timeout_s,
                queue_size=settings.queue_size,
                max_streams=settings.max_streams,
                max_mel_magnitude=settings.max_mel_magnitude,
                max_connections=settings.max_connections,
                max_batch=settings.max_batch,
            ),
            card=card,
        )


# An absolute path inside a string: POSIX (/a/b), home (~/a) or Windows (C:\a, \\server\a);
# not a URL's path (preceded by a letter, a dot, a colon or a slash) nor a ratio (m/s).
_ABSOLUTE_PATH = re.compile(
    r"(?<![\w.:/\\])(?:~|[A-Za-z]:)?[/\\]+(?:[^\s/\\'\"<>|]+[/\\]+)*([^\s/\\'\"<>|]+)"
)


def public(value: Any) -> Any:
    """A card's values with every absolute path reduced to its last part: a card is public,
    the trainer's directories are not (cards of older bundles hold the checkpoint's and the
    corpus's full paths)."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda match: match.group(1), value)
    if isinstance(value, dict):
        return {key: public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public(item) for item in value]
    return value


def _listing(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _section(card: dict[str, Any], *keys: str) -> dict[str, Any] | None:
    for key in keys:
        value = card.get(key)
        if isinstance(value, dict):
            return value
        if value is not None:
            return {key: value}
    return None


def get_service(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


ServiceDep = Annotated[ServiceState, Depends(get_service)]

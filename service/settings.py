"""Service settings, read from the environment (prefix ``DISTILWAVE_``) by pydantic-settings.

Every limit the service enforces is here with a default that is safe on a small CPU box.
``DISTILWAVE_BUNDLE`` is the only setting without a usable default. The connection settings
(``max_connections``, ``keep_alive_s``, ``shutdown_timeout_s``) are the server's: ``distilwave
serve`` hands them to uvicorn (a bare ``uvicorn service.app:create_app`` uses uvicorn's flags).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AudioFormat = Literal["wav", "flac", "pcm"]
ALL_FORMATS: tuple[AudioFormat, ...] = ("wav", "flac", "pcm")


class Settings(BaseSettings):
    """Everything an operator can set; ``DISTILWAVE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="DISTILWAVE_", extra="ignore", frozen=True)

    # What to serve and where.
    bundle: Path = Field(Path("artifacts/bundle"), description="model bundle directory")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    device: str = "cpu"
    inference_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="threads generating in parallel per worker, each its own batches; "
        "0 = cores / (workers x torch_threads)",
    )
    torch_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="intra-op threads of each inference thread; 0 = cores / workers (one "
        "inference thread). Above 1, a busy machine makes torch's threads wait for each other",
    )
    exact: bool = Field(
        False,
        description="bit-identical audio batched or alone, streamed or whole: the module path "
        "with oneDNN convolutions off (on CPU ~2.5x slower than the default fast path "
        "models.inference.InferenceStudent, which agrees within float rounding: at most one "
        "16-bit step)",
    )

    # Security.
    api_key: SecretStr | None = Field(
        None, description="if set, /v1 needs 'Bearer <key>'; set but empty is an error"
    )

    # Limits.
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="request body, counted")
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="time to receive a request's whole body (else 408)"
    )
    max_duration_s: float = Field(30.0, gt=0, le=3600, description="longest clip generated")
    max_mel_frames: int | None = Field(
        None, ge=2, description="longest mel accepted; None = max_duration_s worth"
    )
    max_upload_s: float = Field(30.0, gt=0, le=3600, description="longest decoded upload")
    max_upload_samples: int = Field(
        30 * 48_000 * 2,
        ge=1000,
        description="decoded samples (frames x channels) of an upload, from its header and "
        "counted while decoding (default: 30 s of 48 kHz stereo)",
    )
    max_upload_rate: int = Field(
        192_000, ge=8000, le=1_000_000, description="highest sample rate of an upload"
    )
    allowed_formats: list[AudioFormat] = Field(default_factory=lambda: list(ALL_FORMATS))
    max_mel_magnitude: float = Field(
        10.0, gt=0, description="largest |value| of a normalised log-mel accepted"
    )

    # Batching, capacity and scheduling.
    max_batch: int = Field(8, ge=1, le=256)
    max_delay_ms: float = Field(5.0, ge=0, le=1000)
    max_batch_samples: int = Field(2_000_000, ge=1, description="batch x padded length cap")
    max_batch_padding: float = Field(
        0.25,
        ge=0,
        le=1000,
        description="a batch pads its requests to the longest by at most this fraction of "
        "the samples they need (padding costs as much as audio on a CPU)",
    )
    queue_size: int = Field(
        64,
        ge=1,
        le=100_000,
        description="requests admitted and waiting (decoding, parsing or queued) per worker; "
        "beyond it 503 at once, before any decoding",
    )
    max_streams: int = Field(16, ge=1, le=10_000, description="live streams per worker (503)")
    stream_buffer_chunks: int = Field(
        4, ge=1, le=64, description="chunks a stream generates ahead of its client's reading"
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="deadline from admission: a request not answered by then gets 503; a "
        "stream's client that reads nothing for this long is disconnected",
    )
    stream_chunk_s: float = Field(0.25, gt=0, le=10, description="rounded up to whole hops")
    retry_after_s: int = Field(1, ge=1, le=3600)
    liveness_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="/livez turns 503 when an inference thread has not finished a turn (one "
        "batch, one chunk per stream) for this long",
    )

    # Connections (distilwave serve hands these to uvicorn).
    max_connections: int = Field(
        256, ge=1, le=100_000, description="open connections per worker; beyond them 503"
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="idle connections, and requests whose headers do not arrive within it, "
        "are closed",
    )

    # Start and stop.
    warmup_s: float = Field(1.0, gt=0, le=60, description="audio generated by the warm-up")
    drain_timeout_s: float = Field(30.0, ge=0, le=3600, description="SIGTERM drain bound")
    shutdown_timeout_s: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="after the drain, how long the server waits for open connections",
    )
    ready_dir: Path | None = Field(
        None,
        description="with several workers, each marks itself ready here and /readyz is 200 "
        "only when every worker is (distilwave serve sets it)",
    )

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError(
                "DISTILWAVE_API_KEY is set but empty: set a key, or unset the variable to "
                "serve without one"
            )
        return value

    def cores(self) -> int:
        """CPU cores this worker may use: the machine's shared among the workers."""
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, (available or os.cpu_count() or 1) // self.workers)

    def threads(self) -> int:
        """Intra-op threads of each inference thread."""
        return self.torch_threads or self.cores()

    def engine_threads(self) -> int:
        """Inference threads of this worker (each generates its own batches)."""
        if self.inference_threads:
            return self.inference_threads
        if self.torch_threads == 0:
            return 1
        return max(1, self.cores() // self.torch_threads)

    def mel_frame_limit(self, sample_rate: int, hop_length: int) -> int:
        """Most mel frames a request may carry for a bundle with this rate and hop."""
        if self.max_mel_frames is not None:
            return self.max_mel_frames
        return int(self.max_duration_s * sample_rate) // hop_length + 1

    def exposed_without_key(self) -> bool:
        """Listening beyond this machine with no API key."""
        return self.api_key is None and not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to listen on) is this machine only."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or empty (every interface)

"""The inference engine: one thread per model that owns the generation, fed by a bounded queue.

The event loop never runs torch. Handlers prepare a request (``models.vocoder.Vocoder.request``:
its mel, context and noise, off the event loop) into a ``Job`` and ``submit`` it; a full queue
refuses at once (the caller answers 503). The inference thread takes the first waiting job,
waits up to ``max_delay_ms`` after its arrival for more (up to ``max_batch`` requests and
``max_batch_samples`` padded samples), drops jobs whose deadline passed or whose client left,
and generates the batch in one pass (``Vocoder.run``: each request padded alone, so its audio
is what it would be alone). Results go back to the loop through asyncio futures.

Generation runs the vocoder's fast CPU path (a request's audio batched or alone, streamed or
whole, agrees within float rounding, at most one 16-bit step), or with ``exact`` the module
itself with oneDNN off (bit-identical in all those cases).

Streaming jobs share the queue (so overload and deadlines apply alike) but are not batched:
each is generated chunk by chunk with carried state (``Vocoder.stream``), one chunk per
stream per turn of the loop, interleaved with the batches, so a long stream neither waits
for nor blocks short requests for more than a chunk.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.vocoder import Prepared, Vocoder
from service.errors import APIError, invalid, unavailable
from service.jobs import END, Job, fail, push, resolve
from service.metrics import ServiceMetrics
from service.settings import Settings

logger = logging.getLogger(__name__)

POLL_S = 0.05


@dataclass
class _Stream:
    job: Job
    chunks: Iterator[np.ndarray]
    samples: int
    compute_s: float = 0.0


class Engine:
    """Owns the generation and the inference thread.

    Args:
        vocoder: the loaded bundle (its fast path, or the module when ``settings.exact``).
        settings: batching, queue and streaming settings.
        metrics: where to record queue, batch and inference metrics.
    """

    def __init__(self, vocoder: Vocoder, settings: Settings, metrics: ServiceMetrics) -> None:
        self.vocoder = vocoder
        self.settings = settings
        self.metrics = metrics
        self.sample_rate = vocoder.sample_rate
        self.hop = vocoder.hop_length
        chunk_hops = max(1, math.ceil(settings.stream_chunk_s * self.sample_rate / self.hop))
        self.stream_chunk = chunk_hops * self.hop
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=settings.queue_size)
        self._carry: Job | None = None
        self._streams: list[_Stream] = []
        self._busy = False
        self._stopping = threading.Event()
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="distilwave-inference", daemon=True)

    # ----------------------------------------------------------------- event-loop side

    def start(self) -> None:
        """Start the inference thread; it warms up first, then sets ``ready``."""
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise a 503 ``APIError`` at once if the queue is full."""
        if not self._thread.is_alive():
            raise unavailable(
                "the model is not running", "not_running", self.settings.retry_after_s
            )
        job.enqueued = time.monotonic()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.metrics.reject("queue_full")
            raise unavailable(
                "the server is at capacity; retry shortly",
                "queue_full",
                self.settings.retry_after_s,
            ) from None
        self.metrics.queue_depth.set(self._queue.qsize())

    async def generate(self, job: Job) -> np.ndarray:
        """Run ``job`` and return its waveform ``(T,)`` float32."""
        loop = asyncio.get_running_loop()
        job.loop, job.future = loop, loop.create_future()
        self.submit(job)
        try:
            return await job.future
        finally:
            job.cancelled.set()

    async def stream(self, job: Job) -> AsyncIterator[np.ndarray]:
        """Run ``job`` as a stream. Errors before the first chunk raise here, before any
        response is sent; the first chunk is awaited before this returns."""
        job.stream = True
        job.loop, job.chunks = asyncio.get_running_loop(), asyncio.Queue()
        self.submit(job)
        try:
            first = await job.chunks.get()
        except BaseException:
            job.cancelled.set()
            raise
        if isinstance(first, BaseException):
            raise first
        return self._rest(job, first)

    async def _rest(self, job: Job, first: Any) -> AsyncIterator[np.ndarray]:
        assert job.chunks is not None
        item = first
        try:
            while item is not END:
                if isinstance(item, BaseException):
                    raise item
                yield item
                item = await job.chunks.get()
        finally:
            job.cancelled.set()

    @property
    def idle(self) -> bool:
        """Nothing queued, generating or streaming."""
        return self._queue.empty() and self._carry is None and not self._busy and not self._streams

    def stop(self, timeout: float) -> None:
        """Finish queued jobs and streams, then end the thread (bounded by ``timeout``)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("inference thread still busy after %.1f s; abandoning it", timeout)
        stopped = unavailable("the server is shutting down", "shutting_down", 1)
        while True:  # nobody will run what is left: answer it rather than hang
            try:
                fail(self._queue.get_nowait(), stopped)
            except queue.Empty:
                break

    # ---------------------------------------------------------------- inference thread

    def _run(self) -> None:
        with torch.inference_mode():
            try:
                self._warm_up()
            except Exception as exc:
                logger.exception("warm-up generation failed; the service will not become ready")
                self.failed = exc
                return
            self.ready.set()
            self.metrics.model_ready.set(1)
            while True:
                try:
                    if not self._step() and self._stopping.is_set() and self.idle:
                        break
                except Exception:  # never let one bad batch kill the thread
                    logger.exception("inference step failed")
                    self._busy = False

    def _warm_up(self) -> None:
        """A real generation through the batched path (first-call allocations, kernels)."""
        started = time.perf_counter()
        vocoder = self.vocoder
        samples = max(self.hop, round(self.settings.warmup_s * self.sample_rate))
        speaker = 0 if vocoder.n_speakers else None
        if vocoder.conditional:
            noise = torch.randn(
                max(samples, vocoder.min_samples), generator=torch.Generator().manual_seed(0)
            )
            request = vocoder.request(waveform=noise.numpy(), speaker=speaker, seed=0)
        else:
            request = vocoder.request(num_samples=samples, speaker=speaker, seed=0)
        waveform = vocoder.run([request])[0]
        if not np.isfinite(waveform).all():
            raise RuntimeError("the warm-up generation produced non-finite samples")
        logger.info(
            "warm-up: %.2f s of audio in %.3f s",
            waveform.shape[0] / self.sample_rate,
            time.perf_counter() - started,
        )

    def _step(self) -> bool:
        """One turn: take a batch, start new streams, generate, advance every stream.

        Returns:
            Whether there was anything to do.
        """
        jobs = self._take()
        now = time.monotonic()
        live: list[Job] = []
        for job in jobs:
            if job.cancelled.is_set():
                continue
            if now > job.deadline:
                self.metrics.reject("deadline")
                fail(
                    job,
                    unavailable(
                        "the request waited past its deadline; retry shortly",
                        "deadline_exceeded",
                        self.settings.retry_after_s,
                    ),
                )
                continue
            self.metrics.queue_wait.observe(now - job.enqueued)
            live.append(job)
        for job in live:
            if job.stream:
                self._start_stream(job)
        batch = [job for job in live if not job.stream]
        if batch:
            self._run_batch(batch)
        for stream in list(self._streams):
            self._advance(stream)
        return bool(jobs) or bool(self._streams)

    def _take(self) -> list[Job]:
        """The next batch of waiting jobs (empty if none arrived within the poll interval)."""
        streaming = bool(self._streams)
        if self._carry is not None:
            jobs, self._carry = [self._carry], None
        else:
            try:
                jobs = [
                    self._queue.get(timeout=POLL_S) if not streaming else self._queue.get_nowait()
                ]
            except queue.Empty:
                return []
        window_end = jobs[0].enqueued + self.settings.max_delay_ms / 1000.0
        padded = self._samples(jobs[0])
        while sum(not j.stream for j in jobs) < self.settings.max_batch:
            remaining = 0.0 if streaming else window_end - time.monotonic()
            try:
                job = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if not job.stream:
                longest = max(padded, self._samples(job))
                batch = sum(not j.stream for j in jobs) + 1
                if longest * batch > self.settings.max_batch_samples:
                    self._carry = job
                    break
                padded = longest
            jobs.append(job)
        self.metrics.queue_depth.set(self._queue.qsize())
        return jobs

    @staticmethod
    def _samples(job: Job) -> int:
        return job.request.samples if job.request is not None else 0

    def _generate(self, requests: list[Prepared]) -> list[np.ndarray]:
        """One batch through the vocoder (each request as it would be alone)."""
        return self.vocoder.run(requests)

    def _run_batch(self, batch: list[Job]) -> None:
        self._busy = True
        started = time.perf_counter()
        requests = [job.request for job in batch if job.request is not None]
        try:
            waveforms = self._generate(requests)
        except Exception:
            logger.exception("generation failed for a batch of %d", len(batch))
            for job in batch:
                fail(job, APIError(500, "generation failed", "server_error"))
            self._busy = False
            return
        elapsed = time.perf_counter() - started
        # Recorded before anyone is answered, so a client that reads /metrics next sees it.
        self._record(len(batch), elapsed, sum(w.shape[0] for w in waveforms) / self.sample_rate)
        for job, waveform in zip(batch, waveforms, strict=True):
            if np.isfinite(waveform).all():
                resolve(job, waveform)
            else:
                fail(
                    job,
                    invalid(
                        "the mel drove the model outside its range (non-finite audio)",
                        "mel",
                        "mel_range",
                    ),
                )
        self._busy = False

    def _record(self, requests: int, elapsed: float, audio_s: float) -> None:
        if requests == 0:
            return
        self.metrics.batch_size.observe(requests)
        self.metrics.inference.observe(elapsed)
        self.metrics.audio_seconds.inc(audio_s)
        if audio_s > 0:
            self.metrics.real_time_factor.observe(elapsed / audio_s)

    def _start_stream(self, job: Job) -> None:
        assert job.request is not None
        chunks = self.vocoder.stream(job.request, self.stream_chunk)
        self._streams.append(_Stream(job, chunks, job.request.length))

    def _advance(self, stream: _Stream) -> None:
        job = stream.job
        if job.cancelled.is_set():
            self._streams.remove(stream)
            return
        started = time.perf_counter()
        try:
            chunk = next(stream.chunks)
        except StopIteration:
            self._streams.remove(stream)
            self._record(1, stream.compute_s, stream.samples / self.sample_rate)
            push(job, END)
            return
        except Exception:
            logger.exception("streaming generation failed")
            self._streams.remove(stream)
            push(job, APIError(500, "generation failed", "server_error"))
            return
        stream.compute_s += time.perf_counter() - started
        push(job, chunk)

"""The inference engine: inference threads that own the generation, fed by one queue whose
capacity is taken at admission.

The event loop never runs torch. A handler first ``admit``s the request (a ``Ticket``; at
capacity a 503 at once, before the request is parsed or decoded), checks and decodes it, and
``generate``s or ``stream``s a ``Job``; the inference threads (``service.worker``) prepare and
generate it. The handler waits for the result until the job's deadline (then 503) or until
its client disconnects (then the job is dropped, queued or streaming); either way the job's
capacity comes back.

Generation runs the vocoder's fast CPU path (a request's audio batched or alone, streamed or
whole, agrees within float rounding, at most one 16-bit step), or with ``exact`` the module
itself with oneDNN off (bit-identical in all those cases).

Streaming jobs share the queue (so capacity and deadlines apply alike) but are not batched:
each is generated chunk by chunk with carried state (``Vocoder.stream``), one chunk per
stream per turn, interleaved with the batches, so a long stream neither waits for nor blocks
short requests for more than a chunk; at most ``max_streams`` stream at once.

Liveness: every inference thread beats at each turn; ``health`` reports a thread that failed,
stopped, or has not beaten for ``liveness_timeout_s`` (``/livez`` answers 503 then).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from models.vocoder import Prepared, Vocoder
from service.errors import APIError, unavailable
from service.jobs import END, Admission, Full, Job, Ticket, fail
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.worker import Worker

logger = logging.getLogger(__name__)

Receive = Any  # the ASGI receive callable


class Engine:
    """Owns the generation: the queue, the capacity and the inference threads.

    Args:
        vocoder: the loaded bundle (its fast path, or the module when ``settings.exact``).
        settings: capacity, batching, threads and streaming settings.
        metrics: where to record queue, batch and inference metrics.
        on_ready: called (from an inference thread) once every thread has warmed up.
    """

    def __init__(
        self,
        vocoder: Vocoder,
        settings: Settings,
        metrics: ServiceMetrics,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.vocoder = vocoder
        self.settings = settings
        self.metrics = metrics
        self.sample_rate = vocoder.sample_rate
        self.hop = vocoder.hop_length
        chunk_hops = max(1, math.ceil(settings.stream_chunk_s * self.sample_rate / self.hop))
        self.stream_chunk = chunk_hops * self.hop
        self.admission = Admission(settings.queue_size, settings.max_streams)
        self.queue: queue.Queue[Job] = queue.Queue()  # bounded by the admission
        self.held: collections.deque[Job] = collections.deque()  # set aside by a batch
        self.held_lock = threading.Lock()
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.on_ready = on_ready
        self.workers = [Worker(self, i) for i in range(settings.engine_threads())]

    # ----------------------------------------------------------------- event-loop side
    def start(self) -> None:
        """Start the inference threads; each warms up, then ``ready`` is set."""
        for worker in self.workers:
            worker.thread.start()

    def warmed(self) -> None:
        """Called by each inference thread after its warm-up."""
        with self.admission.lock:  # once, whichever thread finishes last
            if self.ready.is_set() or not all(w.warmed.is_set() for w in self.workers):
                return
            self.ready.set()
        self.metrics.model_ready.set(1)
        if self.on_ready is not None:
            self.on_ready()

    @property
    def failed(self) -> BaseException | None:
        """The first inference thread's warm-up failure, if any."""
        return next((w.failed for w in self.workers if w.failed is not None), None)

    def health(self) -> APIError | None:
        """Why the engine cannot serve (503 for ``/livez``), or None while it is alive."""
        if self.failed is not None:
            return unavailable("the model failed to warm up", "model_failed", 60)
        now = time.monotonic()
        limit = self.settings.liveness_timeout_s
        for worker in self.workers:
            if not worker.thread.is_alive() and worker.thread.ident is not None:
                if not self.stopping.is_set():
                    return unavailable("an inference thread stopped", "engine_stopped", 60)
            elif worker.warmed.is_set() and now - worker.beat > limit:
                return unavailable(
                    f"an inference thread has been stuck for {now - worker.beat:.0f} s",
                    "engine_stalled",
                    60,
                )
        return None

    def admit(self, stream: bool = False) -> Ticket:
        """A place for one request, or a 503 ``APIError`` at once."""
        if not any(worker.thread.is_alive() for worker in self.workers):
            raise unavailable(
                "the model is not running", "not_running", self.settings.retry_after_s
            )
        try:
            return self.admission.admit(stream)
        except Full as full:
            self.metrics.reject(full.reason)
            raise self.full_error(full.reason) from None

    def full_error(self, reason: str) -> APIError:
        if reason == "stream_limit":
            message = f"{self.settings.max_streams} streams are live already; retry shortly"
        else:
            message = "the server is at capacity; retry shortly"
        return unavailable(message, reason, self.settings.retry_after_s)

    def _submit(self, job: Job) -> None:
        job.enqueued = time.monotonic()
        job.submitted = True
        self.queue.put_nowait(job)
        self.metrics.queue_depth.set(self.waiting)

    @property
    def waiting(self) -> int:
        """Jobs queued or set aside, not yet taken by an inference thread."""
        return self.queue.qsize() + len(self.held)

    def next_job(self, timeout: float) -> Job | None:
        """The first waiting job (set-aside ones first), waiting up to ``timeout`` for one."""
        with self.held_lock:
            if self.held:
                job = self.held.popleft()
                self.metrics.queue_depth.set(self.waiting)
                return job
        try:
            job = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None
        self.metrics.queue_depth.set(self.waiting)
        return job

    def set_aside(self, jobs: list[Job]) -> None:
        """Jobs a batch could not take: first in line again, in their order."""
        if jobs:
            with self.held_lock:
                self.held.extendleft(reversed(jobs))

    async def generate(self, job: Job, receive: Receive | None = None) -> np.ndarray:
        """Run ``job``; its waveform ``(T,)`` float32, or an ``APIError``: 503 at its deadline,
        499 if its client disconnected (``receive`` is watched for that)."""
        loop = asyncio.get_running_loop()
        job.loop, job.future = loop, loop.create_future()
        self._submit(job)
        return await self._until(job, job.future, receive)

    async def stream(self, job: Job, receive: Receive | None = None) -> AsyncIterator[np.ndarray]:
        """Run ``job`` as a stream. Errors before the first chunk raise here, before any
        response is sent; the first chunk is awaited (within the deadline) before this
        returns."""
        job.stream = True
        job.loop, job.chunks = asyncio.get_running_loop(), asyncio.Queue()
        self._submit(job)
        first = await self._until(job, asyncio.ensure_future(job.chunks.get()), receive)
        if isinstance(first, BaseException):
            raise first
        if first is END:
            return _empty()
        job.consumed += 1
        return self._rest(job, first)

    async def _until(self, job: Job, waiter: asyncio.Future[Any], receive: Receive | None) -> Any:
        watch = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        timeout = max(0.0, job.deadline - time.monotonic())
        try:
            done, _ = await asyncio.wait(
                [waiter] if watch is None else [waiter, watch],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            job.cancelled.set()
            waiter.cancel()
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if waiter in done:
            return waiter.result()
        job.cancelled.set()
        waiter.cancel()
        if watch is not None and watch in done:
            self.metrics.reject("disconnected")
            raise APIError(499, "the client closed the connection", code="client_closed")
        self.metrics.reject("deadline")
        raise self.deadline_error()

    def deadline_error(self) -> APIError:
        return unavailable(
            f"the request was not answered within its deadline "
            f"({self.settings.request_timeout_s:g} s); retry shortly",
            "deadline_exceeded",
            self.settings.retry_after_s,
        )

    async def _rest(self, job: Job, first: np.ndarray) -> AsyncIterator[np.ndarray]:
        assert job.chunks is not None
        item: Any = first
        try:
            while item is not END:
                if isinstance(item, BaseException):
                    raise item
                yield item
                item = await job.chunks.get()
                if isinstance(item, np.ndarray):
                    job.consumed += 1
        finally:
            job.cancelled.set()

    @property
    def idle(self) -> bool:
        """Nothing admitted, queued, generating or streaming."""
        return (
            self.waiting == 0
            and self.admission.waiting == 0
            and all(worker.idle for worker in self.workers)
        )

    def stop(self, timeout: float) -> None:
        """Finish queued jobs and streams, then end the threads (bounded by ``timeout``)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if worker.thread.is_alive():
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        if any(worker.thread.is_alive() for worker in self.workers):
            logger.warning("inference threads still busy after %.1f s; abandoning them", timeout)
        stopped = unavailable("the server is shutting down", "shutting_down", 1)
        while (job := self.next_job(0.0)) is not None:  # nobody will run what is left:
            fail(job, stopped)  # answer it rather than hang

    # ----------------------------------------------------------------- inference threads
    def _generate(self, requests: list[Prepared]) -> list[np.ndarray]:
        """One batch through the vocoder (each request as it would be alone)."""
        return self.vocoder.run(requests)

    def record(self, requests: int, elapsed: float, audio_s: float, counted: bool = False) -> None:
        """Batch metrics; ``counted``: the audio seconds were counted already (streams)."""
        if requests == 0:
            return
        self.metrics.batch_size.observe(requests)
        self.metrics.inference.observe(elapsed)
        if not counted:
            self.metrics.audio_seconds.inc(audio_s)
        if audio_s > 0:
            self.metrics.real_time_factor.observe(elapsed / audio_s)


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (the request body was read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _empty() -> AsyncIterator[np.ndarray]:
    return
    yield  # an async generator that yields nothing

"""A generation request as the engine sees it, the capacity it holds, and how results get back
to the event loop.

Capacity is held by a ``Ticket`` taken at admission, before anything is parsed or decoded:
one of ``queue_size`` waiting places (from admission until an inference thread starts the job)
and, for a stream, one of ``max_streams`` stream places (until the stream ends). So no request
decodes, queues or streams beyond the advertised limits.

The inference threads never touch asyncio objects directly: every hand-back is scheduled on
the request's loop with ``call_soon_threadsafe`` (futures for whole clips, an ``asyncio.Queue``
of chunks ending in ``END`` for streams). A stream's queue is bounded by the producer: a thread
generates a chunk only while fewer than ``stream_buffer_chunks`` wait unread.
"""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

END = object()


class Full(Exception):
    """No capacity left: ``reason`` is ``queue_full`` or ``stream_limit``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Admission:
    """Counts the places held by tickets (thread-safe)."""

    def __init__(self, waiting: int, streams: int) -> None:
        self.waiting_limit = waiting
        self.stream_limit = streams
        self.waiting = 0
        self.streams = 0
        self.lock = threading.Lock()

    def admit(self, stream: bool) -> Ticket:
        """A ticket holding a waiting place (and a stream place), or ``Full``."""
        with self.lock:
            if self.waiting >= self.waiting_limit:
                raise Full("queue_full")
            if stream and self.streams >= self.stream_limit:
                raise Full("stream_limit")
            self.waiting += 1
            self.streams += int(stream)
        return Ticket(self, stream)

    def to_stream(self, ticket: Ticket) -> None:
        """Add a stream place to ``ticket`` (the request turned out to be a stream), or
        ``Full``."""
        with self.lock:
            if ticket.stream or not ticket.held:
                return
            if self.streams >= self.stream_limit:
                raise Full("stream_limit")
            self.streams += 1
            ticket.stream = True


class Ticket:
    """The places one request holds; each is given back exactly once."""

    def __init__(self, admission: Admission, stream: bool) -> None:
        self.admission = admission
        self.stream = stream
        self.waiting = True
        self.held = True

    def started(self) -> None:
        """An inference thread took the job: its waiting place is free."""
        with self.admission.lock:
            if self.waiting:
                self.waiting = False
                self.admission.waiting -= 1

    def finish(self) -> None:
        """The request ended (answered, failed, cancelled or streamed to the end)."""
        self.started()
        with self.admission.lock:
            if self.held:
                self.held = False
                self.admission.streams -= int(self.stream)


@dataclass(eq=False)  # a job is itself: compared by identity (its source holds arrays)
class Job:
    """One generation request.

    Attributes:
        source: what ``Vocoder.request`` prepares (``mel``, ``waveform`` or ``num_samples``),
            checked already; the inference thread prepares it just before generating.
        samples: samples it will generate (whole hops), for the batch's padding bound.
        speaker, temperature, seed: the request's options, resolved.
        ticket: the capacity it holds.
        stream: deliver chunks as they are generated.
        deadline: ``time.monotonic()`` by which it is answered (503 after).
    """

    source: dict[str, Any]
    samples: int
    ticket: Ticket
    speaker: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stream: bool = False
    deadline: float = math.inf
    enqueued: float = 0.0
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[np.ndarray] | None = None
    chunks: asyncio.Queue[Any] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: bool = False
    produced: int = 0  # chunks handed over (inference thread)
    consumed: int = 0  # chunks taken by the response (event loop)

    @property
    def unread(self) -> int:
        """Chunks handed over and not yet taken by the response."""
        return self.produced - self.consumed


def resolve(job: Job, waveform: np.ndarray) -> None:
    """Hand a whole clip to the waiting request."""
    job.ticket.finish()
    if job.future is not None and job.loop is not None:
        _call(job.loop, _set_result, job.future, waveform)


def fail(job: Job, error: BaseException) -> None:
    """Hand an error to the waiting request (whole clip or stream); it ends the job."""
    job.ticket.finish()
    if job.stream:
        _push(job, error)
    elif job.future is not None and job.loop is not None:
        _call(job.loop, _set_exception, job.future, error)


def push(job: Job, chunk: np.ndarray) -> None:
    """Hand a stream its next chunk."""
    job.produced += 1
    _push(job, chunk)


def end(job: Job) -> None:
    """A stream's last chunk was handed over."""
    job.ticket.finish()
    _push(job, END)


def _push(job: Job, item: Any) -> None:
    if job.chunks is not None and job.loop is not None:
        _call(job.loop, job.chunks.put_nowait, item)


def _call(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop closed: nobody is waiting any more
        pass


def _set_result(future: asyncio.Future[np.ndarray], value: np.ndarray) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[np.ndarray], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

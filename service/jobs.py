"""A generation request as the engine sees it, and how results get back to the event loop.

The inference thread never touches asyncio objects directly: every hand-back is scheduled
on the request's loop with ``call_soon_threadsafe`` (futures for whole clips, an
``asyncio.Queue`` of chunks ending in ``END`` for streams).
"""

from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.vocoder import Prepared

END = object()


@dataclass
class Job:
    """One generation request.

    Attributes:
        request: the prepared request (``Vocoder.request``: context, noise drawn from the
            request's own seed so batching cannot change it, length and gain).
        stream: deliver chunks as they are generated.
        deadline: ``time.monotonic()`` after which the job is dropped unstarted.
    """

    request: Prepared | None = None
    stream: bool = False
    deadline: float = math.inf
    enqueued: float = 0.0
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[np.ndarray] | None = None
    chunks: asyncio.Queue[Any] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


def resolve(job: Job, waveform: np.ndarray) -> None:
    """Hand a whole clip to the waiting request."""
    if job.future is not None and job.loop is not None:
        _call(job.loop, _set_result, job.future, waveform)


def fail(job: Job, error: BaseException) -> None:
    """Hand an error to the waiting request (whole clip or stream)."""
    if job.stream:
        push(job, error)
    elif job.future is not None and job.loop is not None:
        _call(job.loop, _set_exception, job.future, error)


def push(job: Job, item: Any) -> None:
    """Hand a stream its next chunk, an error, or ``END``."""
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

"""One inference thread: it takes waiting jobs in batches, prepares and generates them, and
advances its streams a chunk at a time, beating a heartbeat every turn.

A turn: take the first waiting job, wait up to ``max_delay_ms`` after its arrival for more (up
to ``max_batch`` requests and ``max_batch_samples`` padded samples), drop the jobs whose client
left or whose deadline passed, prepare each (``Vocoder.request``: its mel, context and noise
from its own seed, one failure answering that job alone), generate the batch in one pass
(``Vocoder.run``: each request padded alone, so its audio is what it would be alone), then give
every stream one chunk, unless its client has ``stream_buffer_chunks`` unread (backpressure: a
client that stops reading stops its stream's generation). Whatever goes wrong in a turn, every
job it took is answered.

Each thread runs ``torch_threads`` intra-op threads (one by default): on a busy machine, torch's
threads waiting for each other cost more than they bring, while independent inference threads
each keep a core busy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.vocoder import Prepared
from service.errors import SERVER, APIError, invalid, unavailable
from service.jobs import Job, end, fail, push, resolve

if TYPE_CHECKING:
    from service.engine import Engine

logger = logging.getLogger(__name__)

POLL_S = 0.05


@dataclass(eq=False)
class _Stream:
    job: Job
    chunks: Iterator[np.ndarray]
    samples: int
    compute_s: float = 0.0
    paused_since: float | None = None


class Worker:
    """An inference thread of ``engine`` (its queue, vocoder, settings and metrics)."""

    def __init__(self, engine: Engine, index: int) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.metrics = engine.metrics
        self.streams: list[_Stream] = []
        self.turn: list[Job] = []
        self.busy = False
        self.beat = time.monotonic()
        self.warmed = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"distilwave-inference-{index}", daemon=True
        )

    @property
    def idle(self) -> bool:
        return not self.busy and not self.streams

    # ---------------------------------------------------------------------- the loop
    def _run(self) -> None:
        torch.set_num_threads(self.settings.threads())  # this thread's own intra-op threads
        with torch.inference_mode():
            try:
                self._warm_up()
            except Exception as exc:
                logger.exception("warm-up generation failed; the service will not become ready")
                self.failed = exc
                return
            self.warmed.set()
            self.engine.warmed()
            while True:
                self.beat = time.monotonic()
                try:
                    worked = self._step()
                except Exception:  # never let one bad turn kill the thread or strand a job
                    logger.exception("inference turn failed")
                    for job in self.turn:
                        if job.ticket.held:
                            fail(job, _server_error("generation failed"))
                    worked = True
                finally:
                    self.turn = []
                    self.busy = False
                if not worked and self.engine.stopping.is_set() and self.engine.idle:
                    break

    def _warm_up(self) -> None:
        """A real generation through the batched path (first-call allocations, kernels)."""
        started = time.perf_counter()
        vocoder = self.engine.vocoder
        rate = vocoder.sample_rate
        samples = max(vocoder.hop_length, round(self.settings.warmup_s * rate))
        speaker = 0 if vocoder.n_speakers else None
        if vocoder.conditional:
            noise = torch.randn(
                max(samples, vocoder.min_samples), generator=torch.Generator().manual_seed(0)
            )
            request = vocoder.request(waveform=noise.numpy(), speaker=speaker, seed=0)
        else:
            request = vocoder.request(num_samples=samples, speaker=speaker, seed=0)
        waveform = self.engine._generate([request])[0]
        if not np.isfinite(waveform).all():
            raise RuntimeError("the warm-up generation produced non-finite samples")
        logger.info(
            "warm-up (%s): %.2f s of audio in %.3f s",
            self.thread.name,
            waveform.shape[0] / rate,
            time.perf_counter() - started,
        )

    def _step(self) -> bool:
        """One turn. Returns whether there was anything to do."""
        jobs = self._take()
        self.turn = jobs
        now = time.monotonic()
        live: list[Job] = []
        for job in jobs:
            job.ticket.started()
            if job.cancelled.is_set():
                job.ticket.finish()
            elif now > job.deadline:
                self.metrics.reject("deadline")
                fail(job, self.engine.deadline_error())
            else:
                self.metrics.queue_wait.observe(now - job.enqueued)
                live.append(job)
        if live:
            self.busy = True
        batch: list[tuple[Job, Prepared]] = []
        for job in live:
            request = self._prepare(job)
            if request is None:
                continue
            if job.stream:
                chunks = self.engine.vocoder.stream(request, self.engine.stream_chunk)
                self.streams.append(_Stream(job, chunks, request.length))
            else:
                batch.append((job, request))
        if batch:
            self._run_batch(batch)
        self.turn = []
        advanced = self._advance_streams()
        return bool(jobs) or advanced

    def _take(self) -> list[Job]:
        """The next batch of waiting jobs (empty if none arrived within the poll interval).

        Jobs join the first while the batch stays within ``max_batch`` requests and
        ``max_batch_samples`` padded samples, and pads its requests by at most
        ``max_batch_padding`` of what they need (every request is padded to the longest; on
        a CPU the padding costs as much as the audio). A job that does not fit is set aside,
        first in line for the next batch of any thread."""
        engine, settings = self.engine, self.settings
        streaming = self._streams_can_advance()
        first = engine.next_job(0.0 if streaming else POLL_S)
        if first is None:
            return []
        jobs, aside = [first], list[Job]()
        window_end = first.enqueued + settings.max_delay_ms / 1000.0
        count, longest, needed = (0, 0, 0) if first.stream else (1, first.samples, first.samples)
        while count < settings.max_batch and len(aside) < settings.max_batch:
            remaining = 0.0 if streaming else window_end - time.monotonic()
            job = engine.next_job(remaining)
            if job is None:
                break
            if job.stream:
                jobs.append(job)
                continue
            padded = max(longest, job.samples) * (count + 1)
            if count and (
                padded > settings.max_batch_samples
                or padded > (1 + settings.max_batch_padding) * (needed + job.samples)
            ):
                aside.append(job)
                continue
            jobs.append(job)
            count, longest, needed = count + 1, max(longest, job.samples), needed + job.samples
        engine.set_aside(aside)
        return jobs

    def _prepare(self, job: Job) -> Prepared | None:
        """The job's context and noise, or None after answering it with the error."""
        try:
            return self.engine.vocoder.request(
                **job.source, speaker=job.speaker, temperature=job.temperature, seed=job.seed
            )
        except ValueError as exc:
            fail(job, invalid(str(exc)))
        except Exception:
            logger.exception("preparing a request failed")
            fail(job, _server_error("could not prepare the request"))
        return None

    def _run_batch(self, batch: list[tuple[Job, Prepared]]) -> None:
        started = time.perf_counter()
        try:
            waveforms = self.engine._generate([request for _, request in batch])
        except Exception:
            logger.exception("generation failed for a batch of %d", len(batch))
            for job, _ in batch:
                fail(job, _server_error("generation failed"))
            return
        elapsed = time.perf_counter() - started
        # Recorded before anyone is answered, so a client that reads /metrics next sees it.
        audio_s = sum(w.shape[0] for w in waveforms) / self.engine.sample_rate
        self.engine.record(len(batch), elapsed, audio_s)
        for (job, _), waveform in zip(batch, waveforms, strict=True):
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

    # ---------------------------------------------------------------------- streams
    def _streams_can_advance(self) -> bool:
        limit = self.settings.stream_buffer_chunks
        return any(s.job.unread < limit or s.job.cancelled.is_set() for s in self.streams)

    def _advance_streams(self) -> bool:
        """One chunk for every stream whose client keeps up; whether any advanced."""
        advanced = False
        now = time.monotonic()
        for stream in list(self.streams):
            job = stream.job
            if job.cancelled.is_set():
                self.streams.remove(stream)
                job.ticket.finish()
                continue
            if job.unread >= self.settings.stream_buffer_chunks:
                stream.paused_since = stream.paused_since or now
                if now - stream.paused_since > self.settings.request_timeout_s:
                    # the response side disconnects such a client; this frees the place even
                    # if the response never started reading
                    self.streams.remove(stream)
                    self.metrics.reject("stalled")
                    fail(job, unavailable("the client stopped reading", "stream_stalled", 1))
                continue
            stream.paused_since = None
            advanced = True
            self._advance(stream)
        return advanced

    def _advance(self, stream: _Stream) -> None:
        job = stream.job
        started = time.perf_counter()
        try:
            chunk = next(stream.chunks)
        except StopIteration:
            self.streams.remove(stream)
            audio_s = stream.samples / self.engine.sample_rate
            self.engine.record(1, stream.compute_s, audio_s, counted=True)
            end(job)
            return
        except Exception:
            logger.exception("streaming generation failed")
            self.streams.remove(stream)
            fail(job, _server_error("generation failed"))
            return
        stream.compute_s += time.perf_counter() - started
        self.metrics.audio_seconds.inc(chunk.shape[0] / self.engine.sample_rate)
        push(job, chunk)


def _server_error(message: str) -> APIError:
    return APIError(500, message, SERVER, None, "server_error")

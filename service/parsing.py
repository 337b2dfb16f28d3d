"""JSON request bodies: parsed and validated, large ones in a separate process.

Validating a JSON body (pydantic's Rust parser) holds the GIL from the first byte to the last:
a 16 MB mel body costs 0.2-0.3 s of it on this machine's cores, during which the event loop
answers nothing, and on a loaded machine the stall stretches past a second. Bodies from
``LARGE_BODY`` bytes up are therefore parsed (``ServiceState.parse``) in a child process
(spawned once) that returns only what the request needs (the options, and the
mel as an array or as its base64 text), so liveness and readiness answer whatever is in
flight. Small bodies parse in a thread, where a process round trip costs more than the parse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import IO, Any, TypeVar

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.errors import APIError, invalid, unavailable
from service.schemas import GenerateRequest, VocodeRequest

logger = logging.getLogger(__name__)

LARGE_BODY = 1 << 20
M = TypeVar("M", bound=BaseModel)
Outcome = tuple[str, Any]


def parse(model: type[M], body: bytes, content_type: str | None) -> M:
    """A JSON body validated against ``model``. Errors stop at the first bad value of a mel
    (``fail_fast``)."""
    if not body or (content_type and "json" not in content_type.split(";")[0].lower()):
        raise APIError(
            400,
            "the body must be a JSON object sent with Content-Type: application/json",
            code="invalid_body",
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def vocode_body(body: bytes, content_type: str | None) -> tuple[VocodeRequest, np.ndarray | str]:
    """A vocode body: the request without its mel, and the mel (float64 frames x bands, or its
    base64 text, decoded by the caller)."""
    parsed = parse(VocodeRequest, body, content_type)
    if isinstance(parsed.mel, str):
        return parsed.model_copy(update={"mel": ""}), parsed.mel
    lengths = {len(frame) for frame in parsed.mel}
    if len(lengths) > 1:
        raise invalid("mel frames have different band counts", "mel", "mel_bands")
    raw = np.asarray(parsed.mel, dtype=np.float64)  # range-checked before float32
    return parsed.model_copy(update={"mel": ""}), raw[None] if raw.ndim == 1 else raw


def generate_body(body: bytes, content_type: str | None) -> GenerateRequest:
    return parse(GenerateRequest, body, content_type)


FUNCTIONS: dict[str, Any] = {"vocode": vocode_body, "generate": generate_body}


def _outcome(name: str, body: bytes, content_type: str | None) -> Outcome:
    """Run in the child: the result, or the error as plain data (exceptions are rebuilt in the
    server, so nothing depends on how they pickle)."""
    try:
        return "ok", FUNCTIONS[name](body, content_type)
    except APIError as exc:
        return "api", (exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)
    except RequestValidationError as exc:
        return "validation", list(exc.errors())


def _send(stream: IO[bytes], payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the parser process closed its output")
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the parser process closed its output")
    return pickle.loads(data)  # noqa: S301 - our own child's answer


def serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """The child's loop: ``(name, body, content_type)`` in, an outcome out, until EOF."""
    while True:
        try:
            name, body, content_type = _receive(source)
        except EOFError:
            return
        _send(sink, _outcome(name, body, content_type))


class ParserProcess:
    """One child process (``python -m service.parsing``) for large bodies, one body at a time;
    started by the first large body (in a thread: the event loop goes on), again after it
    dies, and stopped with the server. A plain subprocess, not multiprocessing: nothing of the
    server's own main module runs again in it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is None or self._child.poll() is not None:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "service.parsing"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        return self._child

    def stop(self) -> None:
        with self._lock:
            child, self._child = self._child, None
        if child is not None and child.poll() is None:
            assert child.stdin is not None
            child.stdin.close()  # the child's loop ends at EOF
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def _call(self, name: str, body: bytes, content_type: str | None) -> Outcome:
        with self._lock:
            child = self._start()
            assert child.stdin is not None and child.stdout is not None
            try:
                _send(child.stdin, (name, body, content_type))
                outcome: Outcome = _receive(child.stdout)
                return outcome
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                logger.error("the body parser process failed (%s); starting another", exc)
                child.kill()
                child.wait()
                self._child = None
                message = "the request parser restarted; retry"
                raise unavailable(message, "parser_restarted", 1) from exc

    async def run(self, name: str, body: bytes, content_type: str | None) -> Any:
        """``FUNCTIONS[name](body, content_type)`` in the child process."""
        kind, value = await asyncio.to_thread(self._call, name, body, content_type)
        if kind == "api":
            status, message, type_, param, code, headers = value
            raise APIError(status, message, type_, param, code, headers)
        if kind == "validation":
            raise RequestValidationError(value)
        return value


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)

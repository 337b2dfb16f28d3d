"""service/parsing.py: large JSON bodies parsed in a child process give exactly what the
in-thread parse gives (values, errors), and a dead child is replaced. (That the probes stay
fast while they parse: tests/service/test_attacks.py.)"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError

from service.errors import APIError
from service.parsing import LARGE_BODY, ParserProcess, generate_body, vocode_body

JSON = "application/json"


@pytest.fixture
def parser():
    parser = ParserProcess()
    yield parser
    parser.stop()


def _large_mel_body(value: object = 0.25) -> bytes:
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(1600, 80)).round(6).tolist()
    frames[7][3] = value
    body = json.dumps({"mel": frames, "seed": 3, "temperature": 0.5}).encode()
    assert len(body) >= LARGE_BODY
    return body


def test_a_large_body_parses_in_the_child_exactly_as_in_a_thread(parser):
    body = _large_mel_body()
    request, raw = asyncio.run(parser.run("vocode", body, JSON))
    expected_request, expected_raw = vocode_body(body, JSON)
    assert request == expected_request and request.mel == ""
    assert request.seed == 3 and request.temperature == 0.5
    assert raw.dtype == np.float64 and np.array_equal(raw, expected_raw)
    assert parser._child is not None and parser._child.poll() is None  # one child, kept


def test_the_childs_errors_are_the_threads_errors(parser):
    body = _large_mel_body("x")
    with pytest.raises(RequestValidationError) as in_thread:
        vocode_body(body, JSON)
    with pytest.raises(RequestValidationError) as in_child:
        asyncio.run(parser.run("vocode", body, JSON))
    assert in_child.value.errors() == in_thread.value.errors()
    with pytest.raises(APIError) as wrong_type:
        asyncio.run(parser.run("generate", b"{" + b" " * LARGE_BODY + b"}", "text/plain"))
    assert wrong_type.value.status == 400 and wrong_type.value.code == "invalid_body"
    padded = b'{"duration_s": 2.0' + b" " * LARGE_BODY + b"}"
    assert asyncio.run(parser.run("generate", padded, JSON)) == generate_body(padded, JSON)


def test_a_dead_child_is_replaced_and_the_child_ends_with_the_server(parser):
    body = _large_mel_body()
    asyncio.run(parser.run("vocode", body, JSON))
    first = parser._child
    assert first is not None
    first.kill()  # e.g. the kernel's OOM killer, between two requests
    first.wait()
    _, raw = asyncio.run(parser.run("vocode", body, JSON))
    assert raw.shape == (1600, 80)
    assert parser._child is not None and parser._child.pid != first.pid
    child = parser._child
    parser.stop()
    assert child.poll() is not None


def test_a_child_that_dies_mid_request_costs_that_request_a_503_and_is_replaced(parser):
    import subprocess
    import sys

    # alive when the request starts (it waits for input), gone before it answers
    dying = "import sys; sys.stdin.buffer.read(8); sys.exit(1)"
    parser._child = subprocess.Popen(
        [sys.executable, "-c", dying], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    body = _large_mel_body()
    with pytest.raises(APIError) as refused:
        asyncio.run(parser.run("vocode", body, JSON))
    assert refused.value.status == 503 and refused.value.code == "parser_restarted"
    assert refused.value.headers == {"Retry-After": "1"}
    _, raw = asyncio.run(parser.run("vocode", body, JSON))  # a real child again
    assert np.array_equal(raw, vocode_body(body, JSON)[1])

"""The completions and chat APIs fuzzed. Schemathesis generates requests from the server's own OpenAPI
document (`app.openapi()`, what FastAPI would serve as /openapi.json) and sends them to the
app in-process over ASGI, valid and invalid alike; Hypothesis feeds arbitrary JSON to the
request path alone (read_json, parse_request, Service.plan), no HTTP. The properties: no
5xx, no error event in a stream, and every 4xx is OpenAI's error object with a one-line
message. A tiny random model and a tokenizer trained in the tests (conftest.py)."""

from __future__ import annotations

import asyncio
import json
import typing
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from starlette.exceptions import HTTPException
from starlette.requests import Request

from codelm.generate.engine import Sampler
from codelm.model import ModelConfig, Transformer
from codelm.serve import ServeConfig, create_app
from codelm.serve.api import read_json
from codelm.serve.schemas import BadRequest, CompletionRequest, parse_request
from tests.conftest import TINY_MODEL

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import negative_data_rejection  # noqa: E402

# The server caps every request at 4 new tokens (max_tokens only shortens, never refuses), so
# the generated requests stay fast whatever max_tokens they ask for: no hook rewrites them.
CFG = ServeConfig(max_tokens=4, max_queue=16, max_prompt_chars=2000)
BODY_LIMIT = 8 * CFG.max_prompt_chars + 65536  # what Service.completions gives read_json


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **TINY_MODEL)).eval()


@pytest.fixture
def app(model, tokenizer):
    """A fresh app per test: schemathesis' pytest plugin ends the app's lifespan (which stops its
    scheduler, for good) after each test, and starts it again at the next test's first request."""
    app = create_app(model, tokenizer, CFG, name="tiny")
    yield app
    app.state.service.sched.stop()  # where the plugin did not already


@pytest.fixture
def api_schema(app):
    # Streams are read to their end, as a client would (schemathesis stops at 20 events by
    # default): a cut stream cancels its rows, and the error-event check would see only part.
    config = schemathesis.Config.from_dict({"max-stream-events": 1000})
    return schemathesis.openapi.from_dict(app.openapi(), config=config)


@pytest.fixture(scope="module")
def service(model, tokenizer):
    """A Service for planning requests; its scheduler never runs."""
    return create_app(model, tokenizer, CFG, name="tiny").state.service


def error_problems(status: int, content_type: str, text: str) -> list[str]:
    """What is wrong with an answer: a 5xx; a 4xx that is not OpenAI's error object with a
    one-line, non-empty message; a stream with an error event in it."""
    if status >= 500:
        return [f"server error {status}: {text[:300]}"]
    if content_type.startswith("text/event-stream"):
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        return [f"error event in a stream: {e[:300]}" for e in events if e.startswith('{"error"')]
    if status < 400:
        return []
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return [f"{status} without an error object: {text[:300]}"]
    return [] if one_line(message) else [f"{status} message not one line: {message!r}"]


def one_line(message: object) -> bool:
    return isinstance(message, str) and message.strip() != "" and not set(message) & set("\n\r\v\f\x85")


# Cases are drawn inside the test rather than through `schema.parametrize()`: the schema comes
# from a fixture (the app needs the trained tokenizer), and schemathesis' fixture loader
# (`schemathesis.pytest.from_fixture`) fails under pytest 9: it reads `Function._nodeid`, gone.
@pytest.mark.parametrize("mode", ["positive", "negative"])
@given(data=st.data())
# One app serves all the examples of a test (function-scoped fixtures are meant so here).
@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_generated_requests_get_no_5xx_and_one_line_errors(app, api_schema, mode, data):
    """Positive: requests the schema allows; negative: requests that break it (wrong types,
    out-of-range numbers, unknown fields, missing body), which must be refused with a 4xx."""
    case = data.draw(api_schema.as_strategy(schemathesis.GenerationMode(mode)))
    # A loopback Host: the Guard refuses any other (the ASGI client's default is "testserver").
    response = case.call(app=app, base_url="http://127.0.0.1")
    ctype = response.headers.get("content-type", [""])[0]  # schemathesis: a list per header
    event(f"{case.method} {case.path} {response.status_code}")  # --hypothesis-show-statistics
    problems = error_problems(response.status_code, ctype, response.text)
    assert problems == [], f"{case.method} {case.path} {case.body!r}"
    # Schemathesis' own checks: no 5xx, and a request that breaks the schema is refused (4xx).
    case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])


@pytest.mark.parametrize(
    "body,status",
    [
        # seen tokens' logits divided by 1e-300: inf, NaN probabilities, a 500 from the scheduler
        ({"prompt": "def f(x):\n    return x", "repetition_penalty": 1e-300, "seed": 0}, 422),
        ({"prompt": "x", "seed": 2**64}, 422),  # torch's generator overflowed in the scheduler: 500
        ({"prompt": "x", "top_p": 5e-324}, 200),  # 0 in float32, so every token was dropped: 500
        # a lone surrogate (JSON "\ud800") echoed back could not be encoded as UTF-8: 500
        ({"prompt": "a\ud800", "echo": True}, 200),
    ],
)
def test_requests_that_got_a_500_get_an_answer(app, api_schema, body, status):
    case = api_schema["/v1/completions"]["POST"].Case(body=body, media_type="application/json")
    response = case.call(app=app, base_url="http://127.0.0.1")
    ctype = response.headers.get("content-type", [""])[0]
    assert (response.status_code, error_problems(response.status_code, ctype, response.text)) == (status, [])


def test_lone_surrogates_read_as_the_tokenizer_reads_them(app, api_schema):
    """U+FFFD in their place, as CodeTokenizer encodes them: the echo shows what the model saw."""
    case = api_schema["/v1/completions"]["POST"].Case(
        body={"prompt": "a\ud800", "echo": True, "max_tokens": 0}, media_type="application/json"
    )
    response = case.call(app=app, base_url="http://127.0.0.1")
    assert response.json()["choices"][0]["text"] == "a\ufffd"


# -- the request path without HTTP ------------------------------------------------------------

CHARS = st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)  # lone surrogates
TEXT = st.text(CHARS, max_size=40)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=8,
)
IDS = st.lists(st.integers(-3, 500), max_size=8)  # token ids near the vocabulary's range (400)


def in_bounds(name: str) -> st.SearchStrategy[Any]:
    """Values of a field's own type, numbers within its pydantic bounds (ge, gt, le)."""
    field = CompletionRequest.model_fields[name]
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le") if hasattr(m, k)}
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le")
    types = typing.get_args(field.annotation)
    if int in types:
        return st.integers(low, high)
    if float in types:
        return st.floats(low, high, exclude_min="gt" in bounds)
    return st.from_type(field.annotation)


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` seven times in eight, else `other` (one_of would weigh their branches alike)."""
    return st.integers(0, 7).flatmap(lambda k: other if k == 0 else usual)


# Each field gets values of its own type, else any JSON at all; a body names a few fields, so
# that many bodies are valid and reach planning.
OWN = {name: in_bounds(name) for name in CompletionRequest.model_fields}
OWN.update(
    prompt=TEXT | st.lists(TEXT, max_size=3) | IDS | st.lists(IDS, max_size=3),
    stop=TEXT | st.lists(TEXT, max_size=3),
    stream_options=st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    suffix=TEXT,
    instruction=TEXT,
)
FIELDS = {name: mostly(own, JSON) for name, own in OWN.items()}
REQUESTS = st.lists(st.sampled_from(sorted(FIELDS)), max_size=5, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({name: FIELDS[name] for name in names})
)
BODIES = mostly(REQUESTS, JSON)


def outcome(svc: Any, obj: Any) -> tuple[int, str]:
    """(200, "planned") when the body parses and plans into jobs (and samplers, as the scheduler
    would build them), else the status and message of the BadRequest the server answers with."""
    try:
        jobs, _ = svc.plan(parse_request(obj), sink=None)
        samplers = [Sampler.of(j.sampling) for j in jobs]
    except BadRequest as e:
        return e.status, str(e)
    return 200, f"planned {len(samplers)}"


@given(body=BODIES)
@example(body={"prompt": "x", "seed": 2**64})  # torch's generator takes no seed past 64 bits: was a 500
@example(body={"prompt": "x", "seed": 2**63 - 1, "n": 16})  # seed + i for choice i stays in range
@example(body={"prompt": "x", "seed": -(2**63), "n": 16})
@settings(max_examples=1000, deadline=None, derandomize=True)
def test_any_json_body_plans_or_is_refused_with_one_line(service, body):
    status, message = outcome(service, body)
    event(f"{status} {message.split(':')[0][:40]}")
    assert status in (200, 400, 422) and one_line(message), (status, message)


def read(body: bytes) -> dict[str, Any]:
    """read_json on a request carrying `body`, in two chunks as a socket may deliver it."""
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", b"application/json")]}
    return asyncio.run(read_json(Request(scope, receive), BODY_LIMIT))


def read_outcome(body: bytes) -> tuple[int, str]:
    try:
        return 200, f"object of {len(read(body))} keys"
    except BadRequest as e:
        return e.status, str(e)
    except HTTPException as e:
        return e.status_code, str(e.detail)


JSON_TEXT = JSON.map(json.dumps) | st.text(st.sampled_from('{}[]":,0.e-1 nulltruefalse\\u"NaN'), max_size=30)


@given(body=JSON_TEXT.map(str.encode) | st.binary(max_size=40))
@example(body=b"[" * 100_000)  # too deep for json.loads: RecursionError
@example(body=b" " * (BODY_LIMIT + 1))  # 413
@example(body=b'{"prompt": "\\ud800"}')  # a lone surrogate is valid JSON
@settings(max_examples=500, deadline=None, derandomize=True)
def test_any_body_bytes_read_as_an_object_or_a_one_line_400(body):
    status, message = read_outcome(body)
    event(f"{status} {message.split(':')[0][:40]}")
    assert status in (200, 400, 413) and one_line(message), (status, message)

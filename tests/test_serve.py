"""`codelm serve`: the completions and chat APIs through OpenAI's own client, errors, limits,
the API key, cancellation, and the batched decoder underneath. Tiny random models, a real uvicorn
on 127.0.0.1 in a thread."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch

from codelm.cli import main
from codelm.fsutil import atomic_write_json
from codelm.generate.config import SamplingConfig
from codelm.generate.engine import Engine, Row, Sampler
from codelm.generate.generator import complete, generate_ids, load_run
from codelm.generate.healing import heal
from codelm.generate.prompts import Prompt, encode_prompt, prompt_room
from codelm.generate.scheduler import Event, Job, Scheduler
from codelm.generate.stopping import StopConfig, StopStrings
from codelm.generate.text import TextState
from codelm.model import ModelConfig, Transformer
from codelm.model.io import save_weights
from codelm.serve import BackgroundServer, ServeConfig, create_app
from codelm.serve.chat import ChatOutput, parse_chat
from codelm.tokenizer.chat import FENCE, fence_close
from tests.conftest import TINY_MODEL, corpus_texts

BLOCK = 256
RAW = StopConfig(block_end=False, max_repeats=0)  # what the API does unless asked for more


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **{**TINY_MODEL, "block_size": BLOCK})
    run = tmp_path_factory.mktemp("run")
    atomic_write_json(run / "config.json", {"model": cfg.to_dict()})
    save_weights(Transformer(cfg).eval(), run / "model.safetensors")
    tokenizer.save(run / "tokenizer.json")
    return run


@contextlib.contextmanager
def serving(run, **overrides):
    model, tok = load_run(str(run))
    app = create_app(model, tok, ServeConfig(**overrides), name="tiny")
    with BackgroundServer(app) as url:
        yield url, app.state.service


@pytest.fixture(scope="module")
def server(run_dir):
    with serving(run_dir, max_batch=8) as s:
        yield s


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def slow_down(svc, monkeypatch, delay: float = 0.02) -> None:
    """Make each decode step take `delay` seconds longer, so tests can act mid-generation."""
    step = svc.sched.engine.step

    def slow():
        time.sleep(delay)
        return step()

    monkeypatch.setattr(svc.sched.engine, "step", slow)


def reference(run, prompt: Prompt, max_tokens: int) -> str:
    model, tok = load_run(str(run))
    return complete(
        model,
        tok,
        prompt,
        SamplingConfig(temperature=0, max_new_tokens=max_tokens, repetition_penalty=1.0, dry_multiplier=0.0),
        RAW,
    ).text


def wait_for(cond, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


# -- the batched decoder and the streamed text ------------------------------------------


@pytest.mark.parametrize("pos,kv", [("rope", None), ("learned", None), ("rope", torch.bfloat16)])
def test_engine_rows_match_single_runs_as_rows_join_and_leave(pos, kv):
    """Rows of different lengths join a running batch and leave it (the last row moving
    into the freed cache row); each decodes greedily the tokens it decodes alone."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, **{**TINY_MODEL, "pos": pos})).eval()
    model.kv_dtype = kv  # bf16: the cache generation uses on CPU (quantize.py)
    greedy = SamplingConfig(temperature=0, max_new_tokens=12, repetition_penalty=1.0, dry_multiplier=0.0)
    seqs = [torch.randint(0, 97, (n,)).tolist() for n in (5, 9, 3, 7)]
    alone = [[s.token for s in generate_ids(model, seq, greedy)] for seq in seqs]
    engine = Engine(model, 3, frozenset())
    assert engine.cache.k.dtype == (kv or torch.float32)
    rows = [Row(seq, 12, Sampler(greedy)) for seq in seqs]
    engine.add(rows[:2])
    for turn in range(12):
        if turn == 2:  # a third prompt joins the running batch
            engine.add([rows[2]])
        if turn == 4:  # the first row leaves; the last moves into its cache row
            engine.remove(rows[0])
            engine.add([rows[3]])  # and a fourth joins in the freed row
        engine.step()
    while engine.active:
        engine.step()
    assert rows[0].tokens == alone[0][: len(rows[0].tokens)] and len(rows[0].tokens) == 5
    for row, want in zip(rows[1:], alone[1:], strict=True):
        assert row.tokens == want, (row.tokens, want)


def test_a_healed_first_token_streams_only_its_new_bytes(tokenizer):
    text = "def f(x):\n    return x\n"
    ids = tokenizer.encode(text)
    state = TextState(tokenizer.token_bytes, skip=1)  # the prompt already holds the "d"
    for i in ids:
        state.add(i)
    assert state.text == text[1:] and state.take(final=True)[0] == text[1:]


def test_token_bytes_and_streamed_text_match_the_tokenizer(tokenizer):
    table = tokenizer.token_bytes
    for text in [*corpus_texts(1), "naïve = '→ 😀'\n\tx\r\n"]:
        ids = tokenizer.encode(text)
        assert b"".join(table[i] for i in ids).decode("utf-8") == text == tokenizer.decode(ids)
    # Streamed pieces never include text that a stop string later cuts away.
    text = "def f(x):\n    return x  # done\nprint(f(2))\n"
    ids = tokenizer.encode(text)
    state, pieces, why = TextState(table, [StopStrings(["# done", "\nprint"])]), [], None
    for i in ids:
        why = state.add(i)
        pieces.append(state.take(final=why is not None)[0])
        if why:
            break
    assert why == "stop_string" and "".join(pieces) == state.text == "def f(x):\n    return x  "


# -- the API through OpenAI's client -----------------------------------------------------


def test_completions_with_the_openai_client(server, run_dir):
    url, _ = server
    api = client(url)
    assert [m.id for m in api.models.list().data] == ["tiny"]
    out = api.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=12, temperature=0)
    assert out.model == "tiny" and len(out.choices) == 1
    assert out.choices[0].text == reference(run_dir, Prompt("def add(a, b):"), 12)
    extra = out.choices[0].model_extra
    assert out.choices[0].finish_reason in ("stop", "length") and extra["stop_rule"]
    assert out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 0


def test_streaming_gives_the_same_text_token_by_token(server):
    url, _ = server
    api = client(url)
    args = dict(model="tiny", prompt="class Stack:", max_tokens=20, temperature=0)
    whole = api.completions.create(**args).choices[0].text
    chunks = list(api.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == whole and len(texts) > 1
    finals = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["stop_rule"]
    assert chunks[-1].usage.completion_tokens > 0
    # the raw stream ends with the SSE sentinel
    with httpx.stream("POST", f"{url}/v1/completions", json={**args, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_suffix_fills_in_the_middle_in_the_training_layout(server, run_dir, tokenizer):
    url, _ = server
    prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
    out = client(url).completions.create(
        model="tiny", prompt=prefix, suffix=suffix, max_tokens=10, temperature=0
    )
    ids = encode_prompt(tokenizer, Prompt(prefix, suffix), prompt_room(BLOCK, 10)).ids
    assert out.usage.prompt_tokens == len(ids)
    assert out.choices[0].text == reference(run_dir, Prompt(prefix, suffix), 10)


def test_n_seed_logprobs_and_echo(server):
    url, _ = server
    api = client(url)
    args = dict(model="tiny", prompt=["x = ", "def f("], n=2, max_tokens=6, temperature=1.0, seed=3)
    a, b = api.completions.create(**args), api.completions.create(**args)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and len(a.choices) == 4
    assert [c.index for c in a.choices] == [0, 1, 2, 3]
    out = api.completions.create(
        model="tiny", prompt="x = ", max_tokens=5, logprobs=3, echo=True, temperature=0
    )
    c = out.choices[0]
    assert c.text.startswith("x = ")
    lp = c.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(t) <= 3 for t in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)
    assert "".join(lp.tokens) == c.text  # the prompt's tokens, then the completion's


def test_dry_reaches_the_sampler_as_llama_cpp_names_it(server, run_dir, tokenizer):
    url, _ = server
    model, tok = load_run(str(run_dir))
    cfg = SamplingConfig(temperature=0, max_new_tokens=40, repetition_penalty=1.0, dry_multiplier=0.0)
    dry = replace(cfg, dry_multiplier=3.0, dry_allowed_length=2)
    stops = StopConfig(block_end=False, max_repeats=0)  # the API's defaults
    want_plain, want_dry = (complete(model, tok, "import os\n", c, stops).text for c in (cfg, dry))
    assert want_plain != want_dry  # the tiny model repeats itself, and DRY changes that
    body = {"prompt": "import os\n", "max_tokens": 40, "temperature": 0}
    with httpx.Client(base_url=url, timeout=30) as c:
        plain = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
        got = c.post("/v1/completions", json={**body, "dry_multiplier": 3.0, "dry_allowed_length": 2})
    assert plain == want_plain and got.json()["choices"][0]["text"] == want_dry


def test_stop_strings_cut_the_text_and_the_stream_alike(server):
    url, _ = server
    api = client(url)
    args = dict(model="tiny", prompt="import os\n", max_tokens=30, temperature=0)
    text = api.completions.create(**args).choices[0].text
    stop = text[10:12]
    out = api.completions.create(**args, stop=[stop, "@@never@@"]).choices[0]
    assert out.text == text[: text.find(stop)] and out.finish_reason == "stop"
    assert out.model_extra["stop_rule"] == "stop_string"
    streamed = "".join(c.choices[0].text for c in api.completions.create(**args, stop=stop, stream=True))
    assert streamed == out.text


def test_instruction_mode_and_stop_rules_match_the_generator(server, run_dir, tokenizer):
    url, _ = server
    ask = {"prompt": "", "instruction": "add two numbers", "max_tokens": 12, "temperature": 0}
    r = httpx.post(f"{url}/v1/completions", json=ask).json()
    prompt = Prompt("", instruction="add two numbers")
    assert r["usage"]["prompt_tokens"] == len(encode_prompt(tokenizer, prompt, prompt_room(BLOCK, 12)).ids)
    assert r["choices"][0]["text"] == reference(run_dir, prompt, 12)
    model, tok = load_run(str(run_dir))
    cases = [
        (p, trim)
        for p in ("def add(a, b):\n", "class Stack:\n    def pop(self):\n")
        for trim in (False, True)
    ]
    for prompt_text, trim in cases:
        body = {"prompt": prompt_text, "max_tokens": 40, "temperature": 0, "trim_to_parse": trim}
        r = httpx.post(
            f"{url}/v1/completions", json={**body, "stop_at_block_end": True, "stop_on_repetition": True}
        )
        stops = StopConfig(block_end=True, max_repeats=3, trim=trim)
        ref = complete(
            model,
            tok,
            Prompt(prompt_text),
            SamplingConfig(temperature=0, max_new_tokens=40, repetition_penalty=1.0, dry_multiplier=0.0),
            stops,
        )
        choice = r.json()["choices"][0]
        assert choice["text"] == ref.text
        assert choice["stop_rule"] == ref.stop_reason
        assert choice["syntax"] == (ref.syntax or None)
        assert trim == (choice["syntax"] is not None) or choice["stop_rule"] == "block_end"
        assert ref.healed == "\n"  # healed on both sides; usage counts the prompt as sent
        room = prompt_room(BLOCK, 40)
        assert r.json()["usage"]["prompt_tokens"] == len(encode_prompt(tok, Prompt(prompt_text), room).ids)


USER = [{"role": "user", "content": "x"}]
CHAT = [
    {"role": "system", "content": "Write Python."},
    {"role": "user", "content": "Parse a date."},
    {"role": "assistant", "content": "```python\nparse(text)\n```"},
    {"role": "user", "content": [{"type": "text", "text": "Add two "}, {"type": "text", "text": "numbers."}]},
]
# The conversation as the instruction the model reads: system, the turns (the assistant's code
# without its fence), the last request, joined by blank lines.
CHAT_INSTRUCTION = "Write Python.\n\nParse a date.\n\nparse(text)\n\nAdd two numbers."


def test_chat_is_the_instruction_mode_answered_in_a_fence(server, run_dir, tokenizer):
    """OpenAI's own client, whole and streamed: the reply is what the generator writes for
    the conversation laid out as one instruction (with codelm's loop guards, trimmed to code
    that parses), inside a ```python fence."""
    url, _ = server
    api = client(url)
    ask = dict(model="tiny", messages=CHAT, max_tokens=16, temperature=0)
    out = api.chat.completions.create(**ask)
    prompt = Prompt("", instruction=CHAT_INSTRUCTION)
    model, tok = load_run(str(run_dir))
    stops = StopConfig(block_end=False, max_repeats=3, trim=True)
    ref = complete(model, tok, prompt, SamplingConfig(temperature=0, max_new_tokens=16), stops)
    [choice] = out.choices
    assert out.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content == FENCE + ref.text + fence_close(ref.text)
    assert choice.finish_reason == ("length" if ref.stop_reason in ("length", "context_full") else "stop")
    assert (choice.model_extra["stop_rule"], choice.model_extra["syntax"]) == (ref.stop_reason, ref.syntax)
    assert out.usage.prompt_tokens == len(encode_prompt(tokenizer, prompt, prompt_room(BLOCK, 16)).ids)
    chunks = list(api.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[-1].usage.total_tokens == out.usage.total_tokens  # its prompt now comes from the cache
    many = api.chat.completions.create(model="tiny", messages=CHAT[-1:], max_tokens=8, n=3, seed=1)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert all(c.message.content.startswith(FENCE) for c in many.choices)


class _Events:
    """A reader (api.py's _Reader) that hands out a fixed list of scheduler events."""

    def __init__(self, events: list[Event]):
        self.events = events

    async def next(self) -> Event | None:
        return self.events.pop(0) if self.events else None


def test_chat_output_fences_the_code_whole_and_streamed():
    """The chat format from scheduler events: the assistant's message is the code in a
    ```python fence closed on a line of its own; the stream gives the role and the opening
    fence first, the text as it comes, and the closing fence with the finish reason."""
    req = parse_chat({"messages": USER, "n": 2})
    svc = SimpleNamespace(tok=None, name="tiny")
    jobs = [Job([1], 8, SamplingConfig(), None, i, []) for i in range(2)]

    def events() -> list[Event]:
        return [
            Event("start", 0, prompt_tokens=3), Event("start", 1, prompt_tokens=3),
            Event("delta", 0, "x = "), Event("delta", 1, "y = 2\n"), Event("delta", 0, "1"),
            Event("done", 0, stop_rule="end_of_text", completion_tokens=2, syntax="parses"),
            Event("done", 1, stop_rule="length", completion_tokens=8, syntax="trimmed"),
        ]  # fmt: skip

    whole, evs = ChatOutput(svc, req, jobs, [None]), events()
    asyncio.run(whole.collect(evs[0], _Events(evs[1:])))
    body = whole.whole()
    contents = [c["message"]["content"] for c in body["choices"]]
    assert contents == ["```python\nx = 1\n```", "```python\ny = 2\n```"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 10

    async def stream() -> list[dict]:
        evs = events()
        sent = [s async for s in ChatOutput(svc, req, jobs, [None]).stream(evs[0], _Events(evs[1:]))]
        assert sent[-1] == "data: [DONE]\n\n"
        return [json.loads(s.removeprefix("data: ")) for s in sent[:-1]]

    chunks = asyncio.run(stream())
    of = {i: [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i] for i in (0, 1)}
    assert [c["delta"] for c in of[0]] == [
        {"role": "assistant", "content": "```python\n"}, {"content": "x = "}, {"content": "1"},
        {"content": "\n```"},
    ]  # fmt: skip
    assert [c["finish_reason"] for c in of[1]] == [None, None, "length"]
    assert ["".join(c["delta"]["content"] for c in of[i]) for i in (0, 1)] == contents
    assert [FENCE + t + fence_close(t) for t in ("", "x = 1\n")] == [
        "```python\n```",
        "```python\nx = 1\n```",
    ]


CHAT_BAD = [
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages"),
    ({"messages": USER, "temperature": "hot"}, 422, "temperature"),
    ({"messages": USER, "frobnicate": 1}, 422, "unknown field 'frobnicate'"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "the last message must be the user's"),
    ({"messages": [{"role": "tool", "content": "1"}, *USER]}, 400, "tool messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "only text content"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "the messages hold no text"),
    ({"messages": USER, "logprobs": True}, 400, "logprobs are not supported"),
    ({"messages": USER, "tools": [{"type": "function"}]}, 400, "tools are not"),
    ({"messages": USER, "presence_penalty": 1.0}, 400, "presence_penalty"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, 400, "text response_format"),
]


def test_chat_requests_it_cannot_answer_get_a_one_line_4xx(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as c:
        for body, status, words in CHAT_BAD:
            r = c.post("/v1/chat/completions", json=body)
            message = r.json()["error"]["message"]
            assert (r.status_code, words in message, "\n" in message) == (status, True, False), message
        neutral = {"messages": USER, "max_tokens": 2, "store": False, "tool_choice": "none"}
        assert c.post("/v1/chat/completions", json=neutral).status_code == 200


def test_concurrent_requests_share_batches_and_match_single_ones(server, monkeypatch):
    url, svc = server
    prompts = ["def add(a, b):", "class Stack:", "import os", "def clamp(x, lo, hi):", "x = 1", "for i in"]
    body = lambda p: {"prompt": p, "max_tokens": 24, "temperature": 0}  # noqa: E731
    alone = [httpx.post(f"{url}/v1/completions", json=body(p)).json()["choices"][0]["text"] for p in prompts]
    slow_down(svc, monkeypatch, 0.005)  # so that the requests overlap even on a busy machine
    steps, rows = svc.sched.stats["steps"], svc.sched.stats["rows_stepped"]
    together: dict[int, str] = {}

    def go(i: int) -> None:
        r = httpx.post(f"{url}/v1/completions", json=body(prompts[i]), timeout=30)
        together[i] = r.json()["choices"][0]["text"]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [together[i] for i in range(len(prompts))] == alone
    mean_batch = (svc.sched.stats["rows_stepped"] - rows) / max(svc.sched.stats["steps"] - steps, 1)
    assert mean_batch > 1.5  # the requests really ran together


def test_typing_along_reuses_the_prompt_and_reports_cached_tokens(server, run_dir):
    """Each keystroke's request prefills only what follows the longest cached prefix, gives
    the text a fresh prefill gives, and says how many prompt tokens were cached."""
    url, _ = server
    api = client(url)
    text = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
    cached = []
    for typed in ("        ", "        s", "        se", "        self.", "        self.items"):
        out = api.completions.create(model="tiny", prompt=text + typed, max_tokens=12, temperature=0)
        assert out.choices[0].text == reference(run_dir, Prompt(text + typed), 12)
        details = out.usage.prompt_tokens_details
        cached.append(details.cached_tokens)
        assert 0 <= details.cached_tokens < out.usage.prompt_tokens
    assert all(c > 0 for c in cached[1:])  # every keystroke after the first reused the prompt


def test_concurrent_requests_sharing_a_prefix_match_single_ones(server, run_dir, monkeypatch):
    url, svc = server
    head = "import os\nimport sys\n\n\ndef main(argv):\n    "
    prompts = [head + tail for tail in ("return 0", "args = argv[1:]", "print(", "if not argv:")]
    want = [reference(run_dir, Prompt(p), 16) for p in prompts]
    httpx.post(f"{url}/v1/completions", json={"prompt": head, "max_tokens": 1, "temperature": 0})
    slow_down(svc, monkeypatch, 0.005)
    got: dict[int, dict] = {}

    def go(i: int) -> None:
        body = {"prompt": prompts[i], "max_tokens": 16, "temperature": 0}
        got[i] = httpx.post(f"{url}/v1/completions", json=body, timeout=30).json()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i]["choices"][0]["text"] for i in range(len(prompts))] == want
    assert all(got[i]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0 for i in got)


def test_a_request_arriving_mid_batch_joins_at_the_next_step(run_dir, monkeypatch):
    model, tok = load_run(str(run_dir))
    sched = Scheduler(model, tok, max_batch=4)
    step = sched.engine.step
    batch_sizes: list[int] = []

    def recording():
        batch_sizes.append(len(sched.engine.active))
        time.sleep(0.005)
        return step()

    monkeypatch.setattr(sched.engine, "step", recording)
    monkeypatch.setattr(sched.engine, "special", frozenset())  # never stop early at an end token
    events: list[tuple[str, Event]] = []

    def job(name: str, prompt: str, n: int) -> Job:  # as the API plans one (with healing)
        ids, healing = heal(tok, encode_prompt(tok, Prompt(prompt), BLOCK).ids)
        out = Job(
            ids,
            n,
            SamplingConfig(temperature=0, repetition_penalty=1.0, dry_multiplier=0.0),
            lambda e: events.append((name, e)),
        )
        out.healing = healing
        return out

    sched.start()
    try:
        sched.submit([job("a", "def add(a, b):", 60)])
        assert wait_for(lambda: sum(1 for n, e in events if n == "a" and e.kind == "delta") >= 5)
        sched.submit([job("b", "class Stack:", 5)])
        assert wait_for(lambda: sum(1 for _, e in events if e.kind == "done") == 2)
    finally:
        sched.stop()
    order = [(n, e.kind) for n, e in events if e.kind in ("start", "done")]
    assert order == [("a", "start"), ("b", "start"), ("b", "done"), ("a", "done")]
    assert 2 in batch_sizes and batch_sizes[0] == 1 and batch_sizes[-1] == 1
    text_b = "".join(e.text for n, e in events if n == "b")
    alone = complete(
        model,
        tok,
        Prompt("class Stack:"),
        SamplingConfig(temperature=0, max_new_tokens=5, repetition_penalty=1.0, dry_multiplier=0.0),
        RAW,
    )
    assert text_b == alone.text


# -- errors, limits, access --------------------------------------------------------------

BAD = [
    (b"{", "application/json", 400, "not valid JSON"),
    (b"[1, 2]", "application/json", 400, "JSON object"),
    (b"\xff\xfe", "application/json", 400, "not valid JSON"),
    (b'{"prompt": "x"}', "text/plain", 400, "Content-Type"),
    (b"[" * 100_000, "application/json", 400, "not valid JSON"),
    (json.dumps({"prompt": "x", "max_tokens": -1}).encode(), "application/json", 422, "max_tokens"),
    (json.dumps({"prompt": "x", "temperature": -0.1}).encode(), "application/json", 422, "temperature"),
    (json.dumps({"prompt": "x", "temperature": "hot"}).encode(), "application/json", 422, "temperature"),
    (json.dumps({"prompt": "x", "max_tokens": 1.5}).encode(), "application/json", 422, "max_tokens"),
    (json.dumps({"prompt": 7}).encode(), "application/json", 422, "prompt must be"),
    (json.dumps({"prompt": "x", "stream": "yes"}).encode(), "application/json", 422, "stream"),
    (json.dumps({"prompt": "x", "top_p": 0}).encode(), "application/json", 422, "top_p"),
    (json.dumps({"prompt": "x", "max_tokn": 5}).encode(), "application/json", 422, "unknown field"),
    (json.dumps({"prompt": "x", "logprobs": 9}).encode(), "application/json", 422, "logprobs"),
    (b'{"prompt": "x", "temperature": NaN}', "application/json", 422, "temperature"),
    (
        json.dumps({"prompt": "x", "frequency_penalty": 0.5}).encode(),
        "application/json",
        400,
        "not supported",
    ),
    (json.dumps({"prompt": "x", "best_of": 3}).encode(), "application/json", 400, "best_of"),
    (json.dumps({"prompt": "x", "suffix": "y", "echo": True}).encode(), "application/json", 400, "echo"),
    (
        json.dumps({"prompt": "x", "suffix": "y", "instruction": "z"}).encode(),
        "application/json",
        400,
        "both",
    ),
    (json.dumps({"prompt": "x", "stop": [""]}).encode(), "application/json", 400, "stop"),
    (json.dumps({"prompt": [5, 99999]}).encode(), "application/json", 400, "token ids"),
    (json.dumps({"prompt": []}).encode(), "application/json", 400, "empty"),
    (json.dumps({"prompt": "x", "n": 1000}).encode(), "application/json", 422, "n:"),
    (json.dumps({"prompt": "x", "dry_base": 0.5}).encode(), "application/json", 422, "dry_base"),
]


def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as c:
        for body, ctype, status, words in BAD:
            r = c.post("/v1/completions", content=body, headers={"content-type": ctype})
            assert r.status_code == status, (body[:60], r.text)
            message = r.json()["error"]["message"]
            assert words in message and "Traceback" not in message, (body[:60], message)
        assert c.get("/nowhere").status_code == 404 and c.get("/v1/completions").status_code == 405
        assert c.get("/health").json()["model_loaded"] is True
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 200


def test_a_failing_step_fails_only_its_own_requests(run_dir, monkeypatch):
    with serving(run_dir) as (url, svc):
        step, calls = svc.sched.engine.step, []

        def flaky():
            calls.append(len(svc.sched.engine.active))
            if len(calls) in (2, 5):
                raise RuntimeError("boom")
            return step()

        monkeypatch.setattr(svc.sched.engine, "step", flaky)
        monkeypatch.setattr(svc.sched.engine, "special", frozenset())
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 10})
        assert r.status_code == 500 and "internal error: RuntimeError: boom" in r.json()["error"]["message"]
        with httpx.stream(
            "POST", f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 10, "stream": True}
        ) as s:
            lines = [ln for ln in s.iter_lines() if ln]
        assert '"error"' in lines[-2] and lines[-1] == "data: [DONE]"
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 10})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 10
        assert httpx.get(f"{url}/health").json()["model_loaded"] is True


def test_a_foreign_host_header_is_refused(server):
    url, _ = server
    assert httpx.get(f"{url}/v1/models", headers={"host": "evil.example:80"}).status_code == 400
    assert httpx.get(f"{url}/v1/models", headers={"host": "127.evil.example"}).status_code == 400
    assert httpx.get(f"{url}/v1/models", headers={"host": "localhost:1"}).status_code == 200


def test_the_api_key_guards_everything_but_health(run_dir):
    with serving(run_dir, api_key="s3cret") as (url, _):
        assert httpx.get(f"{url}/health").status_code == 200
        for path in ("/v1/models", "/", "/static/playground.js"):
            r = httpx.get(f"{url}{path}")
            assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"], path
        posts = (("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", {"messages": USER}))
        for path, body in posts:
            r = httpx.post(f"{url}{path}", json=body, headers={"authorization": "Bearer nope"})
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"], path
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").completions.create(model="tiny", prompt="x", max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").chat.completions.create(model="tiny", messages=USER, max_tokens=2)
        out = client(url, "s3cret").completions.create(model="tiny", prompt="x", max_tokens=2)
        assert out.choices[0].finish_reason in ("stop", "length")
        basic = base64.b64encode(b"me:s3cret").decode()  # what a browser sends after asking
        assert httpx.get(f"{url}/", headers={"authorization": f"Basic {basic}"}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(run_dir, monkeypatch):
    with serving(run_dir, max_batch=1, max_queue=1) as (url, svc):
        slow_down(svc, monkeypatch)
        monkeypatch.setattr(svc.sched.engine, "special", frozenset())
        results: list[httpx.Response] = []

        def go() -> None:
            results.append(
                httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 40}, timeout=30)
            )

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
        busy = next(r for r in results if r.status_code == 503)
        assert int(busy.headers["retry-after"]) >= 1 and "queue is full" in busy.json()["error"]["message"]


def test_requests_time_out(run_dir, monkeypatch):
    with serving(run_dir, max_batch=1, timeout=0.5) as (url, svc):
        monkeypatch.setattr(svc.sched.engine, "special", frozenset())
        slow_down(svc, monkeypatch, 0.03)
        body = {"prompt": "x", "max_tokens": 200, "n": 2}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=30).json()
        first, second = r["choices"]  # one slot: the second choice waited past the deadline
        assert first["stop_rule"] == second["stop_rule"] == "timeout" and first["finish_reason"] == "length"
        assert 0 < r["usage"]["completion_tokens"] < 200 and second["text"] == ""

        slow_down(svc, monkeypatch, 0.8)  # a stalled model: a waiting request gives up with 503
        results: dict[str, httpx.Response] = {}

        def go(name: str) -> None:
            results[name] = httpx.post(f"{url}/v1/completions", json={**body, "n": 1}, timeout=30)

        running = threading.Thread(target=go, args=("running",))
        running.start()
        time.sleep(0.1)
        go("waiting")
        running.join()
        assert results["running"].json()["choices"][0]["stop_rule"] == "timeout"
        assert results["waiting"].status_code == 503 and int(results["waiting"].headers["retry-after"]) >= 1
        assert "timed out" in results["waiting"].json()["error"]["message"]


def test_a_client_that_disconnects_stops_its_generation(run_dir, monkeypatch):
    with serving(run_dir) as (url, svc):
        slow_down(svc, monkeypatch)
        monkeypatch.setattr(svc.sched.engine, "special", frozenset())
        stats = svc.sched.stats
        body = {"prompt": "def f(x):", "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
        assert any(ln.startswith("data: {") for ln in got)
        assert wait_for(lambda: stats["cancelled"] == 1 and svc.sched.active == 0, 3)
        assert stats["tokens"] < 100  # it stopped long before its 200 tokens
        with pytest.raises(httpx.ReadTimeout):  # a plain request whose client gives up
            httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=0.5)
        assert wait_for(lambda: stats["cancelled"] == 2 and svc.sched.active == 0, 3)
        assert stats["completed"] == 0 and httpx.get(f"{url}/health").json()["active"] == 0


def test_long_prompts_keep_their_end_and_the_suffix(server, tokenizer):
    url, _ = server
    prompt = "".join(corpus_texts(2)) * 3  # many times the 256-token context
    r = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 0, "echo": True})
    kept = r.json()["choices"][0]["text"]  # max_tokens 0 with echo: just the prompt the model saw
    assert r.status_code == 200 and len(kept) > 200 and prompt.endswith(kept) and kept != prompt
    r = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 16})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] <= BLOCK - 16
    suffix = "\n    return total\n"
    r = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "suffix": suffix, "max_tokens": 16})
    ids = encode_prompt(tokenizer, Prompt(prompt, suffix), prompt_room(BLOCK, 16)).ids
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(ids)
    assert tokenizer.decode(ids).endswith(suffix + "<|fim_middle|>")


def test_max_tokens_and_prompt_size_are_capped_by_the_server(run_dir):
    with serving(run_dir, max_tokens=4, max_prompt_chars=50) as (url, _):
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 100, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x" * 51})
        assert r.status_code == 400 and "50" in r.json()["error"]["message"]


def test_the_playground_is_served_from_the_package(server):
    url, _ = server
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and 'id="generate"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("playground.js", "playground.css"):
        r = httpx.get(f"{url}/static/{name}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    assert "http" not in page.text  # no CDN: no absolute URL at all


def test_the_start_line_says_who_can_use_the_server():
    from codelm.serve.server import access_note

    assert access_note("k", "0.0.0.0") == "API key required"
    assert access_note(None, "127.0.0.1") == access_note(None, "::1") == "no API key"
    assert "anyone who reaches this port" in access_note(None, "0.0.0.0")
    assert "anyone who reaches this port" in access_note(None, "192.168.1.5")


def test_cli_serve_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    with socket.socket() as taken, monkeypatch.context() as m:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        m.setattr(
            "codelm.generate.generator.load_run", lambda *a: pytest.fail("loaded before the port was checked")
        )
        assert main(["serve", str(run_dir), "--port", str(taken.getsockname()[1])]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("codelm: error:") for e in errors)
    assert "cannot listen" in errors[1]
    seen = {}
    monkeypatch.setattr("codelm.serve.serve", lambda run, cfg, device, weights: seen.update(cfg=cfg))
    monkeypatch.setenv("CODELM_API_KEY", "from-env")
    assert main(["serve", str(run_dir), "--max-batch", "1"]) == 0
    assert seen["cfg"].api_key == "from-env" and seen["cfg"].max_batch == 1
    assert seen["cfg"].host == "127.0.0.1"


def test_no_serve_module_touches_the_models_layers():
    """The server decodes only through generate's engine: no attention, RoPE or layer of
    the model is reached from codelm/serve (read with `ast`, so a new module counts too)."""
    import ast

    inner = {"blocks", "attn", "qkv", "rope_cos", "rope_sin", "wte", "wpe", "norm_f"}  # the model's parts
    root = Path(__file__).resolve().parent.parent / "codelm" / "serve"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in inner, f"{path.name}:{node.lineno} reaches model.{node.attr}"
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("codelm.model.transformer", "codelm.model.kv_cache")), (
                    f"{path.name}:{node.lineno} imports {node.module}"
                )


def test_the_scheduler_can_run_in_the_calling_thread(run_dir):
    """`codelm serve` runs the scheduler in its main thread (torch is faster there): `run`
    serves from the calling thread until `stop`, and is alive only meanwhile."""
    model, tok = load_run(str(run_dir))
    sched = Scheduler(model, tok, max_batch=2)
    seen: list[tuple[str, threading.Thread]] = []

    def sink(ev: Event) -> None:
        seen.append((ev.kind, threading.current_thread()))
        if ev.kind == "done":
            sched.stop()

    cfg = SamplingConfig(temperature=0, max_new_tokens=4, repetition_penalty=1.0, dry_multiplier=0.0)
    job = Job(tok.encode("def f(x):"), 4, cfg, sink)
    assert not sched.alive
    sched.run(on_start=lambda: sched.submit([job]))  # returns once the sink stops it
    assert not sched.alive
    assert [k for k, _ in seen][0] == "start" and seen[-1][0] == "done"
    assert {t for _, t in seen} == {threading.current_thread()}


def test_a_completion_can_end_at_the_full_context(run_dir, monkeypatch):
    """max_tokens beyond what the context leaves ends with stop_rule context_full (the
    engine's rule), not with a length cut at the room left."""
    with serving(run_dir, max_tokens=512) as (url, svc):
        monkeypatch.setattr(svc.sched.engine, "special", frozenset())  # no early end of text
        body = {"prompt": list(range(5, 205)), "max_tokens": 500, "temperature": 0}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    kept = BLOCK - BLOCK // 2  # the prompt keeps its end, leaving half the context
    assert r["choices"][0]["stop_rule"] == "context_full"
    assert r["usage"] == {
        "prompt_tokens": kept,
        "completion_tokens": BLOCK - kept + 1,
        "total_tokens": BLOCK + 1,
        "prompt_tokens_details": {"cached_tokens": 0},
    }

"""Imported instruct models' chat templates (codelm/tokenizer/chat.py): rendered as transformers
renders them, kept through import, fine-tuning and export, and used to ask an instruction: a
tiny model taught pairs in the template's frame answers in it, and stops at the fence's close."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from codelm.data.dataset import make_row, write_data
from codelm.generate.config import SamplingConfig
from codelm.generate.generator import complete, load_run
from codelm.generate.prompts import Prompt, encode_prompt, fenced
from codelm.generate.stopping import FenceEnd, StopConfig, build_rules
from codelm.interop.hf import export_hf, import_hf
from codelm.tokenizer import CodeTokenizer
from codelm.tokenizer.chat import CHAT_FILE, FENCE, read_hf
from tests.test_interop import QWEN, SPM, TEXT, make_hf

transformers = pytest.importorskip("transformers")

CHATML = (
    "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{% else %}{{ '<|im_start|>system\\nYou write Python.<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# DeepSeek-Coder-Instruct's shape: the document start, trimmed messages, the end token after an
# answer, `{% generation %}`, `raise_exception`, and block tags that trim_blocks must clean up.
INSTRUCT = """{{ bos_token }}{% for m in messages %}
{% if m['role'] == 'user' %}
### Instruction:
{{ m['content'] | trim }}
{% elif m['role'] == 'assistant' %}
### Response:
{% generation %}{{ m['content'] }}{% endgeneration %}
{{ eos_token }}
{% else %}
{{ raise_exception('only user and assistant messages') }}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
### Response:
{% endif %}"""
IM = ["<|im_start|>", "<|im_end|>"]
TEMPLATES = {"chatml": (CHATML, "qwen2", QWEN[0] + IM), "instruct": (INSTRUCT, "llama", SPM[0])}
ASK = "Add a and b."
CODE = "def add(a, b):\n    return a + b\n"


ROWS = 320  # embedding rows: the byte alphabet, the specials and a few merges


def write_tokenizer(path: Path, specials: list[str], bos: str | None = None) -> None:
    """A byte-level BPE with every byte, so that any text round-trips; with `bos`, documents
    start with that token (a post-processor, as Llama's tokenizer.json has)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator([*TEXT, CODE, ASK, FENCE] * 5, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 1)])
    tok.save(str(path / "tokenizer.json"))


def hf_folder(path: Path, name: str, **config) -> Path:
    """A tiny random HF model whose tokenizer_config.json holds the template `name`."""
    source, family, specials = TEMPLATES[name]
    make_hf(path, family, vocab_size=ROWS)
    write_tokenizer(path, specials)
    eos = "<|im_end|>" if name == "chatml" else "</s>"
    tokens = {"eos_token": eos} if name == "chatml" else {"bos_token": "<s>", "eos_token": eos}
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": source, **tokens, **config}))
    return path


def hf_tokenizer(folder: Path):
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_templates_render_and_encode_as_transformers_does(name, tmp_path):
    folder = hf_folder(tmp_path / "hf", name)
    chat, why = read_hf(folder)
    assert why is None and chat is not None
    theirs = hf_tokenizer(folder)
    turns = [{"role": "user", "content": ASK}, {"role": "assistant", "content": CODE}]
    for messages in (turns[:1], [*turns, {"role": "user", "content": "Now b - a."}]):
        for gen in (True, False):
            want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert chat.render(messages, add_generation_prompt=gen) == want
    tok = CodeTokenizer.load(folder / "tokenizer.json")
    tok.chat = chat
    ids = encode_prompt(tok, Prompt("def add(", instruction=ASK), 1000).ids
    text = theirs.apply_chat_template(turns[:1], tokenize=False, add_generation_prompt=True)
    assert text.count(ASK) == 1
    assert ids == theirs(text + FENCE + "def add(", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text + FENCE + "def add("


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_model_whose_documents_start_with_a_token_gets_it_once(name, tmp_path):
    """Whether the template writes `bos_token` itself (instruct) or not (chatml), the prompt and
    the training layout start with the document-start token exactly once."""
    from codelm.train.batches import tokenize_split

    folder = hf_folder(tmp_path / "hf", name)
    write_tokenizer(folder, SPM[0], bos="<s>")
    tok = CodeTokenizer.load(folder / "tokenizer.json")
    tok.chat, _ = read_hf(folder)
    assert tok.bos_id == 1 != tok.eot_id
    ids = encode_prompt(tok, Prompt("", instruction=ASK), 1000).ids
    assert ids[0] == 1 and ids.count(1) == 1
    with write_data(tmp_path / "data") as writer:
        writer.add("train", make_row(f"# {ASK}\n{CODE}", "p", "src", "pair", ASK, CODE))
        writer.finish({}, {})
    stream, mask = tokenize_split(tmp_path / "data", "train", tok, tmp_path / "t.bin")
    assert list(stream[: len(ids)]) == ids and list(stream).count(1) == 1
    assert list(stream[-1:]) == [tok.eot_id] and not any(mask[: len(ids)])


def test_the_answer_starts_where_the_templates_answers_start():
    """DeepSeek-Coder-Instruct's generation prompt ends `### Response:`, and its answers follow
    it after a newline: the fence goes after the newline, where the model was taught to write."""
    from codelm.tokenizer.chat import ChatTemplate

    user = "{{ '### Instruction:\\n' + m['content'] + '\\n' }}"
    answer = "{{ '### Response:\\n' + m['content'] + '\\n<|EOT|>\\n' }}"
    source = (
        f"{{% for m in messages %}}{{% if m['role'] == 'user' %}}{user}{{% else %}}{answer}{{% endif %}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '### Response:' }}{% endif %}"
    )
    chat = ChatTemplate(source)
    assert chat.render([{"role": "user", "content": ASK}]).endswith("### Response:")
    assert chat.frame.between == "\n### Response:\n" and chat.frame.after == "\n<|EOT|>\n"
    assert ChatTemplate(CHATML).frame.between == "<|im_end|>\n<|im_start|>assistant\n"  # already there
    # Qwen3's shape: a finished answer carries an empty think block, which the fence then follows
    qwen3 = CHATML.replace(
        "m['content'] + '<|im_end|>",
        "(m['role'] == 'assistant') * '<think>\\n\\n</think>\\n\\n' + m['content'] + '<|im_end|>",
    )
    assert ChatTemplate(qwen3).frame.between == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_a_long_instruction_keeps_its_end_and_the_frame_whole(tmp_path):
    folder = hf_folder(tmp_path / "hf", "chatml")
    tok = CodeTokenizer.load(folder / "tokenizer.json")
    tok.chat, _ = read_hf(folder)
    before, between, _ = tok.chat_ids
    long = " ".join(f"step {i}" for i in range(200)) + " " + ASK
    enc = encode_prompt(tok, Prompt("", instruction=long), 120)
    assert len(enc.ids) == 120 and enc.dropped > 0
    assert enc.ids[: len(before)] == before and enc.ids[len(enc.ids) - len(between) :] == between
    assert tok.decode(enc.ids[len(before) : len(enc.ids) - len(between)]).endswith(ASK)


def test_earlier_turns_go_in_as_turns_and_the_oldest_leave_first(tmp_path):
    folder = hf_folder(tmp_path / "hf", "chatml")
    tok = CodeTokenizer.load(folder / "tokenizer.json")
    tok.chat, _ = read_hf(folder)
    history = (("system", "Be brief."), ("user", "Write add."), ("assistant", FENCE + CODE + "```"))
    ids = encode_prompt(tok, Prompt("", instruction="Now b - a.", history=history), 1000).ids
    messages = [{"role": r, "content": t} for r, t in history] + [{"role": "user", "content": "Now b - a."}]
    text = hf_tokenizer(folder).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == text + FENCE and text.startswith("<|im_start|>system\nBe brief.")
    long = (("developer", "Be brief."), *[("user", f"Write f{i}.") for i in range(40)])
    enc = encode_prompt(tok, Prompt("", instruction="Now b - a.", history=long), 200)
    shown = tok.decode(enc.ids)
    assert len(enc.ids) <= 200 and enc.dropped > 0 and "Write f0." not in shown
    assert "system\nBe brief." in shown and "Write f39." in shown
    assert shown.endswith("Now b - a.<|im_end|>\n<|im_start|>assistant\n" + FENCE)


def test_import_keeps_the_template_and_export_gives_it_back(tmp_path, capsys):
    from codelm import cli

    hf_folder(tmp_path / "hf", "instruct")
    assert cli.main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert "parameters (F32), with its chat template -> " in capsys.readouterr().out
    assert (tmp_path / "run" / CHAT_FILE).is_file()
    _, tok = load_run(tmp_path / "run")
    assert tok.chat is not None and tok.uses_chat and tok.chat.tokens["bos_token"] == "<s>"
    assert fenced(tok, Prompt("", instruction=ASK)) and not fenced(tok, Prompt("def f():"))
    export_hf(tmp_path / "run", tmp_path / "out")
    messages = [{"role": "user", "content": ASK}]
    back = hf_tokenizer(tmp_path / "out").apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert back == tok.chat.render(messages) == f"<s>### Instruction:\n{ASK}\n### Response:\n"


def test_a_base_model_imports_without_its_familys_template_when_asked(tmp_path, capsys):
    """Qwen2.5's and Llama 3.2's base folders ship the family's chat template too."""
    from codelm import cli

    hf_folder(tmp_path / "hf", "chatml")
    argv = ["import", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--no-chat-template"]
    assert cli.main(argv) == 0
    assert "chat template" not in capsys.readouterr().out
    _, tok = load_run(tmp_path / "run")
    assert tok.chat is None and not (tmp_path / "run" / CHAT_FILE).exists()
    ids = encode_prompt(tok, Prompt("", instruction=ASK), 1000).ids
    assert tok.decode(ids).endswith(f"# {ASK}\n\n")  # the comment block base models read


@pytest.mark.parametrize(
    "config, why",
    [
        ({"chat_template": "{% for m in messages %}{{ m['content'] "}, "does not compile"),
        ({"chat_template": "{{ raise_exception('system messages only') }}"}, "system messages only"),
        ({"chat_template": "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"}, "as written"),
    ],
)
def test_a_template_codelm_cannot_use_is_left_out_with_a_note(config, why, tmp_path):
    hf_folder(tmp_path / "hf", "chatml", **config)
    done = import_hf(tmp_path / "hf", tmp_path / "run")
    assert any(why in note and "chat template left out" in note for note in done.notes)
    assert not done.chat_template
    assert not (tmp_path / "run" / CHAT_FILE).exists()
    assert load_run(tmp_path / "run")[1].chat is None


def test_named_templates_a_jinja_file_and_older_token_maps_are_read(tmp_path):
    folder = hf_folder(tmp_path / "hf", "chatml")
    named = [{"name": "tool_use", "template": "{{ 1/0 }}"}, {"name": "default", "template": CHATML}]
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert read_hf(folder)[0].source == CHATML
    (folder / "chat_template.jinja").write_text(INSTRUCT)
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": {"content": "<s>"}}))
    chat = read_hf(folder)[0]
    assert chat.source == INSTRUCT and chat.render([{"role": "user", "content": ASK}]).startswith("<s>###")


def test_the_fence_close_ends_the_code_outside_strings_only():
    rule = FenceEnd("")
    assert rule.check(CODE + "```\nThis adds.") == len(CODE)
    assert rule.check("```\n") == 0
    doc = 'X = """\n```\n"""\n'
    assert rule.check(doc) is None and rule.check(doc + "```") == len(doc)
    assert rule.check("x = 1  # ```\n") is None
    assert rule.safe(CODE + "``") == len(CODE) and rule.safe(CODE + "x") == len(CODE) + 1
    assert FenceEnd("def f(").check("```\n") is None  # the prompt's own line goes on
    tok_decode = str
    rules = build_rules(StopConfig(), "", tok_decode, fenced=True)
    assert isinstance(rules[0], FenceEnd)
    assert not any(isinstance(r, FenceEnd) for r in build_rules(StopConfig(), "", tok_decode))


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """An imported ChatML model fine-tuned on one pair, laid out in its template."""
    from codelm.train.config import TrainConfig
    from codelm.train.loop import train

    tmp = tmp_path_factory.mktemp("chat")
    hf_folder(tmp / "hf", "chatml")
    import_hf(tmp / "hf", tmp / "run")
    with write_data(tmp / "data") as writer:
        for split in ("train", "val"):
            for i in range(8):
                writer.add(split, make_row(f"# {ASK}\n{CODE}", f"p#{i}", "src", "pair", ASK, CODE))
        writer.finish({}, {})
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=120, epochs=0, batch_size=4, seq_len=64, evals=1, dtype="fp32",
                      warmup_steps=0, lr=3e-3)  # fmt: skip
    train(tmp / "data", tmp / "ft", cfg, init_from=tmp / "run")
    return tmp / "ft"


def test_fine_tuning_trains_in_the_frame_and_the_answer_stops_at_the_fence(taught):
    from codelm.train.batches import assemble, document_layout

    model, tok = load_run(taught)
    assert tok.uses_chat  # the fine-tuned run kept its base's template
    row = make_row(f"# {ASK}\n{CODE}", "p", "src", "pair", ASK, CODE)
    before, between, after = tok.chat_ids
    lay = document_layout(row, None, 0.0, False, (before, between, [*after, tok.eot_id]))
    ids, mask = assemble(lay, [tok.encode(p) for p in lay.pieces], tok)
    code = tok.encode(CODE + "```")
    assert ids == [*before, *tok.encode(ASK), *between, *code, *after, tok.eot_id]
    assert mask == [0] * (len(ids) - len(code) - len(after) - 1) + [1] * (len(code) + len(after) + 1)
    greedy = SamplingConfig(temperature=0, max_new_tokens=40)
    done = complete(model, tok, Prompt("", instruction=ASK), greedy)
    assert (done.text, done.stop_reason) == (CODE, "fence")


def test_the_chat_route_answers_an_imported_instruct_model_in_its_template(taught):
    openai = pytest.importorskip("openai")
    from codelm.serve import BackgroundServer, ServeConfig, create_app

    model, tok = load_run(taught)
    with BackgroundServer(create_app(model, tok, ServeConfig(), name="chat")) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        out = api.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": ASK}], temperature=0, max_tokens=40
        )
        stream = api.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": ASK}],
            temperature=0,
            max_tokens=40,
            stream=True,
        )
        chunks = [c.choices[0] for c in stream if c.choices]
    assert out.choices[0].message.content == FENCE + CODE + "```"
    assert out.choices[0].finish_reason == "stop"
    # Streamed, the fence's first backquotes are held back until the rule can tell: never shown twice.
    assert "".join(c.delta.content or "" for c in chunks) == FENCE + CODE + "```"
    assert chunks[-1].finish_reason == "stop"
    asked = encode_prompt(tok, Prompt("", instruction=ASK), 1000).ids
    assert out.usage.prompt_tokens == len(asked)
    turns = [
        ("system", "Be brief."),
        ("user", "Write sub."),
        ("assistant", "def sub(a, b): ..."),
        ("user", ASK),
    ]
    with BackgroundServer(create_app(model, tok, ServeConfig(), name="chat")) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        messages = [{"role": r, "content": t} for r, t in turns]
        out = api.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=8)
    # The tiny model's context (128, 8 kept for the answer) leaves out the oldest exchange, the
    # user's message with its answer, so that the turns still alternate; the system's stays.
    enc = encode_prompt(tok, Prompt("", instruction=ASK, history=tuple(turns[:-1])), 120)
    assert out.usage.prompt_tokens == len(enc.ids) and enc.dropped > 0
    shown = tok.decode(enc.ids)
    assert "Be brief." in shown and "Write sub." not in shown and "def sub" not in shown


def test_the_gguf_file_carries_the_template_for_llama_cpp(tmp_path):
    import gguf

    from codelm.interop.gguf import export_gguf

    hf_folder(tmp_path / "hf", "chatml")
    import_hf(tmp_path / "hf", tmp_path / "run")
    export_gguf(tmp_path / "run", tmp_path / "m.gguf", "f32")
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.chat_template"].contents() == CHATML


@pytest.mark.parametrize("damage", ["{not json", '{"chat_template": "{% if %}"}'])
def test_a_damaged_chat_template_in_a_run_is_a_one_line_error(damage, tmp_path, capsys):
    from codelm import cli

    hf_folder(tmp_path / "hf", "chatml")
    import_hf(tmp_path / "hf", tmp_path / "run")
    (tmp_path / "run" / CHAT_FILE).write_text(damage)
    capsys.readouterr()
    assert cli.main(["generate", str(tmp_path / "run"), "--instruction", ASK, ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codelm: error: ") and "chat template" in err and err.count("\n") == 1, err

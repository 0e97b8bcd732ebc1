"""The notebook stage: live context, candidate checks, and `%%codelm` in IPython's
InteractiveShell with a tiny model trained here to answer two requests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pd = pytest.importorskip("pandas", reason="the notebook extra (pandas) is not installed")
pytest.importorskip("IPython", reason="the notebook extra (IPython) is not installed")

import torch  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from codelm.cli import main  # noqa: E402
from codelm.fsutil import atomic_write_json  # noqa: E402
from codelm.model import ModelConfig, Transformer  # noqa: E402
from codelm.model.io import save_weights  # noqa: E402
from codelm.notebook.assist import NotebookConfig, prompt_parts, repair_request, suggest  # noqa: E402
from codelm.notebook.backend import Candidate  # noqa: E402
from codelm.notebook.bench import sandbox_sees_pandas  # noqa: E402
from codelm.notebook.checks import check  # noqa: E402
from codelm.notebook.context import assemble, describe, instruction, rank, render_frame  # noqa: E402
from codelm.tokenizer.roles import CODE, INSTRUCTION  # noqa: E402

SETUP = (
    "import pandas as pd\n"
    "sales = pd.DataFrame({'region': ['north', 'south', 'north'], 'amount_usd': [1.5, 2.0, 3.5]})\n"
)
REQUEST = "Total amount by region in sales"
ANSWER = "sales.groupby('region')['amount_usd'].sum()\n"
BROKEN = "Count the sales rows"  # trained to answer with code that raises, then to repair it
RAISES = "int(sales['region'].iloc[0])\n"
REPAIRED = "len(sales)\n"
GUESSED = "sales.groupby('region')['amount'].sum()\n"  # what a model without the schema might write


def _namespace() -> dict:
    ns: dict = {}
    exec(SETUP, ns)  # our own fixture code, not a model's
    return {k: v for k, v in ns.items() if k != "__builtins__"}


def _count(text: str) -> int:
    return len(text) // 3 + 1


# --- live context ---------------------------------------------------------------


def test_context_holds_columns_dtypes_nulls_and_head():
    ns = _namespace()
    ns["sales"].loc[1, "amount_usd"] = float("nan")
    ctx = describe(ns)
    assert ctx.imports == ["import pandas as pd"]
    [frame] = ctx.frames
    assert frame.rows == 3
    assert frame.columns[1] == ("amount_usd", "float64", 1)
    text = render_frame(frame)
    assert text.splitlines()[0] == "# sales: DataFrame, 3 rows x 2 columns"
    assert "amount_usd  float64  1 null  e.g. 1.5, nan, 3.5" in text
    assert "'north', 'south', 'north'" in text  # strings keep their quotes


def test_long_values_are_cut_and_series_are_described():
    ns = {"notes": pd.Series(["x" * 100, "short"], name="note")}
    [frame] = describe(ns).frames
    assert frame.kind == "Series" and frame.columns[0][0] == "note"
    assert frame.head[0][0].endswith("...") and len(frame.head[0][0]) == 24


def test_a_wide_frame_lists_its_first_64_columns_and_counts_the_rest():
    [frame] = describe({"wide": pd.DataFrame({f"c{i}": [i] for i in range(100)})}).frames
    assert frame.ncols == 100 and len(frame.columns) == 64
    text = render_frame(frame)
    assert text.splitlines()[0] == "# wide: DataFrame, 1 rows x 100 columns"
    assert text.splitlines()[-1] == "#   ... and 36 more columns" and "c63" in text and "c64" not in text


def test_the_request_s_frames_come_first_and_a_frame_that_does_not_fit_is_left_out():
    ns = _namespace()
    ns["weather"] = pd.DataFrame({"day": [1, 2], "temp_c": [3.0, 4.0]})
    ns["wide"] = pd.DataFrame({f"col_{i}": [i] for i in range(60)})
    ctx = describe(ns)
    assert [f.name for f in rank(ctx.frames, "Plot temp_c by day")][0] == "weather"
    assert [f.name for f in rank(ctx.frames, "the mean temperature in the weather data")][0] == "weather"
    block, left_out = assemble(ctx, "Plot temp_c by day", _count, schema_tokens=120)
    assert left_out == ["wide"]
    assert "# weather: DataFrame" in block and "temp_c" in block and "col_7" not in block
    assert block.index("# weather") < block.index("# sales")
    assert block.splitlines()[0] == "import pandas as pd"
    assert block.splitlines()[-1] == "# other DataFrames: wide"


def test_the_code_layout_is_python_that_builds_the_first_rows():
    ns = _namespace()
    ns["sales"].loc[1, "amount_usd"] = float("nan")
    ns["regions"] = ns["sales"]["region"]
    frame, series = describe(ns).frames
    ran: dict = {"pd": pd}
    exec(render_frame(frame, "code") + "\n" + render_frame(series, "code"), ran)  # our rendering
    head = ns["sales"].head(3)
    assert ran["sales"]["region"].tolist() == head["region"].tolist()
    assert ran["sales"]["amount_usd"].isna().tolist() == [False, True, False]
    assert ran["regions"].tolist() == head["region"].tolist() and ran["regions"].name == "region"
    assert "'amount_usd': [1.5, None, 3.5],  # float64, 1 null" in render_frame(frame, "code")


def test_the_csv_layout_is_pandas_ai_s_head_without_dtypes():
    [frame] = describe(_namespace()).frames
    assert render_frame(frame, "csv").splitlines() == [
        "# sales: 3 rows x 2 columns",
        "# region,amount_usd",
        "# north,1.5",
        "# south,2.0",
        "# north,3.5",
    ]


def test_recent_cells_go_before_the_frames_and_their_imports_are_not_repeated():
    ctx = describe(_namespace())
    ctx.cells = ["import pandas as pd\nx = 1", "y = 2"]
    block, _ = assemble(ctx, REQUEST, _count)
    assert block.startswith("import pandas as pd\nx = 1\ny = 2\n# sales: DataFrame")
    assert block.count("import pandas as pd") == 1


# --- candidate checks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("sales.groupby('region'", "does not parse"),
        ("def f(a, a):\n    return a\n", "does not compile"),
        ("data.groupby('region').sum()", "uses undefined name 'data'"),
        ("sales['amount']", "sales has no column 'amount'"),
        ("sales[['region', 'price']]", "sales has no column 'price'"),
        ("sales.amount.sum()", "sales has no column or attribute 'amount'"),
        ("sales.groupby('area')['amount_usd'].sum()", "sales has no column 'area'"),
        ("sales.sort_values(by='amount')", "sales has no column 'amount'"),
        ("sales = pd.DataFrame({'region': ['north'], 'amount_usd': [1.5]})", "replaces the user's DataFrame"),
        ("# nothing but a comment\n", "is empty"),
        ("def average(df):\n    return df.mean()\n", "only defines average and does nothing with it"),
        ("df = pd.DataFrame({'a': [1]})\ndf.sum()", "does not use sales, which the request names"),
    ],
)
def test_checks_reject_each_bad_candidate_with_its_reason(code, reason):
    why = check(code, _namespace(), REQUEST)
    assert why is not None and why.startswith(reason), why


@pytest.mark.parametrize(
    "code",
    [
        ANSWER,
        "sales.amount_usd.mean()",
        "sales['total'] = sales['amount_usd'] * 2\nsales['total'].max()",
        "sales = sales.assign(double=sales.amount_usd * 2)\nsales['double']",
        "sales = sales.dropna()",
        "import numpy as np\nnp.log(sales['amount_usd'])",
        "for name, group in sales.groupby('region'):\n    print(name, len(group))",
        "top = sales.nlargest(1, 'amount_usd')\ntop",
    ],
)
def test_checks_pass_good_candidates(code):
    assert check(code, _namespace(), REQUEST) is None


def test_multiindex_columns_are_not_checked_by_name():
    ns = _namespace()
    ns["wide"] = ns["sales"].pivot_table(index="region", values="amount_usd", aggfunc=["sum", "mean"])
    assert check("wide['sum']", ns, "the sums in wide") is None


def test_a_definition_alone_answers_a_request_for_a_function():
    code = "def total(df):\n    return df['amount_usd'].sum()\n"
    assert check(code, _namespace(), "Write a function that sums the amounts") is None
    assert check(code + "total(sales)\n", _namespace(), REQUEST) is None


# --- a tiny model that learned two requests --------------------------------------


def _prompt_ids(tok, instruction_text: str) -> list[int]:
    return [tok.bos_id, tok.special[INSTRUCTION], *tok.encode(instruction_text), tok.special[CODE]]


def _new_shell(run) -> InteractiveShell:
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    # fp32: int8 would blur what the model learned by heart
    for cell in ("%load_ext codelm.notebook", SETUP, f"%codelm_model {run} --weights fp32"):
        sh.run_cell(cell, store_history=True)  # as a kernel runs them: SETUP is a recent cell
    sh.rl_next_input = None
    return sh


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory, tokenizer):
    """A run that answers REQUEST with ANSWER and BROKEN with RAISES, then with REPAIRED
    once the request carries RAISES' error: the prompts are the magic's own, as a shell
    made by `_new_shell` lays them out, learned by heart. For the benchmark's prompts
    (no recent cells), REQUEST with the context gives ANSWER, and alone a guessed column."""
    root = tmp_path_factory.mktemp("notebook_run")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=64, block_size=512)
    model = Transformer(cfg)
    atomic_write_json(root / "config.json", {"model": model.cfg.to_dict()})
    tokenizer.save(root / "tokenizer.json")
    save_weights(model, root / "model.safetensors")
    magics = _new_shell(root).magics_manager.registry["CodelmMagics"]
    backend, ctx = magics.backend, magics._context(NotebookConfig())
    InteractiveShell.clear_instance()
    error = "ValueError: invalid literal for int() with base 10: 'north'"
    repair = repair_request(BROKEN, RAISES, error)
    bench_ctx = describe(_namespace())
    pairs = [(ctx, REQUEST, ANSWER), (ctx, BROKEN, RAISES), (ctx, repair, REPAIRED)]
    pairs += [(bench_ctx, REQUEST, ANSWER), (None, REQUEST, GUESSED)]
    seqs = []
    for context_of, request, code in pairs:
        context, _ = prompt_parts(backend, context_of, request, NotebookConfig())
        ids = _prompt_ids(tokenizer, instruction(context, request))
        assert len(ids) <= 512 - 256  # whole: the magic keeps 256 tokens for the cell
        seqs.append((ids, [*tokenizer.encode(code), tokenizer.eot_id]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        loss = 0.0
        for prompt, code in seqs:
            x = torch.tensor([prompt + code[:-1]])
            logits = model(x)[0, len(prompt) - 1 :]
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.tensor(code))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():  # learned by heart: each answer's every token wins by a wide margin
        for prompt, code in seqs:
            logits = model(torch.tensor([prompt + code[:-1]]))[0, len(prompt) - 1 :]
            top2 = logits.topk(2, dim=-1)
            assert (top2.indices[:, 0] == torch.tensor(code)).all()
            assert (top2.values[:, 0] - top2.values[:, 1]).min() > 2.0
    save_weights(model, root / "model.safetensors")
    return root


@pytest.fixture
def shell(notebook_run):
    yield _new_shell(notebook_run)
    InteractiveShell.clear_instance()


def test_the_learned_answer_goes_into_the_next_cell_without_running(shell, capsys):
    shell.run_cell(f"%%codelm --temperature 0 --n 2\n{REQUEST}")
    assert shell.rl_next_input == ANSWER
    out = capsys.readouterr()
    assert "2 candidates, 2 passed the checks" in out.err
    assert "the suggestion is in the next cell" in out.err
    assert "5.0" not in out.out  # north's total: it was not computed


def test_run_executes_the_suggestion_in_the_user_namespace(shell, capsys):
    shell.run_cell(f"%%codelm --run --temperature 0 --n 2\n{REQUEST}")
    out = capsys.readouterr()
    assert shell.rl_next_input == ANSWER
    assert "running the suggestion" in out.err
    assert "north    5.0" in out.out and "south    2.0" in out.out


def test_run_repairs_once_with_the_error_in_the_request(shell, capsys):
    shell.run_cell(f"%%codelm --run --temperature 0 --n 1\n{BROKEN}")
    out = capsys.readouterr()
    assert "it raised ValueError: invalid literal for int() with base 10: 'north'" in out.err
    assert "ValueError" in out.out  # IPython's own traceback, shown to the user
    assert shell.rl_next_input == REPAIRED
    assert out.out.rstrip().endswith("3")  # len(sales), from the repaired cell


class Canned:
    """A backend that answers every request with the same cells, likeliest first."""

    name, context_tokens = "canned", 1024

    def __init__(self, *cells: str):
        self.cells = cells

    def count(self, text):
        return _count(text)

    def sample(self, context, request, n, cfg, max_lines):
        return [Candidate(c, -0.1 - 0.4 * i, "end_of_text") for i, c in enumerate(self.cells)]


def test_suggest_keeps_the_most_likely_survivor_and_reports_the_rejected():
    canned = Canned("sales['amount'].sum()\n", "sales['amount_usd'].sum()\n", "sales['amount_usd'].mean()\n")

    ns = _namespace()
    s = suggest(canned, ns, describe(ns), REQUEST)
    assert s.best.code == "sales['amount_usd'].sum()\n"
    assert s.rejected[0][1] == "sales has no column 'amount'"
    assert s.summary() == "3 candidates, 2 passed the checks; rejected: sales has no column 'amount'"


def test_when_nothing_survives_the_best_rejected_is_shown_as_a_comment(shell, capsys):
    # A request it never learned: what it writes does not survive the checks.
    shell.run_cell("%%codelm --temperature 0 --n 1\nPlot the rainfall of each month")
    out = capsys.readouterr()
    assert shell.rl_next_input is None
    assert "1 candidates, 0 passed the checks; rejected: " in out.err
    shown = out.out.splitlines()
    assert shown[0].startswith("# the most likely candidate, rejected: ") and len(shown) > 1
    assert all(line.startswith("#") for line in shown)


def test_show_prompt_prints_the_context_and_the_request(shell, capsys):
    shell.run_cell(f"%%codelm --show-prompt\n{REQUEST}")
    text = capsys.readouterr().out
    assert "# sales: DataFrame, 3 rows x 2 columns" in text and text.rstrip().endswith(REQUEST)
    shell.run_cell(f"%%codelm --show-prompt --no-context\n{REQUEST}")
    assert capsys.readouterr().out.strip() == REQUEST


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%codelm_model /nonexistent/run", "codelm: not a run directory"),
        ("%codelm_model", "codelm: using "),
        ("%%codelm --n zero\nx", "codelm: %%codelm: argument --n: invalid int value"),
        ("%%codelm\n   \n", "codelm: empty request"),
    ],
)
def test_bad_input_is_one_line_never_a_traceback(shell, capsys, cell, message):
    shell.run_cell(cell)
    out = capsys.readouterr()
    assert message in out.err and "Traceback" not in out.err + out.out


def test_no_model_is_one_line(monkeypatch, capsys):
    monkeypatch.delenv("CODELM_RUN", raising=False)
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    sh.run_cell("%load_ext codelm.notebook")
    sh.run_cell(f"%%codelm\n{REQUEST}")
    InteractiveShell.clear_instance()
    assert "codelm: no model: %codelm_model RUN, or set CODELM_RUN" in capsys.readouterr().err


@pytest.mark.skipif(not sandbox_sees_pandas(), reason="the sandbox cannot see this venv's site-packages")
def test_the_benchmark_scores_both_prompts_and_the_context_wins(notebook_run, tmp_path):
    problem = {
        "task_id": "nb/0",
        "setup": SETUP,
        "instruction": REQUEST,
        "test": "def check(ns, result):\n    assert float(result['north']) == 5.0\n",
    }
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(problem) + "\n")
    out = tmp_path / "report.json"
    args = ["eval", str(notebook_run), "--problems", str(path), "--samples", "2", "--temperature", "0"]
    main([*args, "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["context"]["pass@1"] == 1.0 and report["context"]["pick"] == 1.0
    assert report["request_only"]["pass@1"] == 0.0
    # The guess reads a column `sales` lacks: the checks drop it, so the magic inserts nothing.
    assert report["request_only"]["pick"] == 0.0
    assert report["request_only"]["problems"][0]["c"] == 0


def test_a_real_notebook_runs_the_magic_in_a_jupyter_kernel(notebook_run, tmp_path):
    """Jupyter's own client (nbclient) drives a real ipykernel through a notebook."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat (dev extra) is not installed")
    nbclient = pytest.importorskip("nbclient", reason="nbclient (dev extra) is not installed")
    cells = [
        "%load_ext codelm.notebook",
        SETUP,
        f"%codelm_model {notebook_run} --weights fp32",
        f"%%codelm --run --temperature 0 --n 2\n{REQUEST}",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    replies = {}
    client = nbclient.NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        on_cell_executed=lambda cell, cell_index, execute_reply: replies.update({cell_index: execute_reply}),
    )
    client.execute()
    outputs = nb.cells[3].outputs
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in outputs if "data" in o)
    assert "2 candidates, 2 passed the checks" in stderr and "running the suggestion" in stderr
    assert "north    5.0" in shown and "south    2.0" in shown  # it ran on the kernel's own `sales`
    assert not any(o.get("output_type") == "error" for cell in nb.cells for o in cell.outputs)
    payload = replies[3]["content"]["payload"]
    assert {"source": "set_next_input", "text": ANSWER, "replace": False} in payload


class _Server:
    """An OpenAI-style completions server on 127.0.0.1 that answers with canned choices and
    keeps each request body."""

    def __init__(self, owned_by: str, choices: list[dict]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                card = {"id": "m", "object": "model", "owned_by": owned_by, "max_model_len": 4096}
                self._send({"object": "list", "data": [card]})

            def do_POST(self):
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self._send({"object": "text_completion", "choices": choices})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _choice(text: str, logprobs: list[float] | None) -> dict:
    lp = {"token_logprobs": logprobs} if logprobs is not None else None
    return {"text": text, "index": 0, "logprobs": lp, "finish_reason": "stop"}


@pytest.mark.parametrize("owned_by", ["codelm", "llama.cpp"])
def test_a_completions_server_answers_through_the_same_checks(owned_by, capsys):
    server = _Server(owned_by, [_choice("sales['amount'].sum()", [-0.1]), _choice(ANSWER, [-0.4, -0.6])])
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    try:
        sh.run_cell("%load_ext codelm.notebook")
        sh.run_cell(SETUP)
        sh.run_cell(f"%codelm_model --server {server.url}/v1 --api-key k")
        sh.run_cell(f"%%codelm --n 2 --temperature 0.3\n{REQUEST}")
        assert sh.rl_next_input == ANSWER  # the likelier one reads a column `sales` lacks
    finally:
        InteractiveShell.clear_instance()
        server.close()
    assert (
        "2 candidates, 1 passed the checks; rejected: sales has no column 'amount'" in capsys.readouterr().err
    )
    [body] = server.bodies
    assert body["n"] == 2 and body["temperature"] == 0.3 and body["model"] == "m"
    if owned_by == "codelm":  # codelm serve lays out the instruction with its own tokens
        assert body["prompt"] == "" and body["instruction"].endswith(f"\n\n{REQUEST}")
        assert body["repetition_penalty"] == 1.1 and body["dry_multiplier"] == 0.8
        assert "# sales: DataFrame, 3 rows x 2 columns" in body["instruction"]
    else:  # any other server: the context as code, the request as comments, as base models read it
        assert "instruction" not in body and "dry_multiplier" not in body
        assert body["prompt"].endswith(f"# {REQUEST}\n\n") and "# sales: DataFrame" in body["prompt"]


def test_a_kernel_that_uses_a_server_never_loads_torch():
    """With `--server` the magic is a thin client: IPython in a fresh interpreter writes the
    cell through the server, and torch was never imported there."""
    server = _Server("codelm", [_choice(ANSWER, [-0.4])])
    script = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "sh = InteractiveShell.instance()\n"
        "sh.run_cell('%load_ext codelm.notebook')\n"
        f"sh.run_cell({SETUP!r})\n"
        f"sh.run_cell('%codelm_model --server {server.url}/v1')\n"
        f"sh.run_cell({'%%codelm --n 1' + chr(10) + REQUEST!r})\n"
        "print(repr(sh.rl_next_input), 'torch' in sys.modules)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == f"{ANSWER!r} False"


def test_an_unreachable_server_is_one_line(capsys):
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    sh.run_cell("%load_ext codelm.notebook")
    sh.run_cell("%codelm_model --server http://127.0.0.1:9")
    InteractiveShell.clear_instance()
    err = capsys.readouterr().err
    assert err.startswith("codelm: cannot reach a completions server at http://127.0.0.1:9")
    assert err.count("\n") == 1  # one line


def test_codelm_run_names_the_model_when_none_was_set(notebook_run, monkeypatch, capsys):
    monkeypatch.setenv("CODELM_RUN", str(notebook_run))
    InteractiveShell.clear_instance()
    sh = InteractiveShell.instance()
    sh.run_cell("%load_ext codelm.notebook")
    sh.run_cell(SETUP)
    sh.run_cell(f"%%codelm --show-prompt\n{REQUEST}")
    sh.run_cell("%codelm_model")
    InteractiveShell.clear_instance()
    out = capsys.readouterr()
    assert "# sales: DataFrame, 3 rows x 2 columns" in out.out
    assert f"codelm: using {notebook_run}" in out.err


def test_a_repair_is_checked_against_what_the_user_asked_not_the_failed_code():
    canned = Canned("len(other)\n")
    ns = _namespace()
    ns["other"] = pd.DataFrame({"x": [1, 2]})
    asked = "Count the rows of other"
    repair = repair_request(asked, "len(sales) + int('x')\n", "ValueError: invalid literal")
    assert suggest(canned, ns, describe(ns), repair).best is None  # `sales` is in the failed code
    assert suggest(canned, ns, describe(ns), repair, asked=asked).best.code == "len(other)\n"

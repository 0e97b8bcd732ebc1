"""The IPython magics: `%codelm_model` picks the model, `%%codelm` turns a request into a cell.

    %load_ext codelm.notebook
    %codelm_model RUN [--weights fp32]      # or: --server URL [--model NAME] [--api-key KEY]
    %%codelm [--run] [--n 8] [--show-prompt] [--temperature T] [--no-context]
    Plot the average price by neighborhood from the housing dataframe

Without `%codelm_model`, the run named by $CODELM_RUN is loaded at the first request.
By default the suggestion goes into the next cell (`set_next_input`), for the user to
read and run. `--run` also executes it in the user's namespace, as if the user ran that
cell: this is the one place where generated code runs outside the sandbox, because the
user asked for it and it must see their live data; the checks have passed by then. If
it raises, IPython shows the traceback and one repair is asked for, with the error in
the request. Bad input (no model, a folder that is not a run, an empty request, a bad
option) is one line in the cell's output, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import sys

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from codelm.errors import CodelmError
from codelm.notebook.assist import NotebookConfig, Suggestion, repair_request, show_prompt, suggest
from codelm.notebook.backend import RemoteModel
from codelm.notebook.context import Context, describe

DEFAULTS = NotebookConfig()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage and exit the kernel
        raise CodelmError(f"%{self.prog}: {message}")


def _model_parser() -> _Parser:
    p = _Parser(prog="codelm_model", add_help=False)
    p.add_argument("run", nargs="?", help="a run directory made by codelm train")
    p.add_argument("--server", help="an OpenAI-style completions server, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", help="the model name to ask the server for")
    p.add_argument("--api-key", default=os.environ.get("CODELM_API_KEY"))
    p.add_argument(
        "--weights", default="auto", choices=["auto", "fp32", "bf16", "int8"], help="auto: int8 on CPU"
    )
    return p


def _cell_parser() -> _Parser:
    p = _Parser(prog="%codelm", add_help=False)
    p.add_argument("--run", action="store_true", help="also execute the suggestion")
    p.add_argument("--n", type=int, default=DEFAULTS.n)
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--show-prompt", action="store_true", help="print the prompt, do not generate")
    p.add_argument("--no-context", action="store_true", help="send the request alone")
    return p


def _say(text: str) -> None:
    print(f"codelm: {text}", file=sys.stderr)


def _commented(code: str) -> str:
    return "\n".join(f"# {line}".rstrip() for line in code.rstrip("\n").splitlines())


def _local(run: str, weights: str = "auto"):
    """A run loaded in the kernel; torch is imported here, never for a server."""
    from codelm.notebook.local import LocalModel

    return LocalModel(run, weights)


@magics_class
class CodelmMagics(Magics):
    backend = None

    @line_magic
    def codelm_model(self, line: str) -> None:
        """Use a run directory, or a completions server, for `%%codelm`."""
        try:
            a = _model_parser().parse_args(shlex.split(line))
            if not a.run and not a.server:
                _say(f"using {self.backend.name}" if self.backend else "no model: %codelm_model RUN")
                return
            if a.run and a.server:
                raise CodelmError("give a run or --server, not both")
            if a.server:
                self.backend = RemoteModel(a.server, a.model, a.api_key)
            else:
                self.backend = _local(a.run, a.weights)
            _say(f"using {self.backend.name}")
        except (CodelmError, OSError, ValueError) as e:
            _say(str(e))

    @cell_magic
    def codelm(self, line: str, cell: str) -> None:
        """Write code for the request in this cell, with the live DataFrames as context."""
        try:
            a = _cell_parser().parse_args(shlex.split(line))
            cfg = NotebookConfig(n=a.n, temperature=a.temperature, seed=a.seed)
            if not cell.strip():
                raise CodelmError("empty request: write what the code should do below %%codelm")
            backend = self._backend()
            ctx = None if a.no_context else self._context(cfg)
            if a.show_prompt:
                print(show_prompt(backend, ctx, cell, cfg))
                return
            self._answer(backend, ctx, cell, cfg, a.run)
        except (CodelmError, OSError, ValueError) as e:
            _say(str(e))

    def _backend(self):
        if self.backend is None:
            run = os.environ.get("CODELM_RUN")
            if not run:
                raise CodelmError("no model: %codelm_model RUN, or set CODELM_RUN")
            self.backend = _local(run)
        return self.backend

    def _context(self, cfg: NotebookConfig) -> Context:
        ctx = describe(self.shell.user_ns)
        ctx.cells = self._recent_cells(cfg.history_cells)
        return ctx

    def _recent_cells(self, k: int) -> list[str]:
        """The last k cells before this one that are plain Python (no magics, no shell)."""
        cells = []
        for text in reversed(self.shell.history_manager.input_hist_raw[:-1]):
            if len(cells) >= k:
                break
            if not text.strip() or text.lstrip().startswith(("%", "!")):
                continue
            try:
                ast.parse(text)
            except SyntaxError:
                continue
            cells.insert(0, text)
        return cells

    def _answer(self, backend, ctx: Context | None, request: str, cfg: NotebookConfig, run: bool) -> None:
        ns = self.shell.user_ns
        s = suggest(backend, ns, ctx, request, cfg)
        if not self._offer(s):
            return
        if not run:
            _say("the suggestion is in the next cell")
            return
        error = self._execute(s.best.code)
        if error is None:
            return
        _say(f"it raised {error}; asking once more with the error")
        again = suggest(backend, ns, ctx, repair_request(request, s.best.code, error), cfg, asked=request)
        if self._offer(again) and (error := self._execute(again.best.code)) is not None:
            _say(f"the repaired code raised {error} too")

    def _offer(self, s: Suggestion) -> bool:
        """Report the candidates; put the winner into the next cell. False: none survived."""
        _say(s.summary())
        if s.left_out:
            _say(f"DataFrames left out of the prompt (no room): {', '.join(s.left_out)}")
        if s.best is None:
            if s.rejected:
                c, why = s.rejected[0]
                print(f"# the most likely candidate, rejected: {why}\n{_commented(c.code)}")
            return False
        self.shell.set_next_input(s.best.code, replace=False)
        return True

    def _execute(self, code: str) -> str | None:
        """Run `code` as a cell in the user's namespace; None, or its error in one line."""
        _say("running the suggestion (it is also in the next cell)")
        result = self.shell.run_cell(code, store_history=False)
        err = result.error_in_exec or result.error_before_exec
        return None if err is None else f"{type(err).__name__}: {err}".splitlines()[0]

"""The notebook stage: `%%codelm` in IPython and Jupyter, natural language to pandas and
matplotlib code with the user's live DataFrames as context.

    %load_ext codelm.notebook

loads the magics (magic.py). The pieces below them work without IPython: the live
context (context.py), the candidate checks (checks.py), the backends (backend.py),
one request start to end (assist.py), and the notebook benchmark (problems.py,
bench.py). IPython is the `notebook` extra: `pip install codelm[notebook]`.
"""


def load_ipython_extension(ipython) -> None:
    """Called by `%load_ext codelm.notebook`."""
    from codelm.notebook.magic import CodelmMagics

    ipython.register_magics(CodelmMagics)

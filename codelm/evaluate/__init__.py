"""Evaluation: how good a model is, measured several ways.

- `sandbox`: runs untrusted generated programs in a locked-down process.
- `passk`: HumanEval-format problems, scoring completions, unbiased pass@k.
- `problems/codelm_basic.jsonl`: our own benchmark, the default for `codelm eval`.
- `intrinsic`: loss, perplexity, bits per byte, top-1/top-5 accuracy on held-out code.
- `ngram`, `line_completion`: the editor's task against a corpus n-gram baseline.
- `report`: `codelm eval`, all of the above in one table and JSON report.

Submodules are imported where used, so importing this package stays cheap.
"""

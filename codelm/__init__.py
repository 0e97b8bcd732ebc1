"""codelm: train code-generation language models on your own code and put them to work.

The package is laid out the way data flows:
data -> tokenizer -> model -> train -> generate -> evaluate -> serve.
evaluate comes after generate because it runs the generation engine. The use-case
stages lsp, notebook and testgen stand beside serve: like serve, each may import
every stage up to evaluate, and none imports serve or another of them.
Later stages import earlier ones, never the reverse. The helpers (errors, fsutil,
cbuild, hardware) are for every stage and import none; cli, demo and __main__ sit
on top. tests/test_stages.py checks these rules.
"""

__version__ = "0.1.0"

"""codelm: train code-generation language models on your own code and put them to work.

The package is laid out the way data flows:
data -> tokenizer -> model -> train -> evaluate -> generate -> serve.
Later stages import earlier ones, never the reverse.
"""

__version__ = "0.1.0"

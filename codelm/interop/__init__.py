"""Interop stage: codelm runs to and from other tools' formats.

`hf.py` imports a local Hugging Face model folder (Llama, Mistral, Qwen2, Qwen3, StarCoder2) as a
codelm run and exports a run as a folder transformers loads (`folders.py` reads and writes
their files); `gguf.py` writes a run as a GGUF file for llama.cpp. The stage sits between
`model` and `train`: it reads and writes weights and tokenizer files, and never trains,
generates or serves. Nothing is downloaded.
"""

"""Decoding speed on the same weights: codelm against llama.cpp, side by side in one run.

    .venv/bin/python bench/interop.py [--shapes small,base,qwen2] [--prompt 512] [--new 128]
        [--reps 3] [--vocab 8192]

Each shape is a random model saved as a codelm run, exported with `codelm export --format
gguf` in q8_0 and bf16, and decoded greedily at batch 1 (a 512-token prompt, 128 new
tokens) by codelm's int8 and bf16 weights (its native kernels) and by llama.cpp on the
exported files (llama-cpp-python, on 2 threads like torch). Pairs that read the same bytes
per weight are compared: codelm int8 with llama.cpp q8_0 (both 8-bit weights with a scale
per row or per 32 weights), codelm bf16 with llama.cpp bf16.

Shapes: codelm's `small` and `base` presets, and `qwen2`, Qwen2.5-Coder-0.5B's body (24
layers of width 896, 14 query heads sharing 2 key/value heads, q/k/v biases, an MLP of
4864) with the vocabulary of the bench's tokenizer instead of Qwen's 151,936 tokens (a
tokenizer of that size cannot be trained here in seconds; the head's share of the work
is then smaller than in the real model). Every context is 1024 tokens.

llama-cpp-python is not a dependency of codelm: the bench installs it into the running
environment on first use (`pip install llama-cpp-python`, a build from source of a few
minutes; `CMAKE_ARGS=-DGGML_NATIVE=ON` so it uses this CPU's vector ISA). Under
`CODELM_CPU=avx2` (with torch's AVX2 variables, as bench/generate.py describes) it builds
and uses a second copy limited to AVX2, so both engines are held to the same instructions. Decode tokens/s
is 1 / the median interval between new tokens, time to first token covers the prompt;
engines alternate within each repetition, and the table gives medians over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, summary  # noqa: E402
from generate import rates, time_ours  # noqa: E402

from codelm.generate.quantize import prepare_model  # noqa: E402
from codelm.interop.gguf import export_gguf  # noqa: E402
from codelm.model import ModelConfig, Transformer, native  # noqa: E402
from codelm.model.io import save_weights  # noqa: E402
from codelm.tokenizer import train_tokenizer  # noqa: E402

SHAPES = {
    "small": dict(ModelConfig.from_preset("small").to_dict()),
    "base": dict(ModelConfig.from_preset("base").to_dict()),
    "qwen2": dict(
        n_layer=24,
        n_head=14,
        n_kv_head=2,
        n_embd=896,
        mlp_hidden_size=4864,
        qkv_bias=True,
        rope_layout="half",
        rope_theta=1e6,
    ),  # fmt: skip
}


def llama_cpp():
    """The llama_cpp module, built and installed on first use. With CODELM_CPU=avx2 (AVX2
    emulated on a larger CPU) it is a build limited to AVX2, kept apart from the native one
    in ~/.cache/codelm/llama-cpp-avx2 (installed with pip --target)."""
    if os.environ.get("CODELM_CPU") == "avx2":
        target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codelm" / "llama-cpp-avx2"
        if not (target / "llama_cpp").is_dir():
            print("installing llama-cpp-python for AVX2 (a build from source, a few minutes)...", flush=True)
            env = {**os.environ, "CMAKE_ARGS": AVX2_ARGS}
            # --no-cache-dir: pip's wheel cache is keyed by the source, not CMAKE_ARGS, and
            # would hand back the native build
            pip = [sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--no-deps"]
            pip += ["--target", str(target)]
            subprocess.run([*pip, "llama-cpp-python"], check=True, env=env)
        sys.path.insert(0, str(target))
        import llama_cpp

        return llama_cpp
    try:
        import llama_cpp
    except ImportError:
        print("installing llama-cpp-python (a build from source, a few minutes)...", flush=True)
        env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", cmake_args())}
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "llama-cpp-python"]
        subprocess.run(pip, check=True, env=env)
        import llama_cpp
    return llama_cpp


# What an AVX2 laptop's llama.cpp uses: AVX2 with FMA, F16C and BMI2; no AVX-512, no AMX.
AVX2_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"


def cmake_args() -> str:
    """llama.cpp's build for this CPU: its native ISA, except AMX. With AMX, llama-cpp-python
    0.3.36 built with GGML_NATIVE=ON crashed (SIGSEGV) in the prompt pass of every q8_0 file
    on an Intel Xeon here, its own converter's files included; AVX-512 without AMX runs."""
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    if "amx_int8" not in flags:
        return "-DGGML_NATIVE=ON"
    isa = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "bmi2": "BMI2", "avx_vnni": "AVX_VNNI",
           "avx512f": "AVX512", "avx512vbmi": "AVX512_VBMI", "avx512_vnni": "AVX512_VNNI",
           "avx512_bf16": "AVX512_BF16"}  # fmt: skip
    on = " ".join(f"-DGGML_{name}=ON" for flag, name in isa.items() if flag in flags)
    return f"-DGGML_NATIVE=OFF {on} -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"


def corpus_tokenizer(vocab: int, cache: Path):
    """A codelm tokenizer trained on a slice of the standard library (cached between runs)."""
    import sysconfig

    from codelm.tokenizer import CodeTokenizer

    path = cache / f"tokenizer-{vocab}.json"
    if path.is_file():
        return CodeTokenizer.load(path)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]
    tok = train_tokenizer((f.read_text(errors="replace") for f in files), vocab)
    tok.save(path)
    return tok


def make_run(shape: str, tok, run: Path, block: int = 1024) -> Transformer:
    """A random model of `shape` saved as a codelm run directory."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SHAPES[shape], "vocab_size": tok.vocab_size, "block_size": block})
    model = Transformer(cfg).eval()
    with torch.no_grad():  # biases start at 0: give them values, so that they are read
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    tok.save(run / "tokenizer.json")
    save_weights(model, run / "model.safetensors")
    return model


def last_logits(llm):
    """llama.cpp's logits of the last evaluated token (without `logits_all`, llama-cpp-python
    0.3.36 keeps none in `scores`: they are read from the context)."""
    import numpy as np

    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def time_llama(llm, prompt: list[int], new: int) -> tuple[float, float]:
    """Time to first token and decode tokens/s of llama.cpp's loop, greedy (argmax of its logits)."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    stamps = []
    for _ in range(new):
        token = int(last_logits(llm).argmax())
        stamps.append(time.perf_counter())
        if len(stamps) < new:
            llm.eval([token])
    return rates(t0, stamps)


def check_same_model(model: Transformer, llm, prompt: list[int]) -> float:
    """The largest logit difference, relative to the logits' spread, between codelm (fp32)
    and llama.cpp on the prompt's last position; stops the bench if the top tokens differ."""
    import numpy as np

    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0, -1].numpy()
    llm.reset()
    llm.eval(prompt)
    theirs = last_logits(llm).copy()
    if ours.argmax() != theirs.argmax():
        raise SystemExit("llama.cpp and codelm disagree on the next token: the export is wrong")
    return float(np.abs(ours - theirs).max() / ours.std())


def bench_shape(shape: str, tok, a: argparse.Namespace, work: Path) -> None:
    lc = llama_cpp()
    run = work / shape
    model = make_run(shape, tok, run)
    prompt = torch.randint(
        0, tok.vocab_size, (a.prompt,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    engines, diffs = {}, {}
    for quant, ours in (("q8_0", "int8"), ("bf16", "bf16")):
        gguf = work / f"{shape}-{quant}.gguf"
        export_gguf(run, gguf, quant)
        llm = lc.Llama(str(gguf), n_ctx=1024, n_batch=a.prompt, n_threads=torch.get_num_threads(),
                       n_threads_batch=torch.get_num_threads(), verbose=False)  # fmt: skip
        diffs[quant] = check_same_model(model, llm, prompt)
        m = prepare_model(model, ours)
        engines[f"codelm {ours}"] = lambda m=m: time_ours(m, prompt, a.new)
        engines[f"llama.cpp {quant}"] = lambda llm=llm: time_llama(llm, prompt, a.new)
    for fn in engines.values():  # warm up: first calls build kernels and caches
        fn()
    ttft: dict[str, list[float]] = {k: [] for k in engines}
    tps: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(a.reps):
        for k, fn in engines.items():
            t, s = fn()
            ttft[k].append(t * 1e3)
            tps[k].append(s)
    cfg = model.cfg
    print(f"\n{shape}: {model.num_params() / 1e6:.1f}M params ({cfg.n_layer}L/{cfg.n_embd}, "
          f"{cfg.n_head} heads, {cfg.kv_heads} kv heads), vocab {cfg.vocab_size}")  # fmt: skip
    print(f"  llama.cpp's last logits are codelm's fp32 ones to {diffs['q8_0']:.3f} (q8_0), "
          f"{diffs['bf16']:.3f} (bf16) of their standard deviation; the same top token")  # fmt: skip
    print(f"  {'engine':16s} {'TTFT ms':>8s} {'decode tok/s (median, min, max)':>34s} {'x llama.cpp':>12s}")
    for k in engines:
        peer = "llama.cpp q8_0" if "int8" in k or "q8_0" in k else "llama.cpp bf16"
        ratio = statistics.median(tps[k]) / statistics.median(tps[peer])
        print(f"  {k:16s} {statistics.median(ttft[k]):8.0f} {summary(tps[k]):>34s} {ratio:11.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="small,base,qwen2")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    print(machine())
    lc = llama_cpp()
    print(f"llama.cpp (llama-cpp-python {lc.__version__}): {lc.llama_print_system_info().decode().strip()}")
    kernels = f"yes, {native.isa()}" if native.available() else f"no, aten's instead ({native.reason()})"
    print(f"codelm's native kernels (int8 GEMV, one-token attention): {kernels}")
    cache = Path(tempfile.gettempdir()) / "codelm-bench-interop"
    cache.mkdir(exist_ok=True)
    tok = corpus_tokenizer(a.vocab, cache)
    with tempfile.TemporaryDirectory() as work:
        for shape in a.shapes.split(","):
            bench_shape(shape, tok, a, Path(work))


if __name__ == "__main__":
    main()

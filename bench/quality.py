"""Model quality within a CPU budget, measured on code that no preset trains on.

For each budget (minutes of training on the wall clock) this trains, one after
the other in one run, the named codelm variants and a re-implementation of the
plain nanoGPT-style baseline the quality issue measured (4 layers, width 256,
learned positions, LayerNorm, GELU, an 8k plain byte-level BPE, lr 1e-3 with
cosine, batch 16x256, bf16, on the whole standard library). Then it scores
every model on the same held-out text: the Python files of HELD_OUT_PACKAGES,
third-party packages of this environment that the `stdlib` and `site-packages`
sources never read. Reported: bits per byte (tokenizer-independent, so it
compares with xz), top-1/top-5 next-token accuracy, and line-completion exact
match and edit similarity (greedy, CodeXGLUE-style), and the copy gain (nats saved
on a repeated random span: whether induction heads have formed). With `--writes`, also what each
codelm model writes: pass@1 and pass@10 on codelm_basic, and the share of greedy
completions of held-out functions that parse and that loop.

    .venv/bin/python bench/quality.py --budgets 5 30 --variants baseline demo

Corpora and tokenizers are built once under --work and reused. Training takes
the whole machine: run nothing else beside it, or the budgets buy fewer steps.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from held_out import compressor_bpb, function_prompts, held_out  # bench/, the script's own folder
from rich.console import Console
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from codelm.data.build import DataConfig, build_dataset
from codelm.data.dataset import iter_texts
from codelm.data.problems import load_problems
from codelm.data.sources import HELD_OUT_PACKAGES
from codelm.demo import TEST_SUITES, DemoConfig, demo_train_config
from codelm.evaluate.intrinsic import IntrinsicConfig, copy_gain, intrinsic_metrics
from codelm.evaluate.line_completion import LineConfig, model_predictions, sample_positions, score, similarity
from codelm.evaluate.passk import find_problems
from codelm.evaluate.report import EvalConfig, pass_at_k_report
from codelm.generate import complete, load_run, parses
from codelm.generate.config import SamplingConfig
from codelm.model import ModelConfig, Transformer
from codelm.model.io import read_config
from codelm.tokenizer import train_tokenizer
from codelm.train.config import TrainConfig
from codelm.train.loop import lr_at, train, train_step

console = Console(stderr=True)


DEMO = DemoConfig()


@dataclass(frozen=True)
class Variant:
    """A codelm recipe: corpus, tokenizer size, and training config (its budget set per run)."""

    sources: tuple[str, ...] = DEMO.sources
    exclude: tuple[str, ...] = TEST_SUITES
    vocab_size: int = DEMO.vocab_size
    train: TrainConfig = demo_train_config(DEMO)
    model: tuple[tuple[str, object], ...] = ()  # overrides of the preset's fields


# The recipes docs/quality.md compares. `demo` is what `codelm demo` trains (corpus, vocabulary
# and training config); each of the others differs from it as its name says. Corpora: "broad" is
# the demo's stdlib + site-packages, test suites left out.
_T = demo_train_config(DEMO)
_STDLIB = ("stdlib",)
VARIANTS: dict[str, Variant] = {
    "demo": Variant(),
    "lr2x": Variant(train=replace(_T, lr=2 * _T.lr)),
    "2k-lr2x": Variant(vocab_size=2048, train=replace(_T, lr=2 * _T.lr)),
    "8k": Variant(vocab_size=8192),
    "8k-lr2x": Variant(vocab_size=8192, train=replace(_T, lr=2 * _T.lr)),
    "8k-batch16": Variant(vocab_size=8192, train=replace(_T, batch_size=16)),
    # The `small` preset (6 layers, 384 wide, 512-token context) on the demo's corpus and recipe.
    "small": Variant(train=replace(_T, preset="small")),
    # TrainConfig's default FIM rate (the demo trains without FIM): its cost to left-to-right.
    "fim": Variant(train=replace(_T, fim_rate=0.5)),
    "8k-6x192": Variant(vocab_size=8192, model=(("n_layer", 6), ("n_embd", 192), ("n_head", 3))),
    # Candidates for CPUs without native bf16, where 5 minutes of fp32 fit about half the steps.
    "batch4": Variant(train=replace(_T, batch_size=4)),
    "4x192": Variant(model=(("n_embd", 192), ("n_head", 3))),
    "4x192-batch4": Variant(model=(("n_embd", 192), ("n_head", 3)), train=replace(_T, batch_size=4)),
    # Third-party code alone, the nearest to the held-out packages (modern style: type hints,
    # f-strings), without the stdlib's older code: does 5 minutes learn more of what it is scored on?
    "site-packages": Variant(sources=("site-packages",)),
    # Muon on the fused qkv and SwiGLU matrices whole, as before `muon_split` (its ablation).
    "muon-whole": Variant(train=replace(_T, muon_split=False)),
    # The learning rate's decay, whatever the demo picks on this CPU (demo.short_budget_decay):
    # over the whole budget (a cosine); or the peak until the budget's last 30% (or half).
    "cosine": Variant(train=replace(_T, decay=1.0)),
    "wsd": Variant(train=replace(_T, decay=0.3)),
    "wsd-half": Variant(train=replace(_T, decay=0.5)),
    "wsd-0.2": Variant(train=replace(_T, decay=0.2)),
    "wsd-lr2x": Variant(train=replace(_T, decay=0.3, lr=2 * _T.lr)),
    # A 512-token context at the same tokens a step (4 x 512 against 8 x 256): what an editor's
    # prefix and suffix, or a test file beside its module, would fit.
    "ctx512": Variant(model=(("block_size", 512),), train=replace(_T, batch_size=4)),
    "adamw-8k": Variant(vocab_size=8192, train=replace(_T, optimizer="adamw")),
    # Three passes over the mined docstring -> code pairs (and doctests) per pass over the files.
    "pairs3x": Variant(train=replace(_T, pair_rate=3.0)),
    "stdlib-8k": Variant(sources=_STDLIB, vocab_size=8192),
    # The demo before this measure: stdlib only, AdamW, 8k.
    "stdlib-adamw-8k": Variant(sources=_STDLIB, vocab_size=8192, train=replace(_T, optimizer="adamw")),
}


# ---------------------------------------------------------------- the plain baseline


class PlainTokenizer:
    """A plain byte-level BPE (no code pre-tokenizer) with the interface the metrics use."""

    def __init__(self, texts: list[str], vocab_size: int):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(
            texts,
            trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=["<|endoftext|>"],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
        self.tok, self.eot_id, self.vocab_size = tok, 0, tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


BASELINE_MODEL = ModelConfig(
    vocab_size=8192, n_layer=4, n_head=4, n_embd=256, block_size=256,
    pos="learned", norm="layernorm", mlp="gelu",
)  # fmt: skip
BASELINE_TRAIN = TrainConfig(lr=1e-3, batch_size=16, warmup_steps=30, epochs=0, max_minutes=1)


def train_baseline(work: Path, minutes: float, seed: int) -> tuple[Transformer, PlainTokenizer, dict]:
    """nanoGPT's recipe: random 256-token windows of the concatenated corpus, AdamW, cosine."""
    texts = list(iter_texts(corpus(work, "stdlib-all", ("stdlib",), ()), "train"))
    tok = PlainTokenizer(texts, BASELINE_MODEL.vocab_size)
    ids = np.fromiter((i for t in texts for i in [*tok.encode(t), tok.eot_id]), dtype=np.int64)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, cfg = Transformer(BASELINE_MODEL), replace(BASELINE_TRAIN, max_minutes=minutes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
    T, step, began = BASELINE_MODEL.block_size, 0, time.monotonic()
    while (elapsed := time.monotonic() - began) < minutes * 60:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed / (minutes * 60), cfg)
        starts = rng.integers(0, len(ids) - T - 1, cfg.batch_size)
        chunk = torch.from_numpy(np.stack([ids[s : s + T + 1] for s in starts]))
        loss = train_step(model, opt, [(chunk[:, :-1], chunk[:, 1:])], 1.0, torch.bfloat16)
        step += 1
        if step % 100 == 0:
            console.print(f"  baseline step {step}: loss {loss:.3f} ({elapsed / 60:.1f} min)")
    model.eval()
    return model, tok, {"steps": step, "tokens": step * cfg.batch_size * T}


# ---------------------------------------------------------------- codelm variants


def corpus(work: Path, name: str, sources: tuple[str, ...], exclude: tuple[str, ...]) -> Path:
    out = work / "data" / name
    if not (out / "manifest.json").is_file():
        console.print(f"building corpus {name}: {', '.join(sources)}")
        build_dataset(list(sources), out, DataConfig(num_proc=2, exclude=exclude))
    return out


def train_variant(work: Path, name: str, v: Variant, minutes: float, seed: int, reuse: bool) -> Path:
    data = corpus(work, "+".join(v.sources) + ("" if v.exclude else "-all"), v.sources, v.exclude)
    tok_path = work / "tokenizers" / f"{data.name}-{v.vocab_size}.json"
    if not tok_path.is_file():
        train_tokenizer(iter_texts(data, "train"), v.vocab_size).save(tok_path)
    run = work / "runs" / f"{name}-{minutes:g}min"
    if reuse and (run / "model.safetensors").is_file():
        return run
    # Every evaluation's checkpoint is kept, so --also-at can score the model part way.
    cfg = replace(v.train, max_minutes=minutes, epochs=0, seed=seed, keep_checkpoints=10**6)
    train(data, run, cfg, tokenizer=tok_path, console=console, model_overrides=dict(v.model), force=True)
    return run


def checkpoint_at(run: Path, minutes: float) -> tuple[Transformer, dict] | None:
    """The model of the last checkpoint saved by `minutes` into the run (2% slack), if any."""
    found = None
    for ck in sorted((run / "checkpoints").glob("step-*")):
        loop = json.loads((ck / "state.json").read_text())["loop"]
        if loop["elapsed_s"] <= minutes * 60 * 1.02:
            found = ck, loop
    if found is None:
        return None
    model = Transformer(ModelConfig.from_dict(read_config(run)["model"]))
    model.load_state_dict(load_file(str(found[0] / "model.safetensors")), strict=False)
    return model, {"steps": found[1]["step"], "tokens": found[1]["tokens"]}


# ---------------------------------------------------------------- measuring


def measure(model, tok, texts: list[str], lines: LineConfig) -> dict:
    model.eval()
    intr = intrinsic_metrics(model, tok, texts, IntrinsicConfig(max_tokens=10**9))
    positions = sample_positions(texts, lines)
    lc = score(model_predictions(model, tok, positions, lines), positions)
    return {
        "bits_per_byte": intr.bits_per_byte,
        "top1": intr.top1,
        "top5": intr.top5,
        "line_em": lc.exact_match,
        "line_edit_sim": lc.edit_similarity,
        "copy_gain": copy_gain(model),  # has it induction heads yet?
        "params_M": model.num_params() / 1e6,
    }


def sampling_check(model, tok, texts: list[str], penalties: list[float], count: int) -> list[dict]:
    """Completions of held-out functions at the default sampling, per repetition penalty:
    how many parse, how many the repetition rule had to stop, and similarity to the truth."""
    prompts = function_prompts(texts, count)
    rows = []
    for penalty in penalties:
        cfg = SamplingConfig(max_new_tokens=128, seed=0, repetition_penalty=penalty)
        done = [complete(model, tok, p, cfg) for p, _ in prompts]
        rows.append(
            {
                "repetition_penalty": penalty,
                "functions": len(prompts),
                "parse": sum(parses(p + c.text) for (p, _), c in zip(prompts, done, strict=True))
                / max(len(done), 1),
                "stopped_by_repetition": sum(c.stop_reason == "repetition" for c in done) / max(len(done), 1),
                "edit_sim": sum(
                    similarity(c.text.strip(), b.strip()) for (_, b), c in zip(prompts, done, strict=True)
                )
                / max(len(done), 1),
            }
        )
    return rows


def writes(model, tok, texts: list[str], count: int) -> dict:
    """What the model writes: pass@1 (10 samples at temperature 0.2, Codex's setting) and
    pass@10 (10 at 0.8) on codelm_basic, run in the sandbox, with its reference solutions'
    log-probabilities (reference_nats); and greedy completions of
    `count` held-out functions: the share that parses and the share the repetition rule cut."""
    problems = find_problems("codelm_basic")
    out = {}
    for k, t in ((1, 0.2), (10, 0.8)):
        sampling = EvalConfig(temperature=t, max_new_tokens=128)
        report = pass_at_k_report(model, tok, problems, sampling, None, console)  # progress on stderr
        out[f"pass@{k}"] = report[f"pass@{k}"]
    nats = reference_nats(model, tok, load_problems(problems))
    out["reference_nats"], out["reference_nats_best"] = float(np.median(nats)), max(nats)
    prompts = function_prompts(texts, count)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=128)
    done = [complete(model, tok, p, cfg) for p, _ in prompts]
    n = max(len(done), 1)
    out["greedy_parse"] = sum(parses(c.code) for c in done) / n
    out["greedy_loop"] = sum(c.stop_reason == "repetition" for c in done) / n
    return out


def reference_nats(model, tok, problems: list) -> list[float]:
    """The log-probability (nats) of each problem's reference solution after its prompt, for
    the problems whose prompt and solution fit the context. It moves long before any sample
    passes: at -12 nats, `return a + b` comes once in 160,000 samples at temperature 1."""
    out = []
    for p in problems:
        # Encoded together, as the solution's first token re-spells the prompt's last newline
        # ("\n    " is one token); scored from where the two encodings part, as healing does.
        prompt, ids = tok.encode(p.prompt), tok.encode(p.prompt + p.canonical_solution)
        start = next((i for i, (a, b) in enumerate(zip(prompt, ids, strict=False)) if a != b), len(prompt))
        if len(ids) > model.cfg.block_size or start == 0:
            continue
        with torch.no_grad():
            logp = model(torch.tensor([ids]))[0].float().log_softmax(-1)  # (T, V)
        out.append(sum(logp[i - 1, ids[i]].item() for i in range(start, len(ids))))
    return out


def writes_table(results: list[dict]) -> str:
    rows = [
        "| budget | recipe | pass@1 | pass@10 | reference nats (median; best) | greedy parse | greedy loop |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "pass@1" in r:
            rows.append(
                f"| {r['minutes']:.3g} min | {r['variant']} | {r['pass@1']:.3f} | {r['pass@10']:.3f} | "
                f"{r['reference_nats']:.1f}; {r['reference_nats_best']:.1f} | "
                f"{r['greedy_parse']:.2f} | {r['greedy_loop']:.2f} |"
            )
    return "\n".join(rows)


def table(results: list[dict], compressors: dict[str, float]) -> str:
    head = (
        "| budget | recipe | params | steps | tokens | bits/byte | top-1 | top-5 | line EM | edit sim "
        "| copy gain, nats |"
    )
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        rows.append(
            f"| {r['minutes']:.3g} min | {r['variant']} | {r['params_M']:.2f}M | {r['steps']:,} | "
            f"{r['tokens'] / 1e6:.2f}M | {r['bits_per_byte']:.3f} | {r['top1']:.3f} | {r['top5']:.3f} | "
            f"{r['line_em']:.3f} | {r['line_edit_sim']:.3f} | {r['copy_gain']:.2f} |"
        )
    rows += ["", "On the same files: " + ", ".join(f"{k} {v:.3f} bits/byte" for k, v in compressors.items())]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=float, nargs="+", default=[5.0], help="minutes of training")
    ap.add_argument("--variants", nargs="*", default=["baseline", "demo"], help="baseline and/or VARIANTS")
    ap.add_argument("--score", nargs="*", default=[], help="also score these RUN directories, untrained")
    ap.add_argument("--work", default="runs/quality", help="corpora, tokenizers and runs are kept here")
    ap.add_argument("--held-out-bytes", type=int, default=600_000, help="held-out text scored")
    ap.add_argument("--lines", type=int, default=200, help="line-completion positions")
    ap.add_argument("--packages", nargs="+", default=list(HELD_OUT_PACKAGES), help="held-out packages scored")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument(
        "--penalties",
        type=float,
        nargs="*",
        default=[],
        help="repetition penalties to compare on the last model",
    )
    ap.add_argument("--functions", type=int, default=40, help="held-out functions completed per penalty")
    ap.add_argument("--reuse", action="store_true", help="score finished runs under --work again")
    ap.add_argument(
        "--writes",
        action="store_true",
        help="also what each codelm model writes: pass@k on codelm_basic, greedy parse and loop rates",
    )
    ap.add_argument(
        "--also-at",
        type=float,
        nargs="*",
        default=[],
        help="also score each codelm run's checkpoint at these minutes (the schedule not yet annealed)",
    )
    a = ap.parse_args()
    from common import machine  # bench/, the script's own folder, is on sys.path

    print(machine())
    for name in a.variants:
        if name != "baseline" and name not in VARIANTS:
            raise SystemExit(f"unknown variant {name}; choose from baseline, {', '.join(VARIANTS)}")
    work = Path(a.work)
    (work / "tokenizers").mkdir(parents=True, exist_ok=True)
    texts = held_out(a.held_out_bytes, tuple(a.packages))
    compressors = compressor_bpb(texts)
    nbytes = sum(len(t.encode()) for t in texts)
    console.print(f"held out: {len(texts)} files, {nbytes:,} bytes; {compressors}")
    results = []
    for run in a.score:  # runs trained elsewhere (a GPU, your own recipe): scored the same way
        model, tok = load_run(run)
        last = json.loads((Path(run) / "metrics.jsonl").read_text().splitlines()[-1])
        info = {"steps": last["step"], "tokens": last["tokens"]}
        minutes = last["elapsed_s"] / 60
        r = {
            "minutes": minutes,
            "variant": str(run),
            **info,
            **measure(model, tok, texts, LineConfig(a.lines)),
            **(writes(model, tok, texts, a.functions) if a.writes else {}),
        }
        results.append(r)
        console.print(json.dumps(r))
    for minutes in a.budgets if a.variants else []:
        for name in a.variants:
            console.rule(f"{name}, {minutes:g} minutes")
            if name == "baseline":
                model, tok, info = train_baseline(work, minutes, a.seed)
                scored = [(minutes, "baseline", model, info)]
            else:
                run = train_variant(work, name, VARIANTS[name], minutes, a.seed, a.reuse)
                model, tok = load_run(run)
                last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
                scored = [(minutes, name, model, {"steps": last["step"], "tokens": last["tokens"]})]
                for m in (m for m in a.also_at if m < minutes):
                    if (part := checkpoint_at(run, m)) is not None:
                        scored.insert(-1, (m, f"{name} (at {m:g} of {minutes:g} min)", *part))
            for m, label, net, info in scored:
                r = {"minutes": m, "variant": label, **info, **measure(net, tok, texts, LineConfig(a.lines))}
                if a.writes and name != "baseline":  # the plain tokenizer has no prompt layouts
                    r.update(writes(net, tok, texts, a.functions))
                results.append(r)
                console.print(json.dumps(r))
                with open(work / "results.jsonl", "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(table(results, compressors))
    if a.writes:
        print("\nWhat each model writes (pass@k on codelm_basic, greedy on held-out functions):")
        print(writes_table(results))
    if a.penalties and results[-1]["variant"] != "baseline":  # the plain tokenizer has no prompt layouts
        last = results[-1]
        print(f"\nSampling (temperature 0.2, top-p 0.95), {last['variant']} {last['minutes']:g} min:")
        print("| repetition penalty | functions | parse | stopped by repetition | edit sim |")
        print("|---|---|---|---|---|")
        for row in sampling_check(model, tok, texts, a.penalties, a.functions):
            print(
                f"| {row['repetition_penalty']:g} | {row['functions']} | {row['parse']:.2f} | "
                f"{row['stopped_by_repetition']:.2f} | {row['edit_sim']:.3f} |"
            )
    xz = compressors["xz -9e"]
    beat = [f"{r['variant']} ({r['minutes']:g} min)" for r in results if r["bits_per_byte"] < xz]
    print(f"\nbelow xz -9e in bits per byte: {', '.join(beat) or 'none'}")


if __name__ == "__main__":
    main()

"""`TrainConfig`: how long and how hard to train. Saved beside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from codelm.errors import CodelmError
from codelm.model.config import check_preset
from codelm.model.lora import DEFAULT_TARGETS, LoraConfig


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "tiny"  # model preset, see codelm.model.config.PRESETS
    vocab_size: int = 8192  # tokenizer size when the run trains its own tokenizer
    seq_len: int = 0  # tokens per training sequence; 0: the model's block_size, at most 1024
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-3  # peak learning rate; small models tolerate a high one
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 30  # short: a 5-minute run only has a few hundred steps
    # Share of the budget, at its end, over which the rate decays (a cosine); before it the
    # rate stays at its peak. 1.0: a cosine over the whole budget; less: warmup-stable-decay.
    decay: float = 1.0
    weight_decay: float = 0.1  # on matrices only, never on norms or embeddings' biases
    # "muon": Muon for the blocks' matrices and AdamW for embeddings and vectors (train/muon.py).
    # It gave 0.10-0.11 fewer bits per byte on unseen code after 5 minutes of `tiny` than AdamW
    # alone, on either corpus, despite 12% fewer steps (bench/quality.py, docs/quality.md).
    optimizer: str = "muon"  # or "adamw"
    muon_lr_scale: float = 10.0  # Muon's rate = lr * this: its normalised updates want ~0.02
    # Muon orthogonalises each head's q, k and v, and SwiGLU's gate and up, as matrices of their
    # own rather than as the fused matrices they are stored in (train/loop.py, `muon_splits`).
    muon_split: bool = True
    beta1: float = 0.9
    beta2: float = 0.95  # faster second-moment tracking; standard for LM training
    grad_clip: float = 1.0
    epochs: float = 1.0  # passes over the training tokens (fractions allowed)
    max_steps: int = 0  # 0 means no step limit
    max_minutes: float = 0.0  # wall-clock budget for the loop; 0 means none
    max_tokens: int = 0  # training tokens budget; 0 means none
    evals: int = 8  # validation points spread evenly over the budget (the trace rows)
    eval_every: int = 0  # also evaluate every N steps; 0 means only the `evals` points
    eval_sequences: int = 64  # validation sequences per evaluation
    early_stop_patience: int = 0  # stop after this many evals without a better val loss; 0: off
    checkpoint_every: int = 0  # steps between checkpoints; 0 means at every evaluation
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    # Fill-in-the-middle: share of files turned into PSM/SPM infilling examples.
    # 0.5 costs little left-to-right quality at scale (Bavarian et al. 2022).
    fim_rate: float = 0.5
    # Repository documents (train/repo.py) per file that has neighbours: a stretch of the file
    # after BM25 snippets of its repository, laid out as the editor's prompt lays out context.
    # 0.5: every other file; 3: three stretches of each.
    repo_rate: float = 0.0
    # Passes over the instruction -> code pairs (kind=pair rows) per pass over the files: 3 shows
    # each pair three times, its copies in later passes after the files, never next to each other;
    # a fraction keeps that share of a pass; 0 leaves the pairs out. For a corpus that mixes one's
    # code with an instruction dataset (data/instruct.py), usually far smaller.
    pair_rate: float = 1.0
    compile: bool = False  # torch.compile the model: faster steps after a ~30 s first step
    # FSDP2 under torchrun (train/shard.py): each process holds 1/N of the weights, gradients
    # and optimizer state, for a model whose optimizer state no longer fits one device.
    # Without torchrun the run is one process, as without the flag.
    shard: bool = False
    seed: int = 1337
    dtype: str = "auto"  # auto (bf16 where the device supports it) | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    # LoRA (model/lora.py): train rank-`lora_rank` adapters over the `lora_targets` layers of
    # --init-from's frozen weights; 0 trains every weight (full fine-tuning). With adapters the
    # optimizer is AdamW, LoRA's own recipe. Muon is for full hidden matrices; A and B are
    # low-rank by construction, and A's gradient is zero at the first step and tiny while B is
    # (it is B^T times the output's), which Muon's normalisation would make full-size steps.
    lora_rank: int = 0
    # None: 2 * lora_rank, a scale alpha/r of 2 at every rank, the common recipe (litgpt's r=8,
    # alpha=16). With a fixed alpha (peft's default, 8) the scale shrinks as 1/r and a larger
    # rank learns slower at the same lr (Kalajdzievski 2023, rsLoRA); tied to the rank, trying
    # another rank needs no other lr.
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS  # of qkv, proj, mlp; "qkv,mlp" is read too
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        check_preset(self.preset)  # here, not after a tokenizer has been trained
        self._check_lora()
        if self.shard and (self.lora_rank or self.compile):
            # Adapters are small enough for every process to hold; compiling a sharded model is
            # not tested here.
            raise CodelmError("--shard trains every weight and runs eagerly: drop --lora and --compile")
        if self.epochs <= 0 and self.max_steps <= 0 and self.max_minutes <= 0 and self.max_tokens <= 0:
            raise CodelmError("give a budget: epochs, steps, tokens or minutes must be positive")
        for name, low in _AT_LEAST.items():
            if getattr(self, name) < low:
                raise CodelmError(f"{name} must be at least {low}, got {getattr(self, name)}")
        for name, ok, rule in (
            ("lr", self.lr > 0, "> 0"),
            ("muon_lr_scale", self.muon_lr_scale > 0, "> 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("decay", 0 < self.decay <= 1, "in (0, 1]"),
            ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
            ("fim_rate", 0 <= self.fim_rate <= 1, "in [0, 1]"),
            ("repo_rate", 0 <= self.repo_rate <= 100, "in [0, 100]"),
            ("pair_rate", 0 <= self.pair_rate <= 100, "in [0, 100]"),
        ):
            if not ok:
                raise CodelmError(f"{name} must be {rule}, got {getattr(self, name)}")
        if self.optimizer not in ("adamw", "muon"):
            raise CodelmError(f"optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise CodelmError(f"dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CodelmError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def _check_lora(self) -> None:
        targets = self.lora_targets
        if isinstance(targets, str):  # the CLI's comma-separated list
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        object.__setattr__(self, "lora_targets", tuple(targets))  # a JSON list when read back
        if self.lora_rank == 0 and (
            self.lora_alpha is not None or self.lora_dropout != 0 or self.lora_targets != DEFAULT_TARGETS
        ):
            raise CodelmError("lora_alpha, lora_targets and lora_dropout need lora_rank > 0 (--lora R)")
        if self.lora_rank < 0:
            raise CodelmError(f"lora_rank must be at least 0, got {self.lora_rank}")
        if self.lora is not None:  # building it checks rank, alpha, targets and dropout
            object.__setattr__(self, "optimizer", "adamw")

    @property
    def lora(self) -> LoraConfig | None:
        """The adapters' settings; None for full training."""
        if self.lora_rank == 0:
            return None
        alpha = 2.0 * self.lora_rank if self.lora_alpha is None else self.lora_alpha
        return LoraConfig(self.lora_rank, alpha, self.lora_targets, self.lora_dropout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> TrainConfig:
        """The config a run saved (its "train" entry); an unknown key is an error, not dropped."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:  # no field was ever removed or renamed, so this is a newer codelm's run, or a typo
            raise CodelmError(
                f"{source}: unknown train config key(s): {', '.join(unknown)} "
                "(written by a newer codelm? upgrade it to load this run)"
            )
        # A run saved before a field existed trained as that field's old value says, not as
        # today's default; resumed, it goes on the same way.
        return cls(**{**_BEFORE_THE_FIELD, **d})


# What each field added after runs were first saved was, in effect, before it existed.
_BEFORE_THE_FIELD = {
    "optimizer": "adamw",  # Muon came later (and became the default)
    "muon_split": False,  # Muon first orthogonalised the fused matrices whole
    "decay": 1.0,  # the cosine first spanned the whole budget
}


# Smallest allowed values of the counts and budgets (0 where 0 means "off" or "none").
_AT_LEAST = {
    "batch_size": 1,
    "grad_accum": 1,
    "evals": 1,
    "eval_sequences": 1,
    "keep_checkpoints": 1,
    "vocab_size": 1,
    "seq_len": 0,
    "warmup_steps": 0,
    "epochs": 0,
    "max_steps": 0,
    "max_minutes": 0,
    "max_tokens": 0,
    "eval_every": 0,
    "early_stop_patience": 0,
    "checkpoint_every": 0,
    "weight_decay": 0,
    "grad_clip": 0,
}

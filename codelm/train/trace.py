"""The training trace: a table row per evaluation, `metrics.jsonl`, `trace.md`, `curves.png`.

The observation column is derived from the numbers, never typed by hand: it
compares each validation loss with the previous one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from codelm.fsutil import atomic_write_bytes, atomic_write_text

PLATEAU = 0.01  # a relative change in validation loss below 1% counts as flat


@dataclass
class TraceRow:
    step: int
    epoch: float  # passes over the training tokens so far (fractional within an epoch)
    tokens: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    elapsed_s: float
    observation: str = ""


def observe(rows: list[TraceRow], new: TraceRow) -> str:
    if not rows:
        return "first evaluation"
    prev = rows[-1]
    change = (new.val_loss - prev.val_loss) / max(prev.val_loss, 1e-9)
    if change > PLATEAU and new.train_loss < prev.train_loss:
        return "validation rising: overfitting"
    if change > PLATEAU:
        return "loss rising: learning rate too high?"
    if change > -PLATEAU:
        return "plateau"
    return "loss falling"


class Trace:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.rows: list[TraceRow] = []
        self.train_points: list[tuple[int, float]] = []  # (step, loss) for the curve

    def restore(self, upto_step: int) -> None:
        """Reload the rows of metrics.jsonl up to a checkpoint's step, dropping later ones."""
        path = self.dir / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        self.rows = [
            r for r in (TraceRow(**json.loads(x)) for x in lines if x.strip()) if r.step <= upto_step
        ]
        self._write_metrics()

    def _write_metrics(self) -> None:
        # Rewritten whole, not appended: an append cut short by a full disk would leave half
        # a line that the next --resume cannot read. A run has at most a few hundred rows.
        text = "".join(json.dumps(asdict(r)) + "\n" for r in self.rows)
        atomic_write_text(self.dir / "metrics.jsonl", text)

    def log_train(self, step: int, loss: float) -> None:
        self.train_points.append((step, loss))

    def add(self, row: TraceRow) -> TraceRow:
        row.observation = observe(self.rows, row)
        self.rows.append(row)
        self._write_metrics()
        atomic_write_text(self.dir / "trace.md", self.markdown())
        self.plot()
        return row

    def table(self) -> Table:
        t = Table(title="Training trace")
        for col in ("Epoch", "train loss", "val loss", "val next-token accuracy", "observation"):
            t.add_column(col, justify="left" if col == "observation" else "right")
        for r in self.rows:
            t.add_row(
                f"{r.epoch:.2f}",
                f"{r.train_loss:.3f}",
                f"{r.val_loss:.3f}",
                f"{r.val_accuracy:.3f}",
                r.observation,
            )
        return t

    def markdown(self) -> str:
        lines = [
            "| Epoch | step | train loss | val loss | val perplexity | val next-token accuracy "
            "| observation |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            ppl = math.exp(min(r.val_loss, 50))
            lines.append(
                f"| {r.epoch:.2f} | {r.step} | {r.train_loss:.3f} | {r.val_loss:.3f} "
                f"| {ppl:.1f} | {r.val_accuracy:.3f} | {r.observation} |"
            )
        return "\n".join(lines) + "\n"

    def plot(self) -> None:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        if self.train_points:
            s, v = zip(*self.train_points, strict=True)
            ax1.plot(s, v, label="train", alpha=0.6)
        ax1.plot([r.step for r in self.rows], [r.val_loss for r in self.rows], "o-", label="val")
        ax1.set(xlabel="step", ylabel="loss", title="Loss")
        ax1.legend()
        ax2.plot([r.step for r in self.rows], [r.val_accuracy for r in self.rows], "o-", color="C1")
        ax2.set(xlabel="step", ylabel="next-token accuracy", title="Validation accuracy")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        atomic_write_bytes(self.dir / "curves.png", buf.getvalue())

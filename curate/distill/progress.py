"""What a training run shows and leaves behind while it runs: the progress bar, ``metrics.jsonl``
(one JSON record per logged step) and the loss-curve PNG."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep metrics lines up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


def progress_bar(enabled: bool, total: int, done: int) -> Any:
    """A rich progress bar with loss and tokens/s fields (a null context when disabled)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:.0f} tok/s"),
                    TimeRemainingColumn(), transient=False)


def plot_losses(metrics_path: Path, png: Path) -> Path | None:
    """Loss curves (train loss, CE, KD, eval loss) from metrics.jsonl as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: skipping the loss plot (pip install matplotlib)")
        return None
    recs = [json.loads(ln) for ln in metrics_path.read_text(encoding="utf-8").splitlines() if ln]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "ce", "kd", "eval_loss"):
        pts = [(r["step"], r[key]) for r in recs if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png

"""Figures of a result table, drawn with matplotlib from the optional extra
(`pip install -e ".[plot]"`); without it the commands write their tables and skip the figure.

    path = accuracy_against_cost(rows, "gsm8k/test", out / "accuracy_cost.png")  # None: no matplotlib

One point per method: its score against what one run of one question cost the executor, in USD
where every method's price is known, else in executor tokens (a local model has no price).
"""

from __future__ import annotations

from pathlib import Path


def accuracy_against_cost(rows: list[dict], title: str, path: Path) -> Path | None:
    """rows: evaluate's method rows (method, score, usd, tokens). Returns the PNG's path, or None
    when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scored = [r for r in rows if r["score"] is not None]
    in_usd = all(r["usd"] is not None for r in scored)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in scored:
        cost = r["usd"] if in_usd else r["tokens"]
        ax.scatter(cost, r["score"], s=36)
        ax.annotate(r["method"], (cost, r["score"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("executor USD per question and run" if in_usd else "executor tokens per question and run")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

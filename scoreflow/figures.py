"""Figures of result tables, drawn with matplotlib from the optional extra
(`pip install -e ".[plot]"`); without it the commands write their tables and skip the figures.

    path = accuracy_against_cost(rows, "gsm8k/test", out / "accuracy_cost.png")  # None: no matplotlib
    accuracy_per_round({"MAgICoRE": [0.5, 0.6], ...}, title, out / "iterations.png")
    accuracy_against_k({"MAgICoRE": [(4, 0.5), (8, 0.6)], ...}, title, out / "k_sweep.png")

accuracy_against_cost (scoreflow.evaluate): one point per method, its score against what one
run of one question cost the executor, in USD where every method's price is known, else in
executor tokens (a local model has no price). The other two (scoreflow.magicore) are the
MAgICoRE paper's figures: one line per method, accuracy after each refinement round, and
accuracy against the number of samples k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_HINT = 'pip install -e ".[plot]"'  # what a command without matplotlib tells the user


def _pyplot() -> Any:
    """matplotlib.pyplot drawing to files only (no display, no GUI toolkit), or None when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    ax.set_ylim(-0.03, 1.03)  # scores and accuracies are in [0, 1]: the same scale in every figure
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_against_cost(rows: list[dict], title: str, path: Path) -> Path | None:
    """rows: evaluate's method rows (method, score, usd, tokens). Returns the PNG's path, or None
    when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return None
    scored = [r for r in rows if r["score"] is not None]
    in_usd = all(r["usd"] is not None for r in scored)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in scored:  # a legend, not labels at the points: methods of equal cost and score coincide
        ax.scatter(r["usd"] if in_usd else r["tokens"], r["score"], s=36, label=r["method"])
    ax.legend(fontsize=8)
    xlabel = "executor USD per question and run" if in_usd else "executor tokens per question and run"
    return _save(plt, fig, ax, xlabel, "score", title, path)


def _lines(series: dict[str, list[tuple[float, float]]], xlabel: str, title: str, path: Path,
           log2_x: bool = False) -> Path | None:
    """One marked line per method through its (x, accuracy) points."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, points in series.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=method)
    if log2_x:
        ax.set_xscale("log", base=2)
    xs = sorted({x for points in series.values() for x, _ in points})
    ax.set_xticks(xs, [str(int(x)) for x in xs])
    ax.legend(fontsize=8)
    return _save(plt, fig, ax, xlabel, "accuracy", title, path)


def accuracy_per_round(series: dict[str, list[float]], title: str, path: Path) -> Path | None:
    """series: method -> accuracy after round 0, 1, ... (round 0: before any refinement).
    Returns the PNG's path, or None when matplotlib is not installed."""
    return _lines({m: list(enumerate(acc)) for m, acc in series.items()}, "refinement round", title, path)


def accuracy_against_k(series: dict[str, list[tuple[int, float]]], title: str, path: Path) -> Path | None:
    """series: method -> (k, accuracy) points; k on a log-2 axis. Returns the PNG's path, or
    None when matplotlib is not installed."""
    return _lines(series, "samples per question k", title, path, log2_x=True)

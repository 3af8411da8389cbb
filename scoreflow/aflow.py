"""`python -m scoreflow.aflow`: the AFlow baseline (Zhang et al. 2024; PAPERS.md §S6), a search
for one workflow for the whole task, on the validation split, resumable.

    python -m scoreflow.aflow                      # the embedded preset: a small CPU run
    python -m scoreflow.aflow --task math --executor-url https://api.openai.com/v1 \\
        --executor-model gpt-4o-mini --optimizer-model gpt-4o --out runs/aflow-math

Round 1 is the task's template workflow; each round draws a parent among the best rounds
(AFlow's soft mixed probability selection), the optimiser LLM modifies it given its score, its
experience and a few wrong runs, and the child is checked, then run --runs times on every
validation question (scoreflow/search/aflow.py says every rule and where its constants come
from). It stops after --rounds rounds or when AFlow's convergence rule holds. The best workflow
goes to OUT/best_workflow.py, for `python -m scoreflow.evaluate --workflows aflow=FILE`; the
per-round log to OUT/rounds.jsonl. Rerun the same command after a crash or kill to resume.

Defaults are AFlow's. With no URL both models run here (the embedded Qwen2.5-Coder-0.5B writes
the workflows, SmolLM2-135M runs them) with the embedded preset ("embedded preset" below); the
first line of a run names the defaults in force.
"""

from __future__ import annotations

from .cli import run_cli
from .search import command
from .search.config import AFLOW_EMBEDDED, AflowConfig

PROG = "scoreflow.aflow"


def main(argv: list[str] | None = None) -> None:
    command.main(PROG, __doc__, AflowConfig, AFLOW_EMBEDDED, argv)


if __name__ == "__main__":
    run_cli(PROG, main)

"""`python -m scoreflow.adas`: the ADAS baseline, Meta Agent Search (Hu et al. 2024; PAPERS.md
§S6), a search for one workflow for the whole task, on the validation split, resumable.

    python -m scoreflow.adas                       # the embedded preset: a small CPU run
    python -m scoreflow.adas --task drop --executor-url https://api.openai.com/v1 \\
        --executor-model gpt-4o-mini --optimizer-model gpt-4o --out runs/adas-drop

The archive starts with the static baselines the task can run, each evaluated; each generation
the meta agent reads the archive (every member's code and fitness), proposes a new workflow,
reflects on it twice, and fixes it while it fails (up to --debug-max checks and evaluations);
the evaluated workflow joins the archive with ADAS's fitness, the bootstrap median and 95%
interval of its run scores (scoreflow/search/adas.py says every rule and where its constants
come from). The best member goes to OUT/best_workflow.py, for `python -m scoreflow.evaluate
--workflows adas=FILE`; the per-generation log to OUT/generations.jsonl. Rerun the same command
after a crash or kill to resume.

Defaults are ADAS's, with --rounds generations (20). With no URL both models run here (the
embedded Qwen2.5-Coder-0.5B is the meta agent, SmolLM2-135M runs the workflows) with the
embedded preset ("embedded preset" below); the first line of a run names the defaults in force.
"""

from __future__ import annotations

from .cli import run_cli
from .search import command
from .search.config import ADAS_EMBEDDED, AdasConfig

PROG = "scoreflow.adas"


def main(argv: list[str] | None = None) -> None:
    command.main(PROG, __doc__, AdasConfig, ADAS_EMBEDDED, argv)


if __name__ == "__main__":
    run_cli(PROG, main)

"""How often the embedded generator writes a valid workflow under the generator prompt as it is
now (the question is the problem the workflow is written for, as in the reference
implementation) and as it was before (the question shown "for context only").

    python bench/experiments/prompt_valid_rate.py                       # HISTORY.md, "#28 item 4"
    python bench/experiments/prompt_valid_rate.py --questions 2 --k 4   # a quick look

Both prompts share the system message (the guide) and differ only in the user turn. Questions
are GSM8K validation questions, in two halves; each half is sampled under both prompts back to
back (one batch per prompt, every question's k samples together as the loop samples them; the
second half swaps which prompt goes first), with the same seeds and the embedded preset's
sampling (temperature 0.7, top-p 0.95, 384 new tokens), and every workflow goes through the
loop's own checks and dry run (optimize/stages.py check_and_dry_run, with the embedded preset's
settings: invalid workflows kept). Prints valid rate, operator-call rate and the reasons workflows were invalid, per prompt.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

from scoreflow.optimize import stages
from scoreflow.optimize.config import resolve
from scoreflow.optimize.generator import RESPONSE_PREFIX, make_generator
from scoreflow.tasks import load_task
from scoreflow.workflow.prompts import generator_prompt

EARLIER_USER_TURN = ("An example problem of this kind (for context only):\n\n{question}\n\n"
                     "Write a workflow that solves problems like this one well. Reply with it between <graph> and "
                     "</graph>.")


def prompts(question: str) -> dict[str, list[dict[str, str]]]:
    now = generator_prompt("math", question)
    return {"now": now, "earlier": [now[0], {"role": "user", "content": EARLIER_USER_TURN.format(question=question)}]}


def reason(problem: str) -> str:
    """A validation problem without its details: "line 27: invalid syntax" -> "does not parse"."""
    head = problem.split(":")[0].split("(")[0].strip()
    return "does not parse" if head.startswith("line ") else head


def main(n_questions: int, k: int) -> None:
    cfg = resolve({"limit": n_questions, "k": k})
    task = load_task("gsm8k", "validate")
    questions = task.questions[:n_questions]
    generator = make_generator(cfg, None)
    it = stages.Iteration(0, Path(tempfile.mkdtemp()), cfg, task)
    counts = {name: collections.Counter() for name in ("now", "earlier")}
    seconds = collections.Counter()
    # One batch per prompt (every question's k samples together, as the loop samples them),
    # the two batches back to back; the question halves swap which prompt goes first.
    half = (len(questions) + 1) // 2
    for part, order in ((questions[:half], ("now", "earlier")), (questions[half:], ("earlier", "now"))):
        for name in order:
            if not part:
                continue
            ids = [generator.tokenizer.encode(generator.tokenizer.apply_chat_template(prompts(q.prompt)[name])
                                              + RESPONSE_PREFIX) for q in part]
            t0 = time.monotonic()
            samples = generator.sample(ids, k, [it.seed(questions.index(q), 0) for q in part])
            seconds[name] += time.monotonic() - t0
            for w in (w for ws in stages.check_and_dry_run(samples, it) for w in ws):
                counts[name]["workflows"] += 1
                counts[name]["valid"] += w["valid"]
                for problem in w["problems"]:
                    counts[name][f"invalid: {reason(problem)}"] += 1
            print(f"{name}: {counts[name]['valid']}/{counts[name]['workflows']} valid so far", flush=True)
    print(f"\n{len(questions)} GSM8K validation questions x {k} samples per prompt, {cfg.generator}\n")
    print("| prompt | valid rate | generation s |\n|---|---|---|")
    for name, c in counts.items():
        print(f"| {name} | {c['valid']}/{c['workflows']} = {c['valid'] / c['workflows']:.2f} | {seconds[name]:.0f} |")
    reasons = sorted({r for c in counts.values() for r in c if r.startswith("invalid: ")})
    print("\n| why invalid | now | earlier |\n|---|---|---|")
    for r in reasons:
        print(f"| {r[len('invalid: '):]} | {counts['now'][r]} | {counts['earlier'][r]} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    main(args.questions, args.k)

"""ScoreFlow's claim on real execution: `python bench/bench_learning.py --real [--pilot]`.

Everything runs through the commands a user runs, as subprocesses: `python -m scoreflow.train`
and `python -m scoreflow.evaluate`, with real executions of every workflow by an executor LLM
served on loopback (or --executor-url). Each command resumes what its folder holds, so rerunning
the same bench command after a kill redoes nothing that finished.

--pilot (picks the task): per task and executor, on the first --pilot-limit *validation*
questions (the test split stays unseen), one run each: the untrained generator's first sample
(no resampling: its valid rate), and the static baselines IO, CoT, CoT-SC and the family's
operator baseline (Programmer for math, Test for code); the generator samples once per task, and every
executor runs those workflows. Table: valid rate, solve rate per
method, executor tokens per workflow run, wall time.

The experiment (the default):
  1. train: `scoreflow.train --split validate --limit TRAIN --k K --iterations T` per arm
     (score_dpo: the paper's loss and P*; dpo: `--loss dpo --pair-gap uniform`, with --dpo);
  2. evaluate on the first TEST test questions, the same seeds for every arm:
     `scoreflow.evaluate --adapter ARM/iter_{T-1}/adapter --baselines BEST` (the untrained
     generator and the static baselines (the pilot's best) come with the first arm; later arms add only their
     trained row);
  3. the table: per arm, solve rate ± 95% interval over questions (a question's value is the
     mean over its runs; an invalid workflow scores 0), the paired difference to the untrained
     generator ± 95% interval (the question is the unit), valid rate, operator use (the
     workflow awaits an operator), executor tokens per question, and the time of every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_learning import interval, operators_awaited

PILOT_TASKS = ("gsm8k", "mbpp", "humaneval")
PILOT_EXECUTORS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
OPERATOR_BASELINE = {"gsm8k": "programmer", "math": "programmer", "mbpp": "test", "humaneval": "test"}


def command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"scoreflow.{module}", *args]


def stage(name: str, argv: list[str], out: Path, log: Path) -> float:
    """Run one command to completion (resuming its folder), its output appended to `log`;
    returns its wall seconds over every invocation so far (OUT/stages.json: a resumed stage adds up)."""
    times_file = out / "stages.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    with open(log, "a") as sink:
        code = subprocess.run(argv, stdout=sink, stderr=subprocess.STDOUT).returncode
    times[name] = round(times.get(name, 0.0) + time.monotonic() - t0, 1)
    times_file.write_text(json.dumps(times, indent=2) + "\n")
    if code != 0:
        sys.exit(f"{name} failed (exit {code}); its output is in {log}; rerun the same command to resume")
    return times[name]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def per_question(method_dir: Path) -> dict[str, dict]:
    """One record per question of an evaluated method: score (mean over runs, 0 when no valid
    workflow), valid, operator use, executor tokens summed over runs, runs."""
    workflows = {w["question_id"]: w for w in read_jsonl(method_dir / "workflows.jsonl")}
    runs: dict[str, list[dict]] = {q: [] for q in workflows}
    for e in read_jsonl(method_dir / "executions.jsonl"):
        runs[e["question_id"]].append(e)
    rows = {}
    for q, w in workflows.items():
        scored = [e["score"] for e in runs[q] if e["score"] is not None]
        rows[q] = {"score": statistics.fmean(scored) if w["valid"] and scored else 0.0, "valid": bool(w["valid"]),
                   "operators": bool(operators_awaited(w["code"], anywhere=True)) if w["valid"] else False,
                   "tokens": sum(e["prompt_tokens"] + e["completion_tokens"] for e in runs[q]),
                   "runs": len(runs[q]), "timeouts": sum(e["status"] == "timeout" for e in runs[q])}
    return rows


def arm_row(name: str, rows: dict[str, dict], untrained: dict[str, dict] | None) -> dict:
    mean, half = interval([r["score"] for r in rows.values()])
    row = {"arm": name, "questions": len(rows), "solve": mean, "solve_ci": half,
           "valid": statistics.fmean(r["valid"] for r in rows.values()),
           "operator_use": statistics.fmean(r["operators"] for r in rows.values()),
           "tokens_per_question": statistics.fmean(r["tokens"] / max(1, r["runs"]) for r in rows.values())}
    if untrained is not None and rows is not untrained:
        row["diff"], row["diff_ci"] = interval([rows[q]["score"] - untrained[q]["score"] for q in rows])
    return row


def table(rows: list[dict]) -> str:
    lines = ["| arm | questions | solve rate ± 95% | paired diff to untrained ± 95% | valid | operator use "
             "| executor tokens / question and run |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = f"{r['diff']:+.3f} ± {r['diff_ci']:.3f}" if "diff" in r else "-"
        lines.append(f"| {r['arm']} | {r['questions']} | {r['solve']:.3f} ± {r['solve_ci']:.3f} | {diff} | "
                     f"{r['valid']:.2f} | {r['operator_use']:.2f} | {r['tokens_per_question']:.0f} |")
    return "\n".join(lines)


def pilot(args: argparse.Namespace, out: Path) -> None:
    rows = []
    for task in args.tasks:
        baselines = ["io", "cot", "cot_sc", OPERATOR_BASELINE[task]]
        for n, executor in enumerate(args.executors):
            folder = out / f"{task}-{executor}"
            shared = out / f"{task}-{args.executors[0]}" / "untrained" / "workflows.jsonl"
            if n and shared.exists() and not (folder / "untrained" / "workflows.jsonl").exists():
                (folder / "untrained").mkdir(parents=True)  # the same generator and seeds: sample once per task
                shutil.copy(shared, folder / "untrained" / "workflows.jsonl")
            seconds = stage(f"pilot {task} {executor}", command(
                "evaluate", "--task", task, "--split", "validate", "--limit", str(args.pilot_limit), "--runs", "1",
                "--max-resample", "0", "--judge", "off", "--baselines", ",".join(baselines),
                "--executor-model", executor, *args.passthrough, "--out", str(folder)), out, out / "pilot.log")
            row = pilot_row(task, executor, folder, baselines, seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
            (out / "pilot.json").write_text(json.dumps(rows, indent=2) + "\n")  # a stopped pilot keeps its rows
    print("\n" + pilot_table(rows))


def pilot_row(task: str, executor: str, folder: Path, baselines: list[str], seconds: float) -> dict:
    """Valid rate of the untrained generator's first samples; per method the solve rate over the
    questions, executor tokens per executed run, and runs cut by the time limit."""
    methods = {"generator (untrained)": folder / "untrained", **{b: folder / f"baseline-{b}" for b in baselines}}
    measured = {name: per_question(d) for name, d in methods.items()}
    ran = {name: [r for r in m.values() if r["runs"]] for name, m in measured.items()}
    return {"task": task, "executor": executor, "seconds": round(seconds),
            "valid": statistics.fmean(r["valid"] for r in measured["generator (untrained)"].values()),
            "solve": {name: statistics.fmean(r["score"] for r in m.values()) for name, m in measured.items()},
            "tokens": {name: statistics.fmean(r["tokens"] / r["runs"] for r in m) if m else 0.0
                       for name, m in ran.items()},
            "timeouts": {name: sum(r["timeouts"] for r in m) for name, m in ran.items()}}


def pilot_table(rows: list[dict]) -> str:
    lines = ["| task | executor | untrained valid | solve: untrained / io / cot / cot_sc / operator baseline "
             "| executor tokens per run (same order) | runs cut at the time limit (same order) | wall |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        solve, tokens, cut = (" / ".join(spec.format(v) for v in r[key].values())
                              for key, spec in (("solve", "{:.2f}"), ("tokens", "{:.0f}"), ("timeouts", "{}")))
        lines.append(f"| {r['task']} | {r['executor']} | {r['valid']:.2f} | {solve} | {tokens} | {cut} | "
                     f"{r['seconds']} s |")
    return "\n".join(lines)


def experiment(args: argparse.Namespace, out: Path) -> None:
    log, arms = out / "experiment.log", ["score_dpo"] + (["dpo"] if args.dpo else [])
    common = ["--task", args.task, "--executor-model", args.executor, "--seed", str(args.seed), *args.passthrough]
    evaluated, run = {}, stage if not args.table_only else lambda *_: None
    for n, arm in enumerate(arms):
        loss = ["--loss", "dpo", "--pair-gap", "uniform"] if arm == "dpo" else []
        run(f"train {arm}", command("train", "--split", "validate", "--limit", str(args.train_limit), "--k",
                                      str(args.k), "--iterations", str(args.iterations), *loss, *common,
                                      *shlex.split(args.train_args),
                                      "--out", str(out / f"train-{arm}")), out, log)
        folder = out / f"eval-{arm}"
        others = ["--baselines", ",".join(args.baselines)] if n == 0 else ["--baselines", "none", "--no-untrained"]
        run(f"evaluate {arm}", command("evaluate", "--split", "test", "--limit", str(args.test_limit), "--runs",
                                         str(args.runs), "--judge", "off", "--adapter",
                                         str(out / f"train-{arm}" / f"iter_{args.iterations - 1}" / "adapter"),
                                         *others, *common, *shlex.split(args.eval_args), "--out", str(folder)),
              out, log)
        evaluated[f"trained ({arm})"] = folder / "trained"
    first = out / f"eval-{arms[0]}"
    folders = {"untrained": first / "untrained", **evaluated,
               **{f"baseline {b}": first / f"baseline-{b}" for b in args.baselines}}
    measured = {name: per_question(d) for name, d in folders.items()}
    unfinished = {name: f"{sum(r['runs'] for r in m.values())} of {args.runs * sum(r['valid'] for r in m.values())} "
                        f"runs, {len(m)} of {args.test_limit} questions sampled"
                  for name, m in measured.items() if not finished(m, args.runs, args.test_limit)}
    if "untrained" in unfinished:
        sys.exit(f"the untrained generator's evaluation has not finished ({unfinished['untrained']}): no table yet")
    rows = [arm_row(name, m, measured["untrained"]) for name, m in measured.items() if name not in unfinished]
    stages = json.loads((out / "stages.json").read_text())
    training = {arm: read_jsonl(out / f"train-{arm}" / "summary.jsonl") for arm in arms}
    agreement = runs_agree(out / f"train-{arms[0]}")
    (out / "results.json").write_text(json.dumps({"rows": rows, "unfinished": unfinished, "stages": stages,
                                                  "training": training, "training_runs_agree": agreement},
                                                 indent=2) + "\n")
    print(f"\n{table(rows)}\n" + "".join(f"\nunfinished, left out: {name} ({done})" for name, done in unfinished.items())
          + f"\n\nstage seconds: {json.dumps(stages)}\ntraining: {json.dumps(training)}\n"
          f"training workflows whose runs all scored the same: "
          f"{'n/a (one run each)' if agreement is None else f'{agreement:.2f}'}")


def finished(rows: dict[str, dict], runs: int, questions: int) -> bool:
    """Every question sampled and every valid workflow run `runs` times."""
    return len(rows) == questions and all(r["runs"] >= runs for r in rows.values() if r["valid"])


def runs_agree(train_dir: Path) -> float:
    """Of the workflows training executed more than once, the fraction whose runs all scored the
    same: how much a test question gains from more than one run."""
    scores: dict[str, list] = {}
    for path in train_dir.glob("iter_*/executions.jsonl"):
        for e in read_jsonl(path):
            scores.setdefault(e["workflow_id"], []).append(e["score"])
    repeated = [s for s in scores.values() if len(s) > 1]
    return statistics.fmean(len(set(s)) == 1 for s in repeated) if repeated else None


def intervals(evaluated: Path) -> None:
    """The table of a finished `scoreflow.evaluate` OUT, every method it holds, with the 95%
    intervals over questions and the paired differences to the untrained generator."""
    if not (evaluated / "results.json").is_file():
        sys.exit(f"{evaluated}: no results.json; pass the --out folder of a finished scoreflow.evaluate")
    names = [m["method"] for m in json.loads((evaluated / "results.json").read_text())["methods"]]
    folder = {"generator (untrained)": "untrained", "scoreflow (trained)": "trained"}
    per = {n: per_question(evaluated / folder.get(n, n.replace(" ", "-", 1))) for n in names}
    untrained = per.get("generator (untrained)")
    print(table([arm_row(n, rows, untrained) for n, rows in per.items()]))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench/bench_learning.py --real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Flags after -- go to every scoreflow command unchanged (e.g. "
                                        "--executor-url URL, --generator DIR).")
    ap.add_argument("--real", action="store_true", required=True)
    ap.add_argument("--pilot", action="store_true", help="run the pilot that picks the task")
    ap.add_argument("--tasks", nargs="+", default=list(PILOT_TASKS), help="pilot: tasks")
    ap.add_argument("--executors", nargs="+", default=list(PILOT_EXECUTORS), help="pilot: executor models")
    ap.add_argument("--pilot-limit", type=int, default=8, help="pilot: validation questions per task")
    ap.add_argument("--task", default="mbpp")
    ap.add_argument("--executor", default="qwen2.5-coder-0.5b-instruct", help="executor model served on loopback")
    ap.add_argument("--train-limit", type=int, default=32, help="validation questions to train on")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=100, help="held-out test questions")
    ap.add_argument("--runs", type=int, default=1, help="executions per test workflow (the paper: 3)")
    ap.add_argument("--baselines", type=lambda text: text.split(","), default=["io", "test"],
                    help="static baselines evaluated beside the arms (comma list; the pilot's best)")
    ap.add_argument("--dpo", action="store_true", help="also train and evaluate a plain-DPO arm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-args", default="", help="more flags for scoreflow.train, e.g. '--pairs 64'")
    ap.add_argument("--eval-args", default="", help="more flags for scoreflow.evaluate")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: the table of the arms that have finished (while the experiment runs, or after "
                         "it was stopped); the unfinished ones are named")
    ap.add_argument("--intervals", metavar="EVAL_OUT", type=Path,
                    help="run nothing: the table of a finished `scoreflow.evaluate` folder, every method with its "
                         "95%% interval over questions and its paired difference to the untrained generator")
    ap.add_argument("--out", default="runs/bench-learning-real")
    own, passthrough = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = ap.parse_args(own)
    args.passthrough = passthrough
    if args.intervals:
        return intervals(args.intervals)
    out = Path(args.out) / ("pilot" if args.pilot else "experiment")
    out.mkdir(parents=True, exist_ok=True)
    print(f"# bench_learning --real{' --pilot' if args.pilot else ''}: {platform.machine()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    (pilot if args.pilot else experiment)(args, out)

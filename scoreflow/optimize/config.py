"""RunConfig: every setting of a ScoreFlow run, defaults equal to the paper's (PAPERS.md §S4).

When everything runs here (an embedded generator, a model known by name, Qwen2.5-Coder-0.5B
by default, and no generator or executor URL), the run uses the EMBEDDED preset below and the
embedded SmolLM2-135M serves the operators on loopback: a small but real optimisation that
finishes on a 2-core CPU. A real endpoint for either model gets the paper's defaults. Any flag
the user sets wins over both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

from ..cli import CONCURRENCY, SEED, Bounds, Preset, check_settings, flag
from ..dpo.pairs import GAPS
from ..dpo.config import TrainConfig
from ..engine.sampling_ranges import MAX_TOKENS, TEMPERATURE, TOP_P
from ..executor.client import price_for
from ..executor.reachable import CHAT, COMPLETIONS, PREFLIGHT_TIMEOUT, require_answering
from ..llama.registry import DEFAULT_GENERATOR, DEFAULT_MODEL, is_embedded, resolve_model_dir
from ..tasks.registry import TASK_NAMES
from ..workflow.prompts import EXTRA_OPERATORS
from .cost import COST_UNITS


GENERATE_ROWS = 32  # sequences the in-process generator decodes together (optimize/generator.py)
KV_ROUND = 256  # its KV cache holds a multiple of this many positions per row

# not stored with a run: they do not change its results
NOT_SETTINGS = {"api_key", "preflight_timeout", "generator_concurrency"}
PAPER_PAIRS = {"humaneval": 600}  # N per task in the reference code; 2000 for every other task


@dataclass(frozen=True)
class RunConfig:
    task: str = flag("gsm8k", "Benchmark to run on.", choices=TASK_NAMES)
    split: str = flag("validate", "Split of the task to optimise on (the paper: validate).", choices=("validate", "test"))
    data_dir: str | None = flag(None, "Folder holding aflow/ and magicore/ (default: $SCOREFLOW_DATA, else the "
                                      "copy shipped in the package).")
    limit: int | None = flag(None, "Use only the first N questions (default: all).", bounds=(1, 10**7),
                             none_as="all")
    # generator G: our engine in-process on a local model, or an OpenAI /v1/completions endpoint
    generator: str = flag(DEFAULT_GENERATOR, "Generator G: a known model name or an HF-format directory, run by "
                                             "our engine in this process.")
    generator_url: str | None = flag(None, "Use an OpenAI-compatible /v1/completions endpoint (e.g. vLLM) as the "
                                           "generator instead.")
    generator_model: str | None = flag(None, "Model name at --generator-url.")
    device: str = flag("auto", "Where the generator runs and trains: auto = cuda when torch sees a GPU, else cpu "
                               "(fp32 on CPU, bf16 weights on CUDA).", choices=("auto", "cpu", "cuda"))
    generator_concurrency: int = flag(64, "Requests (one per question, k workflows each) in flight at once at "
                                          "--generator-url.", bounds=CONCURRENCY)
    # executor: any OpenAI-compatible chat endpoint; None = serve the default model on loopback
    executor_url: str | None = flag(None, "OpenAI-compatible chat endpoint that runs the operators (default: the "
                                          "embedded model served by scoreflow on loopback).")
    executor_model: str | None = flag(None, "Model name at --executor-url, e.g. gpt-4o-mini; without --executor-url, "
                                            "the model served on loopback: a known name or an HF-format directory "
                                            f"(default: {DEFAULT_MODEL}).")
    api_key: str | None = flag(None, "API key for the endpoints (default: $OPENAI_API_KEY); never written to disk.",
                               compare=False, repr=False)
    executor_concurrency: int = flag(16, "Executor requests in flight at once.", bounds=CONCURRENCY)
    executor_max_tokens: int | None = flag(None, "Completion-token cap for operator calls that set none (default: "
                                                 "the endpoint's own).", bounds=MAX_TOKENS)
    preflight_timeout: float = flag(30.0, "Seconds an endpoint gets to answer a 1-token request before the run "
                                          "starts; one that accepts connections but answers nothing fails then.",
                                    bounds=PREFLIGHT_TIMEOUT)
    iterations: int = flag(3, "Optimisation iterations: generate, execute, score, pairs, Score-DPO.",
                           bounds=(1, 1000))
    k: int = flag(8, "Workflows sampled per question and iteration.", bounds=(1, 1024))
    runs: int = flag(3, "Executions per workflow, each a real request; the workflow's score is their mean. A "
                        "deterministic executor at temperature 0 (the embedded one) repeats itself exactly.",
                   bounds=(1, 1000))
    pairs: int | None = flag(None, "Preference pairs N drawn with replacement from P* per iteration (default: 600 "
                                   "for HumanEval, 2000 for the others, as in the reference).", bounds=(1, 10**8))
    pair_gap: str = flag("cubic", "d in P*(w,l) ∝ d(s_w, s_l): cubic = (s_w - s_l)^3 (the paper), uniform = plain "
                                  "DPO's uniform pairs.", choices=tuple(GAPS))
    temperature: float = flag(0.2, "Generator sampling temperature.", bounds=TEMPERATURE)
    top_p: float = flag(0.95, "Generator nucleus (top-p) sampling threshold.", bounds=TOP_P)
    max_new_tokens: int = flag(1000, "Generator tokens per workflow at most (sampling stops at </graph>).",
                               bounds=MAX_TOKENS)
    invalid: str = flag("drop", "An invalid workflow: drop = resample, then drop it (the paper); zero = keep it "
                                "with score 0.", choices=("drop", "zero"))
    max_resample: int = flag(3, "Rounds of resampling invalid workflows in drop mode.", bounds=(0, 100))
    # Reward shaping for "zero" mode (ours, not the paper's: 0 keeps the evaluator's score): a
    # valid workflow scores floor + (1 - floor) * S, so valid-but-wrong beats invalid.
    valid_floor: float = flag(0.0, "Reward shaping in zero mode (ours, not the paper's): a valid workflow scores "
                                   "floor + (1 - floor) * S.", bounds=Bounds(0, 1, high_open=True))
    cost_weight: float = flag(0.0, "Cost-aware scores (ours, not the paper's): a workflow that solves its question "
                                   "scores s - weight * cost / (its question's median cost), clipped to [0, 1]; 0 = "
                                   "the paper.", bounds=(0, 1))
    cost_unit: str = flag("tokens", "What --cost-weight counts per run: executor tokens, dollars (the executor's "
                                    "list price), or LLM calls.", choices=COST_UNITS)
    workflow_timeout_s: float | None = flag(None, "Wall-clock limit of one workflow run in seconds (default: 120 "
                                                  "math/QA, 240 code).", bounds=Bounds(0, 86400, low_open=True))
    operators: str = flag("", "Operators added to the paper's set, e.g. +MagicoreRefine (ours, math only); "
                              "default: the paper's operators.")
    lora_r: int = flag(8, "LoRA rank on q_proj and v_proj.", bounds=(1, 4096))
    lora_alpha: float = flag(16.0, "LoRA alpha (the update is scaled by alpha / r).",
                             bounds=Bounds(0, 1e6, low_open=True))
    lora_dropout: float = flag(0.01, "LoRA dropout.", bounds=Bounds(0, 1, high_open=True))
    dpo: TrainConfig = field(default_factory=TrainConfig)
    seed: int = flag(0, "Base seed of workflow sampling (and in training of the pair draws and LoRA).",
                     bounds=SEED)

    def __post_init__(self):
        if self.pairs is None:  # the reference's N per task; stored resolved, so a resume compares numbers
            object.__setattr__(self, "pairs", PAPER_PAIRS.get(self.task, 2000))
        unknown = [name for name in self.extra_operators if name not in EXTRA_OPERATORS]
        if unknown or any(not part.startswith("+") for part in self.operators.split(",") if part):
            raise ValueError(f"operators: {self.operators!r} is not a comma list of +Name with a name from "
                             f"{', '.join(EXTRA_OPERATORS)}")
        if self.pair_gap not in GAPS:
            raise ValueError(f"pair_gap must be one of {', '.join(GAPS)}, got {self.pair_gap!r}")
        if self.invalid not in ("drop", "zero"):
            raise ValueError(f"invalid must be 'drop' or 'zero', got {self.invalid!r}")
        check_settings(self)
        if self.cost_weight and self.cost_unit == "dollars" and self.price is None:
            raise ValueError(f"--cost-unit dollars: the executor {self.executor_model or DEFAULT_MODEL!r} has no list "
                             "price (a local model costs no dollars); use --cost-unit tokens or calls")

    @property
    def price(self) -> tuple[float, float] | None:
        """USD per 1M prompt and completion tokens of the executor, where the price list knows it."""
        return price_for(self.executor_model or DEFAULT_MODEL)

    @property
    def extra_operators(self) -> tuple[str, ...]:
        """"+MagicoreRefine" -> ("MagicoreRefine",)."""
        return tuple(part.strip().lstrip("+") for part in self.operators.split(",") if part.strip())

    @property
    def embedded(self) -> bool:
        """Both models are ours, on this machine: no endpoint is given and the generator is an
        embedded model. The embedded preset applies only then."""
        return self.generator_url is None and self.executor_url is None and is_embedded(self.generator)

    def to_json(self) -> str:
        """The settings that decide the results (not the API key, a credential, nor the pre-flight
        check's patience), and which defaults they started from ("preset", recomputed from the rest when read back)."""
        return json.dumps({**stored_settings(self), "preset": EMBEDDED.in_force(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = {k: v for k, v in d.items() if k != "preset"}
        d["dpo"] = TrainConfig(**d.get("dpo", {}))
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown RunConfig fields {sorted(unknown)}")
        return cls(**d)


# The preset of an embedded generator (the no-flag run): 4 GSM8K questions, 8 workflows each (the
# paper's k), 1 run each (our greedy executor would repeat itself exactly: more runs cost time
# and add no information), 2 iterations; invalid workflows kept with score 0 and valid ones
# lifted to >= 0.1, so a small generator first learns to write valid ones; a larger learning
# rate and sampling temperature than the paper so that a few dozen pairs move the policy
# visibly; one Score-DPO step per question (the same objective, far less compute than a step
# per pair: bench/RESULTS.md, "Score-DPO by influence"), with activations recomputed in the
# backward pass: a question's packed pass holds up to ~4,000 tokens (a 1,000-token prompt and 8
# workflows of up to 384), whose Qwen activations did not fit the development machine's memory
# without it (bench/RESULTS.md, "Memory of the preset's Score-DPO pass"). It shows the
# mechanism, not the paper's accuracy.
EMBEDDED = Preset(dict(limit=4, k=8, runs=1, pairs=32, iterations=2, invalid="zero", valid_floor=0.1,
                       max_new_tokens=384, temperature=0.7, executor_max_tokens=256, executor_concurrency=8,
                       dpo=TrainConfig(lr=1e-4, warmup_steps=2, dpo_grouping="question",
                                      gradient_checkpointing=True)),
                  applies=lambda cfg: cfg.embedded)


def stored_settings(config) -> dict:
    """A run's settings dataclass as the dict its run directory stores: without NOT_SETTINGS."""
    return {k: v for k, v in asdict(config).items() if k not in NOT_SETTINGS}


def resolve(overrides: dict, dpo_overrides: dict | None = None) -> RunConfig:
    """Paper defaults, then the embedded preset (if both models are embedded and local), then the user's flags
    (`dpo_overrides` are TrainConfig fields)."""
    cfg = EMBEDDED.resolve(RunConfig, overrides)
    return replace(cfg, dpo=replace(cfg.dpo, **(dpo_overrides or {})))


def check_endpoints(cfg: RunConfig) -> None:
    """Fail now, in one line, on a generator or executor the run could not use. The executor
    first: converting the generator takes a minute the executor's error should not wait for."""
    patience = dict(api_key=cfg.api_key, timeout_s=cfg.preflight_timeout)
    check_model(cfg.executor_url, "--executor-url", cfg.executor_model or DEFAULT_MODEL, **patience)
    check_model(cfg.generator_url, "--generator-url", cfg.generator_model or cfg.generator, route=COMPLETIONS,
                **patience)


def check_model(url: str | None, flag: str, model: str, *, api_key: str | None, timeout_s: float,
                route: str = CHAT) -> None:
    """UserError, one line, unless `url` answers a 1-token request for `model` within `timeout_s`,
    or, with no URL, the local `model` (served on loopback or in-process) is found: an unknown
    name, a missing package, a folder without config.json."""
    if url:
        require_answering(url, flag, model, api_key=api_key, timeout_s=timeout_s, route=route)
    else:
        resolve_model_dir(model)


def stored_form(cfg: RunConfig) -> tuple[dict, Callable[[dict], dict]]:
    """What RUN/config.json holds for `cfg`, and how a stored one is read in today's form (the
    defaults of fields added since); a resumed run must hold the same (rundir.save_or_check_settings)."""
    return json.loads(cfg.to_json()), lambda d: json.loads(RunConfig.from_dict(d).to_json())

"""Settings of the two searches: SearchConfig (what AFlow and ADAS share) and one subclass per
method holding its own defaults, each with the reference file it comes from.

Shared defaults: 20 rounds for both (AFlow's `max_rounds`, examples/aflow/optimize.py in
FoundationAgents/MetaGPT; ADAS is run as long here, for the comparison, where its own
_mmlu/search.py and _drop/search.py default to `n_generation` 30); the validation split; the
optimiser LLM is the executor's model at the executor's endpoint unless --optimizer-url or
--optimizer-model names another. With neither URL, both models run here: the embedded
Qwen2.5-Coder-0.5B writes workflows (the 135M executor cannot write code) and SmolLM2-135M
runs them, each served on loopback, with the EMBEDDED preset of the method (a few questions,
a few rounds: a run of minutes on 2 cores, showing the mechanism, not the papers' numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..cli import SEED, Preset, check_settings, flag
from ..engine.sampling_ranges import MAX_TOKENS, TEMPERATURE
from ..llama.registry import DEFAULT_GENERATOR, DEFAULT_MODEL
from ..optimize.config import RunConfig

ROUNDS = (1, 1000)
RUNS = (1, 1000)


@dataclass(frozen=True)
class SearchConfig:
    """What both searches read. Fields without help borrow RunConfig's flag (same name, same text)."""

    task: str = "gsm8k"
    split: str = "validate"
    data_dir: str | None = None
    limit: int | None = None
    rounds: int = flag(20, "Optimisation rounds (ADAS: generations), each one candidate workflow written by the "
                           "optimiser LLM and evaluated (AFlow's max_rounds: 20).", bounds=ROUNDS)
    runs: int = flag(1, "Executions of every candidate on every validation question.", bounds=RUNS)
    optimizer_url: str | None = flag(None, "OpenAI-compatible chat endpoint of the optimiser LLM that writes the "
                                           "candidates (default: the executor's endpoint; with no URL at all, the "
                                           f"embedded {DEFAULT_GENERATOR} served on loopback).")
    optimizer_model: str | None = flag(None, "Model name of the optimiser (default: the executor's model; served "
                                             f"here: {DEFAULT_GENERATOR}).")
    optimizer_temperature: float = flag(0.0, "Sampling temperature of the optimiser.", bounds=TEMPERATURE)
    optimizer_max_tokens: int | None = flag(None, "Completion-token cap of an optimiser reply (default: the "
                                                  "endpoint's own).", bounds=MAX_TOKENS)
    executor_url: str | None = None
    executor_model: str | None = None
    api_key: str | None = field(default=None, compare=False, repr=False)
    executor_concurrency: int = 16
    executor_max_tokens: int | None = None
    preflight_timeout: float = 30.0
    workflow_timeout_s: float | None = None
    seed: int = flag(0, "Seed of the search's random choices (parent selection, the failures shown, the "
                        "bootstrap).", bounds=SEED)

    def __post_init__(self):
        check_settings(self, like=RunConfig)

    @property
    def embedded(self) -> bool:
        """Both models run here (no URL given); the method's embedded preset applies only then."""
        return self.optimizer_url is None and self.executor_url is None

    @property
    def optimizer(self) -> tuple[str | None, str]:
        """(URL, model name) of the optimiser LLM; URL None: serve the model here, on loopback."""
        if self.optimizer_url or self.executor_url:
            return self.optimizer_url or self.executor_url, self.optimizer_model or self.executor_model or DEFAULT_MODEL
        return None, self.optimizer_model or DEFAULT_GENERATOR

    def run_config(self) -> RunConfig:
        """The settings the shared execution stage reads (optimize/stages.py): R runs per workflow."""
        shared = {f.name for f in fields(RunConfig)} & {f.name for f in fields(self)}
        return RunConfig(**{name: getattr(self, name) for name in shared}, k=1, invalid="drop")


@dataclass(frozen=True)
class AflowConfig(SearchConfig):
    """AFlow's constants, from FoundationAgents/MetaGPT: validation_rounds 5 (scripts/optimizer.py,
    examples/aflow/optimize.py); the convergence check on (examples/aflow/optimize.py
    `check_convergence` True); the optimiser at temperature 0 (MetaGPT's LLMConfig default and
    examples/aflow/config2.example.yaml)."""

    runs: int = flag(5, "Executions of every candidate on every validation question; a round's score is their "
                        "mean (AFlow: validation_rounds 5).", bounds=RUNS)
    optimizer_temperature: float = flag(0.0, "Sampling temperature of the optimiser (AFlow's configuration: 0).",
                                        bounds=TEMPERATURE)
    attempts: int = flag(3, "Optimiser replies per round at most: a child that fails its checks (or repeats an "
                            "earlier modification of its parent) costs one, and a round without a valid child adds "
                            "none (ours: the reference asks again without a bound).", bounds=(1, 100))
    early_stop: bool = flag(True, "Stop early by AFlow's convergence rule: the mean of the top 3 round scores "
                                  "unchanged for 5 rounds in a row.")


@dataclass(frozen=True)
class AdasConfig(SearchConfig):
    """ADAS's constants, from ShengranHu/ADAS _mmlu/search.py and _drop/search.py: n_repreat 1
    (one run per validation question), debug_max 3, the meta agent at temperature 0.8 with
    max_tokens 4096 (get_json_response_from_gpt_reflect)."""

    runs: int = flag(1, "Executions of every candidate on every validation question; the fitness bootstraps "
                        "every run's score (ADAS: n_repreat 1).", bounds=RUNS)
    optimizer_temperature: float = flag(0.8, "Sampling temperature of the meta agent (ADAS: 0.8).",
                                        bounds=TEMPERATURE)
    optimizer_max_tokens: int | None = flag(4096, "Completion-token cap of a meta-agent reply (ADAS: 4096).",
                                            bounds=MAX_TOKENS)
    debug_max: int = flag(3, "Checks and evaluations of one generation's candidate at most: each failure (a check, "
                             "or every run scoring 0) goes back to the meta agent for a fix while one is left "
                             "(ADAS: debug_max 3).", bounds=(1, 100))


# The embedded models: 4 (AFlow) or 3 (ADAS, whose archive starts with every static baseline)
# validation questions, one run each (the embedded executor is greedy: more runs repeat it
# exactly), 3 rounds (AFlow) or 2 generations (ADAS, each 3 to 5 optimiser requests of 3,000 to
# 7,000 prompt tokens); optimiser replies capped at 640 tokens (a workflow is 200-400), executor
# replies at 256 as in scoreflow.train's preset. Meant to finish in 15 minutes on 2 cores.
_SMALL = dict(runs=1, optimizer_max_tokens=640, executor_max_tokens=256, executor_concurrency=8)
AFLOW_EMBEDDED = Preset(dict(limit=4, rounds=3, **_SMALL), applies=lambda cfg: cfg.embedded)
ADAS_EMBEDDED = Preset(dict(limit=3, rounds=2, **_SMALL), applies=lambda cfg: cfg.embedded)

"""RunConfig: every setting of a ScoreFlow run, defaults equal to the paper's (SPEC A4).

With no generator or executor given, the run uses the embedded default model for both and
the EMBEDDED preset below: a small but real optimisation that finishes on a 2-core CPU. Any
flag the user sets wins over the preset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..dpo.pairs import GAPS
from ..dpo.trainer import TrainConfig
from ..llama.registry import DEFAULT_MODEL
from .rundir import save_or_check_settings


@dataclass(frozen=True)
class RunConfig:
    task: str = "gsm8k"
    split: str = "validate"
    data_dir: str | None = None
    limit: int | None = None  # use only the first N questions
    # generator G: our engine in-process on a local model, or an OpenAI /v1/completions endpoint
    generator: str = DEFAULT_MODEL
    generator_url: str | None = None
    generator_model: str | None = None
    # executor: any OpenAI-compatible chat endpoint; None = serve the default model on loopback
    executor_url: str | None = None
    executor_model: str | None = None
    api_key: str | None = field(default=None, compare=False, repr=False)  # never written to disk; $OPENAI_API_KEY
    executor_concurrency: int = 16
    executor_max_tokens: int | None = None  # cap for operator calls that set none
    iterations: int = 3
    k: int = 8  # workflows per question
    runs: int = 3  # executions per workflow
    pairs: int = 2000  # N pairs drawn with replacement from P*
    pair_gap: str = "cubic"  # d in P* ∝ d(s_w, s_l) P: "cubic" (x − y)^3 (ref) | "uniform" (plain DPO's P)
    temperature: float = 0.2
    top_p: float = 0.95
    max_new_tokens: int = 1000
    invalid: str = "drop"  # "drop": resample then drop (the reference); "zero": keep, score 0
    max_resample: int = 3  # rounds of resampling invalid workflows in "drop" mode
    # Reward shaping for "zero" mode (ours, not the paper's: 0 keeps the evaluator's score): a
    # valid workflow scores floor + (1 - floor) * S, so valid-but-wrong beats invalid.
    valid_floor: float = 0.0
    workflow_timeout_s: float | None = None  # None: 120 s math/QA, 240 s code (SPEC A3)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.01
    dpo: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self):
        if self.pair_gap not in GAPS:
            raise ValueError(f"pair_gap must be one of {', '.join(GAPS)}, got {self.pair_gap!r}")
        if self.invalid not in ("drop", "zero"):
            raise ValueError(f"invalid must be 'drop' or 'zero', got {self.invalid!r}")
        if not 0 <= self.valid_floor < 1:
            raise ValueError(f"valid_floor must be in [0, 1), got {self.valid_floor}")
        if min(self.iterations, self.k, self.runs, self.pairs) < 1:
            raise ValueError("iterations, k, runs and pairs must all be >= 1")

    @property
    def embedded(self) -> bool:
        return self.generator_url is None and self.generator == DEFAULT_MODEL

    def to_json(self) -> str:
        """The settings that decide the results (the API key is a credential, not a setting)."""
        return json.dumps({k: v for k, v in asdict(self).items() if k != "api_key"}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d)
        d["dpo"] = TrainConfig(**d.get("dpo", {}))
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown RunConfig fields {sorted(unknown)}")
        return cls(**d)


# The no-flag run: 4 GSM8K questions, 8 workflows each (the paper's k), 2 iterations; invalid workflows kept with
# score 0 and valid ones lifted to >= 0.1, so the 135M generator first learns to write valid
# ones; a larger learning rate and sampling temperature than the paper so that a few dozen
# pairs move the policy visibly. It shows the mechanism, not the paper's accuracy.
EMBEDDED = dict(limit=4, k=8, runs=3, pairs=32, iterations=2, invalid="zero", valid_floor=0.1, max_new_tokens=384,
                temperature=0.7, executor_max_tokens=256, executor_concurrency=8,
                dpo=TrainConfig(lr=1e-4, warmup_steps=2))


def resolve(overrides: dict, dpo_overrides: dict | None = None) -> RunConfig:
    """Paper defaults, then the embedded preset (if no generator given), then the user's flags
    (`dpo_overrides` are TrainConfig fields)."""
    base = RunConfig(**{k: v for k, v in overrides.items() if k in ("generator", "generator_url")})
    cfg = replace(base, **{**(EMBEDDED if base.embedded else {}), **overrides})
    return replace(cfg, dpo=replace(cfg.dpo, **(dpo_overrides or {})))


def save_or_check(cfg: RunConfig, run_dir: Path) -> None:
    """Store the resolved config; a resumed run must use the same one."""
    save_or_check_settings(run_dir, json.loads(cfg.to_json()), lambda d: json.loads(RunConfig.from_dict(d).to_json()))

"""scoreflow: ScoreFlow (Score-DPO workflow optimisation) and MAgICoRE in plain PyTorch."""

__version__ = "0.1.0"

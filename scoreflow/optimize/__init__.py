"""The ScoreFlow optimisation loop (SPEC A4): generate -> execute -> score -> pairs -> Score-DPO."""

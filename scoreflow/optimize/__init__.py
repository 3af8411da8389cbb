"""The ScoreFlow optimisation loop (PAPERS.md §S4): generate -> execute -> score -> pairs -> Score-DPO."""

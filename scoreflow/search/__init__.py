"""The automated workflow optimisers ScoreFlow's paper compares against (PAPERS.md §S6), on our
parts: AFlow (Zhang et al. 2024; aflow.py) and ADAS's Meta Agent Search (Hu et al. 2024;
adas.py). Both search for one workflow for the whole task, evaluated on the validation split
(fitness.py); an optimiser LLM writes each candidate in our workflow format, checked before it
costs an execution (optimizer.py); config.py holds their settings, command.py what their
commands share. Each writes OUT/best_workflow.py, which `python -m scoreflow.evaluate
--workflows NAME=FILE` evaluates on the test split."""

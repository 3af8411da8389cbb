"""Benchmarks: load a split as a `Task` of `Question`s and score answers rule-based.

    from scoreflow.tasks import load_task
    task = load_task("gsm8k", "validate")          # the packaged copy; data_dir= overrides
    task.score(task.questions[0], "The answer is 36.")   # -> 1.0
"""

from .base import AnswerTask, Family, Question, Task
from .code import CodeTask
from .registry import TASK_NAMES, load_task

__all__ = ["AnswerTask", "CodeTask", "Family", "Question", "Task", "TASK_NAMES", "load_task"]

"""Prompt text: what operators ask the executor, and the guide the generator reads.

Written for this project (not the reference's wording). Two audiences:

- the executor LLM: one template per operator step and per extraction kind, filled with
  `str.format` (fields in braces; literal braces doubled);
- the generator LLM (PAPERS.md §S1/§S2): per family, the template workflow (a single Custom call),
  the operators it may use with their parameters, return values and an example, and the
  rules (3-8 LLM calls; loops, ensembles and conditions welcome; no imports, no
  placeholders; the answer between <graph> and </graph>). `generator_prompt(family,
  question)` puts the guide in a system message that is the same for every question of a
  family, so all k samples and all questions share that prefix (PAPERS.md §S4), and the question
  last.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

# --------------------------------------------------------------------------- operators

# The operators each task family offers the generator (PAPERS.md §S2: the paper's set), the ones
# a run may add (ours: `--operators +MagicoreRefine`), and so what the runtime can run; and
# the attribute the template binds each one to.
PAPER_OPERATORS: dict[str, tuple[str, ...]] = {
    "math": ("Custom", "Programmer", "ScEnsemble", "Review"),
    "qa": ("Custom", "AnswerGenerate", "ScEnsemble", "Review"),
    "code": ("CustomCodeGenerate", "ScEnsemble", "Test"),
}
EXTRA_OPERATORS: dict[str, str] = {"MagicoreRefine": "math"}  # name -> the family that may add it
FAMILY_OPERATORS: dict[str, tuple[str, ...]] = {
    family: ops + tuple(name for name, f in EXTRA_OPERATORS.items() if f == family)
    for family, ops in PAPER_OPERATORS.items()}


def search_operators(family: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The operators a run offers the generator: the paper's, plus those of `extra` that the
    family may add."""
    return PAPER_OPERATORS[family] + tuple(name for name in extra if EXTRA_OPERATORS.get(name) == family)
ATTRIBUTES: dict[str, str] = {
    "Custom": "custom", "AnswerGenerate": "answer_generate", "Programmer": "programmer",
    "ScEnsemble": "sc_ensemble", "Review": "review", "CustomCodeGenerate": "custom_code_generate",
    "Test": "test", "MagicoreRefine": "magicore_refine",
}

CUSTOM = "{instruction}\n\n{input}"

ANSWER_GENERATE = """\
{input}

Work out the answer to the question above. Reason first, then answer as briefly as possible.
Reply in exactly this format:
<thought>your reasoning</thought>
<answer>only the answer: a name, number, date or short phrase, no explanation</answer>"""

PROGRAMMER = """\
Write a Python program that computes the answer to this problem.

Problem:
{problem}

Notes from an earlier analysis (may be empty or wrong):
{analysis}

Requirements:
- define a function `solve()` without parameters that computes and returns the final answer;
- use only the Python standard library; read no input and no files;
- prefer exact arithmetic (fractions.Fraction, integers) over floats where it matters.
Reply with the complete program in a single ```python block."""

PROGRAMMER_RETRY = """\
Running `solve()` failed:
{error}

Fix the program. Reply with the complete corrected program in a single ```python block."""

SC_ENSEMBLE = """\
Problem:
{problem}

Candidate solutions, each labelled with a letter:

{solutions}

Compare the final answers of the candidates. Find the answer that most candidates agree on,
and among the candidates giving it pick the one whose reasoning is clearest. Explain briefly,
then end with a line of exactly this form:
Choice: <letter>"""

REVIEW = """\
Problem:
{problem}

Proposed solution:
{solution}

Check the proposed solution critically: the reading of the problem, each step, each
calculation and the final answer. Then write the complete corrected solution, ending with
its final answer (repeat the solution unchanged if it is right).
Reply in exactly this format:
<review>what is right and what is wrong</review>
<solution>the complete corrected solution</solution>"""

CUSTOM_CODE_GENERATE = """\
{instruction}

{problem}

Write a complete, self-contained Python implementation of the function `{entry_point}`,
with the imports and helper functions it needs. Reply with the code in a single ```python block."""

TEST_REFLECT = """\
This implementation of `{entry_point}` fails the example tests.

Problem:
{problem}

Implementation:
```python
{solution}
```

Test run:
{failure}

Find the cause of the failure and fix it. Reply with the complete corrected implementation
in a single ```python block."""

EXTRACT_BOXED = """\
Problem:
{problem}

Solution:
{solution}

Copy the final answer of this solution, exactly as it is stated, into \\boxed{{}}.
Reply with \\boxed{{...}} and nothing else."""

EXTRACT_NUMBER = """\
Problem:
{problem}

Solution:
{solution}

What number is the final answer of this solution? Reply with that number only: digits,
an optional sign and decimal point, no units and no words."""

EXTRACT_CONCISE = """\
Question:
{problem}

Response:
{solution}

State the final answer of this response as briefly as possible: only the answer itself
(a name, number, date or short phrase), no explanation and no full sentence."""

# --------------------------------------------------------------------------- generator guide


@dataclass(frozen=True)
class OperatorGuide:
    """How the guide presents one operator: its parameters (as `operators.parameter_list`
    renders them; a test keeps the two in step), what it returns, what it does, an example."""

    parameters: str
    returns: str
    purpose: str
    example: str


OPERATOR_GUIDES: dict[str, OperatorGuide] = {
    "Custom": OperatorGuide(
        "instruction, input=None", '{"response": str}',
        "Asks the LLM to carry out `instruction` on `input` (the problem when left out). Use it to "
        "solve step by step, plan, check, critique, rewrite or combine earlier results.",
        'draft = await self.custom(instruction="Solve the problem step by step and state the final answer.")\n'
        'check = await self.custom(instruction="Check this solution for mistakes and give the corrected '
        'final answer:\\n" + draft["response"])'),
    "AnswerGenerate": OperatorGuide(
        "input=None", '{"thought": str, "answer": str}',
        "Reasons about `input` (the problem when left out) and returns the reasoning and a short "
        "final answer.",
        'result = await self.answer_generate()\nshort_answer = result["answer"]'),
    "Programmer": OperatorGuide(
        "analysis='None', problem=None", '{"code": str, "output": str}',
        "Writes a Python function solve() for the problem, runs it in a sandbox (up to 3 tries, "
        "feeding errors back) and returns the code and what solve() returned. Pass an earlier "
        "analysis for it to follow.",
        'plan = await self.custom(instruction="Explain how to compute the answer, step by step.")\n'
        'computed = await self.programmer(analysis=plan["response"])\n'
        'result_text = computed["output"]'),
    "ScEnsemble": OperatorGuide(
        "solutions, problem=None", '{"response": str}',
        "Given a list of candidate solutions (strings), returns the one whose final answer most "
        "candidates agree on.",
        'candidates = []\nfor i in range(3):\n'
        '    candidate = await self.custom(instruction="Solve the problem step by step.")\n'
        '    candidates.append(candidate["response"])\n'
        'best = await self.sc_ensemble(solutions=candidates)'),
    "Review": OperatorGuide(
        "pre_solution, problem=None", '{"review": str, "solution": str}',
        "Critiques a solution and returns the critique and a corrected complete solution.",
        'reviewed = await self.review(pre_solution=best["response"])\nfinal = reviewed["solution"]'),
    "MagicoreRefine": OperatorGuide(
        "solutions, problem=None", '{"response": str}',
        "Coarse-to-fine refinement of 1 to 8 candidate solutions (strings): scores each solution and "
        "each of its steps; when the candidates disagree or score low, reviews and rewrites them, "
        "then returns the solution whose final answer the best-scored candidates support. Costs "
        "about 6 LLM calls per candidate.",
        'candidates = []\nfor i in range(3):\n'
        '    candidate = await self.custom(instruction="Solve the problem step by step.")\n'
        '    candidates.append(candidate["response"])\n'
        'refined = await self.magicore_refine(solutions=candidates)\nfinal = refined["response"]'),
    "CustomCodeGenerate": OperatorGuide(
        "instruction, problem=None, entry_point=None", '{"response": str}',
        "Writes a complete implementation of the task's function following `instruction`; "
        "`response` is the code.",
        'code = await self.custom_code_generate(instruction="List the edge cases first, then '
        'implement the function.")'),
    "Test": OperatorGuide(
        "solution, problem=None, entry_point=None", '{"result": bool, "solution": str}',
        "Runs the task's example tests on the code; on failure it reflects and repairs, up to 3 "
        "times. `result` says whether the returned solution passes.",
        'tested = await self.test(solution=code["response"])\nif not tested["result"]:\n'
        '    code = await self.custom_code_generate(instruction="Write a new, careful implementation.")'),
}

TEMPLATE_BODIES: dict[str, str] = {
    "math": 'solution = await self.custom(instruction="Solve the problem step by step, explaining the '
            'reasoning behind each step, and state the final answer.")\nreturn solution["response"]',
    "qa": 'solution = await self.custom(instruction="Answer the question step by step, explaining the '
          'reasoning behind each step, and state the final answer.")\nreturn solution["response"]',
    "code": 'solution = await self.custom_code_generate(instruction="Think through the requirements and '
            'edge cases step by step, then implement the function.")\nreturn solution["response"]',
}

RULES = """\
Rules:
1. Keep the template's shape: `class Workflow`, `__init__(self, config, problem)` creating the
   operators exactly as shown (`operator.Name(config)`), and `async def run_workflow(self)`
   returning the final answer as a string.
2. Use between 3 and 8 operator calls, matching the workflow's complexity to the problem's.
   Loops that build several solutions for an ensemble, conditions on intermediate results and
   review steps usually help. Make it better than, and different from, the template.
3. Operators are the only way to reach the LLM, and only the operators above exist.
   `asyncio.gather(...)` is available to run calls concurrently.
4. Import nothing. Pass text from one operator to the next as it is: do not convert LLM text
   to numbers and do not split it on spaces.
5. Each operator call is independent: never ask one call for several answers, and never
   refer to "another", "a different" or "the second" answer.
6. Write complete, concrete instructions: no placeholders. Copy no text, numbers or names
   of the problem into the workflow: the problem reaches the operators by itself and is in
   `self.problem`, and another LLM executes the workflow on it.
7. Plain Python only: apart from __init__, no names or attributes starting with an
   underscore; no str.format (use f-strings or +); no eval, exec or open.
8. Reply with the workflow only, between <graph> and </graph>."""


def workflow_source(family: str, body: str, methods: str = "", operators: tuple[str, ...] | None = None) -> str:
    """A complete workflow for `family`: the template's class and `__init__` (binding
    `operators`, by default the paper's set) around `body`, the statements of `run_workflow`;
    `methods` (dedented method definitions) are added to the class."""
    creates = "".join(f"        self.{ATTRIBUTES[name]} = operator.{name}(config)\n"
                      for name in (PAPER_OPERATORS[family] if operators is None else operators))
    extra = "\n" + textwrap.indent(textwrap.dedent(methods).strip(), " " * 4) + "\n" if methods.strip() else ""
    return (f"class Workflow:\n    def __init__(self, config, problem):\n        self.problem = problem\n{creates}\n"
            f"    async def run_workflow(self):\n{textwrap.indent(textwrap.dedent(body).strip(), ' ' * 8)}\n{extra}")


def template_workflow(family: str, extra: tuple[str, ...] = ()) -> str:
    """The template workflow shown to the generator (a single call, PAPERS.md §S2), binding the
    run's operators; generation and pairs compare generated workflows with its body."""
    return workflow_source(family, TEMPLATE_BODIES[family], operators=search_operators(family, extra))


def generator_guide(family: str, extra: tuple[str, ...] = ()) -> str:
    """The family's guide: template, the run's operators (the paper's plus `extra`), rules."""
    if family not in FAMILY_OPERATORS:
        raise ValueError(f"unknown task family {family!r}; choose one of {', '.join(FAMILY_OPERATORS)}")
    operators = []
    for i, name in enumerate(search_operators(family, extra), start=1):
        guide = OPERATOR_GUIDES[name]
        operators.append(f"{i}. {name}: await self.{ATTRIBUTES[name]}({guide.parameters}) -> {guide.returns}\n"
                         f"   {guide.purpose}\n   Example:\n{textwrap.indent(guide.example, ' ' * 6)}")
    return (f"You design workflows: small Python programs that call LLM-backed operators to solve a "
            f"problem. A weaker LLM executes every operator call.\n\n"
            f"The template workflow:\n<graph>\n{template_workflow(family, extra)}</graph>\n\n"
            f"Operators (parameters left out default to the current problem):\n" + "\n\n".join(operators)
            + f"\n\n{RULES}")


def generator_prompt(family: str, question_text: str, extra: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Chat messages for the generator LLM: the family's guide (identical for every
    question: a shared prefix), then the question the workflow is written for. ScoreFlow
    generates one workflow per question, adapted to it; as in the reference implementation,
    the workflow must not copy the question's content, which reaches the operators as
    `self.problem`."""
    return [
        {"role": "system", "content": generator_guide(family, extra)},
        {"role": "user", "content": f"The problem to write the workflow for:\n\n{question_text}\n\n"
                                    f"Write the workflow that will solve this problem best, shaped by what it "
                                    f"needs. Copy nothing of the problem into the workflow. Reply with it between "
                                    f"<graph> and </graph>."},
    ]

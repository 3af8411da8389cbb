"""The static baselines of PAPERS.md §S6, written as ordinary workflows and run by the same runtime.

    code = baseline_workflow("cot_sc", "math")
    result = await run_workflow(code, question.prompt, executor, "math", 120, task, question,
                                temperature=0.7)

Each baseline is one `run_workflow` body shared by all families, written against two
helper methods that each family defines with its own operators:
`solve(instruction)` (math/QA: Custom; code: CustomCodeGenerate) and `refine(solution)`
(math/QA: Review; code: CustomCodeGenerate asked to critique and improve, since code has no
Review operator). What each does:

- io: one call with the bare problem.
- cot: one call asking for step-by-step reasoning.
- cot_sc: self-consistency, 5 CoT samples and ScEnsemble picks the answer most share.
  The samples differ only when the executor samples: run it with temperature > 0 (at 0
  the five requests are identical and ScEnsemble answers without a call).
- medprompt (3 answers, 5 votes): our reading of MedPrompt's choice-shuffle ensemble for
  open answers. 3 answers from differently worded CoT instructions (so they differ even
  at temperature 0); then 5 ScEnsemble votes, each seeing the 3 answers in a different
  order (the 3 rotations, then 2 of them reversed), so position bias averages out; the
  answer chosen most often wins (ties: the earlier answer). Its kNN few-shot step needs a
  training pool and is left out.
- multipersona: multi-persona debate, 3 personas answer independently, then each revises
  after reading the other two (one debate round), and ScEnsemble picks among the revised ones.
- self_refine: one CoT answer, then 2 rounds of critique-and-revise.

Two more, one operator each, for the families that have it (a learning run compares the
generated workflows with the best fixed use of the operator they can call):

- programmer (math only): one Programmer call, which writes `solve()`, runs it and retries
  on errors; the answer is what `solve()` returned.
- test (code only): one implementation, then the Test operator on the task's public example
  tests, which repairs it on failure.
"""

from __future__ import annotations

from scoreflow.workflow.prompts import FAMILY_OPERATORS, workflow_source

_ANSWER_HELPERS = '''
async def solve(self, instruction):
    result = await self.custom(instruction=instruction)
    return result["response"]

async def refine(self, solution):
    result = await self.review(pre_solution=solution)
    return result["solution"]
'''

HELPERS: dict[str, str] = {
    "math": _ANSWER_HELPERS,
    "qa": _ANSWER_HELPERS,
    "code": '''
async def solve(self, instruction):
    result = await self.custom_code_generate(instruction=instruction)
    return result["response"]

async def refine(self, solution):
    instruction = ("Here is an earlier implementation. Critique it against the requirements, edge cases "
                   "and possible bugs, then write an improved implementation.\\n\\n" + solution)
    result = await self.custom_code_generate(instruction=instruction)
    return result["response"]
''',
}

_COT = '"Let\'s think step by step, then give the final answer."'

BODIES: dict[str, str] = {
    "io": 'return await self.solve("")',
    "cot": f"return await self.solve({_COT})",
    "cot_sc": f'''
samples = []
for i in range(5):
    samples.append(await self.solve({_COT}))
chosen = await self.sc_ensemble(solutions=samples)
return chosen["response"]
''',
    "medprompt": '''
instructions = [
    "Let's think step by step, then give the final answer.",
    "First restate what is asked and what is given, then reason carefully to the final answer.",
    "Make a short plan, carry it out, check the result, then give the final answer.",
]
answers = []
for instruction in instructions:
    answers.append(await self.solve(instruction))
votes = []
for i in range(5):
    order = answers[i % 3:] + answers[:i % 3]
    if i >= 3:
        order = order[::-1]
    pick = await self.sc_ensemble(solutions=order)
    votes.append(pick["response"])
return max(answers, key=votes.count)
''',
    "multipersona": '''
personas = [
    "a meticulous expert who checks every detail",
    "a creative problem solver who looks for the simplest approach",
    "a skeptical critic who hunts for mistakes and overlooked cases",
]
answers = []
for persona in personas:
    answers.append(await self.solve(f"You are {persona}. Solve the task step by step and give your answer."))
revised = []
for i in range(3):
    others = "\\n\\n---\\n\\n".join(a for j, a in enumerate(answers) if j != i)
    instruction = (f"You are {personas[i]}. Your earlier answer:\\n{answers[i]}\\n\\n"
                   f"The other debaters answered:\\n{others}\\n\\n"
                   "Weigh their arguments against yours, then solve the task again and give your answer.")
    revised.append(await self.solve(instruction))
final = await self.sc_ensemble(solutions=revised)
return final["response"]
''',
    "self_refine": f'''
solution = await self.solve({_COT})
for i in range(2):
    solution = await self.refine(solution)
return solution
''',
    "programmer": '''
computed = await self.programmer(analysis="None")
return computed["output"]
''',
    "test": '''
solution = await self.solve("")
tested = await self.test(solution=solution)
return tested["solution"]
''',
}
BASELINES: tuple[str, ...] = tuple(BODIES)
ONLY_FOR: dict[str, str] = {"programmer": "math", "test": "code"}  # baseline -> the one family with its operator
# The executor temperature each baseline runs at: 0 (PAPERS.md §S1) unless its samples must differ.
EXECUTOR_TEMPERATURES: dict[str, float] = {name: 0.7 if name == "cot_sc" else 0.0 for name in BASELINES}


def baselines_for(family: str, names: tuple[str, ...] = BASELINES) -> tuple[str, ...]:
    """Those of `names` that `family` can run."""
    return tuple(name for name in names if ONLY_FOR.get(name, family) == family)


def baseline_workflow(name: str, family: str) -> str:
    """The workflow source of baseline `name` (one of BASELINES) for `family`."""
    if name not in BODIES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    if family not in FAMILY_OPERATORS:
        raise ValueError(f"unknown task family {family!r}; choose one of {', '.join(FAMILY_OPERATORS)}")
    if name not in baselines_for(family, (name,)):
        raise ValueError(f"baseline {name!r} runs on {ONLY_FOR[name]} tasks only, not on {family} tasks")
    return workflow_source(family, BODIES[name], HELPERS[family])

"""Randomly assembled valid math workflows for the isolation fuzz test (seeded, table-driven:
hypothesis is not a test dependency). Each workflow is a few pieces drawn with the weights
below: operator calls and gathers, loops that end or run into the step budget, big
literals and numbers, deep nesting, caught and uncaught errors, calls abandoned by a gather
whose sibling failed, arguments of huge element counts, and a return value of any shape,
including ones that cannot be turned into text. A few pieces crash or block the
interpreter, so the fuzz also covers what only the worker process can contain."""

from __future__ import annotations

import random
from typing import Callable

from scoreflow.workflow.prompts import workflow_source

Piece = Callable[[random.Random], str]


def _call(rng: random.Random) -> str:
    return f'r = await self.custom(instruction="step {rng.randint(0, 99)}")\nacc = acc + r["response"][:20]'


def _gather(rng: random.Random) -> str:
    return (f'rs = await asyncio.gather(*[self.custom(instruction="g" + str(i)) for i in range({rng.randint(1, 6)})])'
            '\nacc = acc + str(len(rs))')


def _ensemble(rng: random.Random) -> str:
    return 'best = await self.sc_ensemble(solutions=["a", "b", acc[:50]])\nacc = acc + best["response"][:10]'


def _review(rng: random.Random) -> str:
    return 'rv = await self.review(pre_solution=acc[:100] or "x")\nacc = acc + rv["solution"][:10]'


def _programmer(rng: random.Random) -> str:
    return 'p = await self.programmer(analysis="compute it")\nacc = acc + p["output"][:30]'


def _abandon(rng: random.Random) -> str:
    # the ensemble fails in the host (no solutions), so the gather gives up the Custom calls in flight
    calls = f'*[self.custom(instruction="a" + str(i)) for i in range({rng.randint(1, 20)})]'
    return (f"try:\n    await asyncio.gather({calls}, self.sc_ensemble(solutions=[]))\n"
            'except ValueError as e:\n    acc = acc + "abandoned"')


def _huge_list(rng: random.Random) -> str:
    return (f'try:\n    r = await self.custom(instruction=[""] * {rng.choice([10, 100_000, 2_000_000])})\n'
            '    acc = acc + r["response"][:5]\nexcept ValueError as e:\n    acc = acc + "refused"')


def _loop(rng: random.Random) -> str:
    return (f"n = 0\nfor i in range({rng.randint(0, 10000)}):\n    n = n + i * {rng.randint(1, 9)}\n"
            "acc = acc + str(n % 97)")


def _while(rng: random.Random) -> str:
    return f"n = 0\nwhile True:\n    n = n + 1\n    if n > {rng.randint(0, 50000)}:\n        break"


def _endless(rng: random.Random) -> str:
    return "while True:\n    n = 1"


def _big_literal(rng: random.Random) -> str:
    size = rng.choice([10, 1000, 100_000, 5_000_000])
    return rng.choice([f'big = "{rng.choice("xyz")}" * {size}\nacc = acc + big[:5]',
                       f"big = [0] * {size}\nacc = acc + str(len(big))",
                       f'big = "{"w" * rng.randint(100, 4000)}"\nacc = acc + big[:3]'])


def _big_number(rng: random.Random) -> str:
    return (f"x = {rng.randint(2, 10 ** 30)}\nfor i in range({rng.randint(1, 14)}):\n    x = x * x\n"
            f"acc = acc + str(x % 1000)")


def _deep(rng: random.Random) -> str:
    nest = rng.choice(["(t,)", "[t]", '{"k": t}'])
    use = rng.choice(["", "\nacc = acc + str(len(str(t)))",
                      "\ntry:\n    print(t)\nexcept Exception as e:\n    acc = acc + 'deep'"])
    return f"t = None\nfor i in range({rng.randint(10, 10000)}):\n    t = {nest}{use}"


def _crash(rng: random.Random) -> str:
    return "t = ()\nfor i in range(9):\n    for j in range(10000):\n        t = ((((((((((t,),),),),),),),),),)\n" \
           "d = {t: 1}"


def _block(rng: random.Random) -> str:
    return "x = 7\nfor i in range(40):\n    x = x * x"


def _errors(rng: random.Random) -> str:
    return rng.choice(['try:\n    raise ValueError("caught")\nexcept ValueError as e:\n    acc = acc + str(e)',
                       'raise KeyError("fuzz")', "acc = acc + [1, 2][5]",
                       "m = [[i * j for j in range(100)] for i in range(100)]\nacc = acc + str(m[9][9])",
                       'print(acc[:100], len(acc), sep="|")'])


PIECES: list[tuple[Piece, int]] = [
    (_call, 20), (_gather, 8), (_ensemble, 6), (_review, 5), (_programmer, 1), (_abandon, 4), (_huge_list, 3),
    (_loop, 10), (_while, 6), (_endless, 2), (_big_literal, 8), (_big_number, 5), (_deep, 8), (_crash, 1),
    (_block, 1), (_errors, 10),
]
RETURNS = ["return acc", 'return {"response": acc}', 'return [acc, "x"]', "return (acc, 0.1)", "return None",
           "return 12345", 'd = {}\nd["response"] = d\nreturn d',
           "x = 10\nfor i in range(13):\n    x = x * x\nreturn x"]


def random_workflow(rng: random.Random) -> str:
    pieces, weights = zip(*PIECES)
    body = ['acc = ""'] + [piece(rng) for piece in rng.choices(pieces, weights, k=rng.randint(1, 5))]
    return workflow_source("math", "\n".join([*body, rng.choice(RETURNS)]))

"""What the optimiser LLM reads, written for this project. The facts of each method carry over
from its reference implementation (what is shown, what is asked, in which order); the wording,
and the reply format (XML tags and a <graph> block, as our generator writes), are ours.

Both methods send the generator's guide for the task's family as the system message
(workflow/prompts.py: the template, the operators with their signatures, the rules), so the
optimiser writes the format the runtime runs, then:

- AFlow (MetaGPT metagpt/ext/aflow/scripts/prompts/optimize_prompt.py): the parent workflow
  and its score, the experience of that parent (earlier modifications and whether they raised
  its score), a few runs it got wrong; asked for one modification of at most about five lines
  that makes the workflow differ, trying operators it does not use yet, named in
  <modification>.
- ADAS (ShengranHu/ADAS _mmlu/mmlu_prompt.py, _drop/drop_prompt.py): the whole archive with
  each member's fitness; asked for an interesting new design with its thought and name; then
  the two reflection steps (Reflexion_prompt_1: interestingness, implementation mistakes,
  improvement, given the previously tried design; Reflexion_prompt_2: revise the code against
  the rules), and a fix of the same idea after an error ("debug").
"""

from __future__ import annotations

FAILURE = ("Question: {question}\nExpected: {expected}\nIts answer: {answer} (score {score})\n"
           "Run status: {status} {error}")


def failures_text(failures: list[dict]) -> str:
    """The wrong runs a fitness holds, as the optimiser reads them."""
    if not failures:
        return "(none: every run scored 1)"
    return "\n\n".join(FAILURE.format(**f).rstrip() for f in failures)


# -- AFlow --------------------------------------------------------------------------------------
AFLOW_EXPAND = """\
You improve a workflow for {family} problems one step at a time. This workflow scored {score:.3f} on the
validation questions (1 is the best possible score):

<workflow>
{code}
</workflow>

{experience}

Runs of it that went wrong:

{failures}

Make exactly one focused modification that should raise the score: add, remove or change one operator
call, one instruction, or one piece of control flow (a loop, an ensemble, a review step, a condition),
changing at most about five lines. The new workflow must differ from the one above. Operators the
workflow does not use yet are worth trying. Every instruction must be complete, without placeholders.

Reply in exactly this format:
<modification>one sentence saying what you changed</modification>
<graph>
the complete new workflow
</graph>"""

AFLOW_NO_EXPERIENCE = "No modification of this workflow has been tried yet."
AFLOW_EXPERIENCE = ("Modifications of this workflow tried before (it scored {score:.3f}). Repeat none of them, and "
                    "prefer a different kind of change to the ones that did not help:\n{tried}")
AFLOW_TRIED = {True: "- raised the score to {score:.3f}: {modification}",
               False: "- did not raise the score ({score:.3f}): {modification}"}
AFLOW_REPEATED = "it repeats a modification already tried on this workflow"

AFLOW_RETRY = """\
That reply cannot be used: {problems}
Write it again, fixed, in the same format: <modification>...</modification>, then the complete workflow
between <graph> and </graph>."""

# -- ADAS ---------------------------------------------------------------------------------------
ADAS_PROPOSE = """\
You design LLM workflows for {family} problems; your goal is the highest fitness on the validation
questions. Here is the archive of the workflows found so far. A fitness is the median and the 95%
bootstrap confidence interval of a workflow's validation score.

{archive}

Study the archive: what each workflow does, and what lessons or stepping stones their fitness
suggests. Then propose the next workflow to try: an interesting new design, not a copy of one
above. Ideas from the literature on prompting and on LLM agents are welcome; think outside the box.

Reply in exactly this format:
<thought>your insights from the archive, the idea of the new workflow, and how it is implemented, step by
step</thought>
<name>a short name for it</name>
<graph>
the complete workflow
</graph>"""

ADAS_MEMBER = "### {name} (fitness: {fitness})\n{thought}\n<graph>\n{code}\n</graph>"

ADAS_REFLECT = """\
{previous}Review the workflow you just proposed:
1. Interestingness: is it really new next to the archive? Compare the implementations, not the names.
   If it is not, propose a different design.
2. Mistakes: read the code carefully for errors and for anything the rules forbid, and fix them.
3. Improvement: keeping the design (unless you replaced it in 1), make the implementation do what it is
   meant to do, and do it better: drop redundant steps, and keep it distinct from the workflow tried
   before.
Then write the revised workflow.

Reply in exactly this format:
<reflection>your review: interestingness, mistakes, improvements</reflection>
<thought>the revised idea and its implementation</thought>
<name>its name, without words like "new" or "improved"</name>
<graph>
the complete revised workflow
</graph>"""

ADAS_PREVIOUS = "The workflow tried before:\n{member}\n\n"

ADAS_REFLECT_AGAIN = """\
Check the code once more against the rules and the operators' signatures in the guide, and revise it
further. Reply in the same format: your new review in <reflection>, the same <thought> and <name>, and the
corrected workflow between <graph> and </graph>."""

ADAS_DEBUG = """\
Evaluating that workflow failed:
{error}

Work out where the implementation went wrong and fix it, keeping the same idea. Reply in the same
format: your debugging reasoning in <reflection>, the same <thought> and <name>, and the fixed workflow
between <graph> and </graph>."""

ADAS_ALL_ZERO = "every validation run scored 0 (mean below {floor}). Runs that went wrong:\n\n{failures}"

# The static baselines (workflow/static_baselines.py) as ADAS's initial archive describes its
# hand-designed agents: the idea of each, in a few words.
BASELINE_THOUGHTS: dict[str, str] = {
    "io": "Ask once with the bare problem: the simplest workflow, the reference every design should beat.",
    "cot": "Ask for step-by-step reasoning before the final answer: intermediate steps help on problems that "
           "need several.",
    "cot_sc": "Self-consistency: five step-by-step solutions, sampled at executor temperature 0.7, and "
              "ScEnsemble picks the answer most of them share.",
    "medprompt": "Three answers from differently worded step-by-step instructions, then five ScEnsemble votes "
                 "over them in different orders so that position bias averages out; the most chosen answer wins.",
    "multipersona": "Debate: three personas answer independently, each revises after reading the other two, and "
                    "ScEnsemble picks among the revised answers.",
    "self_refine": "One step-by-step answer, then two rounds of critique and revision.",
    "programmer": "One Programmer call: it writes solve(), runs it, retries on errors, and the answer is what "
                  "solve() returned.",
    "test": "One implementation, then Test runs the task's public example tests and repairs it when they fail.",
}

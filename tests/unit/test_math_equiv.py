"""MATH answer extraction and equivalence: the tricky cases a rule-based grader must get right."""

import pytest

from scoreflow.tasks.latex_eval import evaluate
from scoreflow.tasks.math import check_math, is_equiv, last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is $\boxed{5}$.", "5"),
        (r"first \boxed{1}, finally \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"nested \boxed{\sqrt{\frac{a}{b}}} end", r"\sqrt{\frac{a}{b}}"),
        (r"\fbox{42}", "42"),
        (r"\boxed 7$", "7"),
        ("no box here", None),
        (r"\boxed{1 + {2", None),  # unbalanced
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


EQUIVALENT = [
    (r"\frac{1}{2}", "1/2"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\dfrac{3}{4}", r"\tfrac34"),
    (r"\frac{3}{4}", "0.75"),
    ("0.5", r"\frac{1}{2}"),
    (".5", "0.5"),
    ("5", "5.0"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    ("[1, 2)", r"\left[1,2\right)"),
    ("x = 5", "5"),
    ("y = 2x + 3", "2x+3"),
    (r"x^{2}+1", "x^2 + 1"),
    (r"162\text{ minutes}", "162"),
    (r"100\text{ square units}", "100"),
    ("5 dollars", "5"),
    (r"30^\circ", "30"),
    (r"30^{\circ}", "30 degrees"),
    (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}"),
    (r"\$36", "36"),
    (r"75\%", "75"),
    (r"10,\!080", "10080"),
    (r"14{,}916", "14916"),
    ("1,000", "1000"),
    (r"\sqrt2", r"\sqrt{2}"),
    (r"3\sqrt{2}", r"3 \sqrt 2"),
    (r"2\sqrt{3}", r"\sqrt{12}"),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
    (r"\pi/2", r"\frac{\pi}{2}"),
    (r"\sqrt[3]{8}", "2"),
    (r"1\frac{1}{10}", "1.1"),
    ("-2,1", "1, -2"),
    ("\u22125", "-5"),
    (r"\text{Friday}", "Friday"),
    (
        r"\begin{pmatrix} 23/8 \\ 7/4 \end{pmatrix}",
        r"\begin{pmatrix} \frac{23}{8} \\ \frac74 \end{pmatrix}",
    ),
]

NOT_EQUIVALENT = [
    (r"\sqrt{2}", "2"),
    ("2", "3"),
    ("5", "-5"),
    ("12", "120"),
    (r"\frac{1}{2}", r"\frac{1}{3}"),
    (r"\frac{1}{2}", r"\frac{2}{1}"),
    (r"3\pi", "3"),
    (r"\frac{\pi}{2}", "1.57"),
    (r"10\%", "0.1"),
    ("(1,2)", "(2,1)"),  # ordered tuple
    ("(1,2)", "(1,2,3)"),
    ("[1,2]", "(1,2)"),  # closed vs open interval
    ("1,2", "(1,2)"),
    ("-2,1", "-2,1,3"),
    ("x^2", "x^3"),
    ("y=2x+3", "y=3x+2"),
    ("x=5", "x=6"),
    ("", "5"),
    (r"2^{10000}", r"2^{10001}"),  # too large to evaluate: compared as text
]


@pytest.mark.parametrize("a, b", EQUIVALENT)
def test_equivalent(a, b):
    assert is_equiv(a, b) and is_equiv(b, a)


@pytest.mark.parametrize("a, b", NOT_EQUIVALENT)
def test_not_equivalent(a, b):
    assert not is_equiv(a, b) and not is_equiv(b, a)


def test_check_math_reads_the_last_box_of_the_answer():
    assert check_math(r"\frac{1}{2}", r"Try \boxed{3}; no: the answer is \boxed{\dfrac12}.") == 1.0
    assert check_math(r"\frac{1}{2}", r"First \boxed{\frac12}, then I changed to \boxed{3}.") == 0.0
    assert check_math("5", "x = 5") == 1.0  # no box: the whole answer is compared


@pytest.mark.parametrize(
    "text, value",
    [
        (r"\frac{1}{2}", 0.5),
        (r"2\sqrt{9}", 6.0),
        (r"-2^2", -4.0),
        (r"2^{-1}", 0.5),
        (r"(1+2)\cdot3", 9.0),
        (r"\frac{\pi}{\pi}", 1.0),
    ],
)
def test_evaluate_arithmetic(text, value):
    assert evaluate(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "x+1",
        r"\frac{1}{0}",
        r"\sqrt{-4}",
        r"(-8)^{1/3}",
        r"2^{99999}",
        "1+",
        "(1",
    ],
)
def test_evaluate_refuses_anything_but_arithmetic(text):
    assert evaluate(text) is None

"""When two computed numbers count as the same answer.

Float noise from computing an answer (35.99999999 for 36, 0.30000000000000004) must not
cost the point, but a relative tolerance alone would accept 2880001 for 2880000. So two
whole numbers must be equal, and otherwise the match is to 1e-6 relative (1e-9 absolute).
"""

from __future__ import annotations

import math

REL_TOL = 1e-6
ABS_TOL = 1e-9


def same_number(a: float, b: float) -> bool:
    """True when `a` and `b` are the same answer (see module docstring)."""
    if a.is_integer() and b.is_integer():
        return a == b
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)

"""Performance retention of a distilled (or pruned) student, algorithms.md 11 (b).

retention = metric(student) / metric(teacher) when higher is better, teacher / student when lower is
better (perplexity, loss), so 1.0 always means "matches the teacher" and < 1 means worse.
``gap_closed`` compares a KD student with a baseline student trained without the teacher
(distillation.md D2): (baseline - student) / (baseline - teacher) for lower-is-better metrics.
"""

from __future__ import annotations

import math


def performance_retention(student: float, teacher: float, higher_is_better: bool = True) -> float:
    """student/teacher (higher is better) or teacher/student (lower is better); nan on a zero divisor."""
    num, den = (student, teacher) if higher_is_better else (teacher, student)
    return num / den if den else float("nan")


def gap_closed(student: float, baseline: float, teacher: float, *, higher_is_better: bool = False) -> float:
    """Fraction of the baseline->teacher gap the student closed (1 = reaches the teacher)."""
    gap = (teacher - baseline) if higher_is_better else (baseline - teacher)
    got = (student - baseline) if higher_is_better else (baseline - student)
    return got / gap if gap and not math.isnan(gap) else float("nan")

"""Time budgets as people write them ("90s", "45m", "2h", "1h30m", "1d"): parsed once into a
``Budget``, which prints canonically and orders by duration (so 40s < 15m < 1h30m < 2h)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lipsweep.errors import InputError

UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_TERM = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
ACCEPTED = "a positive duration such as 90s, 45m, 2h, 1h30m or 1d (units d, h, m, s, largest first)"


class BudgetError(InputError):
    """A budget string that cannot be read."""


def parse_budget(text: str) -> float:
    """Seconds in a budget string; units must appear largest first and at most once."""
    cleaned = text.strip().lower()
    terms = _TERM.findall(cleaned)
    units = [unit for _, unit in terms]
    in_order = units == sorted(set(units), key=list(UNIT_SECONDS).index)
    if not terms or "".join(n + u for n, u in terms) != cleaned or not in_order:
        raise BudgetError(f"cannot read budget {text!r}: expected {ACCEPTED}")
    seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in terms)
    if seconds <= 0:
        raise BudgetError(f"budget {text!r} is not positive: expected {ACCEPTED}")
    return seconds


def format_budget(seconds: float) -> str:
    """A canonical string for a number of seconds, in hours as the paper writes budgets:
    5400 -> '1h30m', 86400 -> '24h'."""
    remaining = round(seconds)
    parts = []
    for unit, size in UNIT_SECONDS.items():
        if unit == "d":
            continue
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


@dataclass(frozen=True, order=True)
class Budget:
    """A duration; ``str(budget)`` is its canonical label ("1d" -> "24h")."""

    seconds: float

    @staticmethod
    def parse(text: str) -> Budget:
        return Budget(parse_budget(text))

    @property
    def label(self) -> str:
        return format_budget(self.seconds)

    def __str__(self) -> str:
        return self.label


def budget_label(text: str) -> str:
    """The canonical label of a budget string, validating it."""
    return Budget.parse(text).label


def budget_seconds(label: str) -> float:
    """Seconds of a budget label, for sorting labels by duration (unknown labels sort last)."""
    try:
        return parse_budget(label)
    except BudgetError:
        return float("inf")

import pytest

from lipsweep.budget import BudgetError, format_budget, parse_budget


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90s", 90),
        ("45m", 2700),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("24h", 86400),
        ("1d2h3m4s", 93784),
        (" 2H ", 7200),
        ("1.5h", 5400),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "2", "h", "2x", "1h1h", "30m1h", "-1h", "0s", "1 h", "2h junk", "1e3s", "1h-30m"]
)
def test_bad_budgets_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(BudgetError, match="90s, 45m, 2h, 1h30m or 1d"):
        parse_budget(text)


@pytest.mark.parametrize(
    "seconds,text", [(5400, "1h30m"), (86400, "24h"), (172800, "48h"), (90, "1m30s"), (0, "0s")]
)
def test_format_round_trips(seconds: float, text: str) -> None:
    assert format_budget(seconds) == text
    if seconds:
        assert parse_budget(text) == seconds

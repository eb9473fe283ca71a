"""Successive halving with restarts: a cell's rungs, who survives each, and how far it is.

``lipsweep launch --search halving`` runs a cell's search in rungs of *complete* runs at growing
epoch counts (Hyperband's successive halving, with restarts). ``n = --trials`` configurations,
asked from the cell's Optuna sampler, train ``E / eta^(R-1)`` epochs (E: the epochs the search
budget buys); the best ``ceil(n / eta)`` by validation CRA@36 train again *from scratch* at
``eta`` times the epochs, and so on, up to E at the last rung. A run's one-cycle schedule is
fitted to its own epoch count, so a half-finished longer run is not comparable with a finished
shorter one: survivors restart, they are not continued.

    n_0 = n,  n_r = ceil(n_{r-1} / eta)
    R   = min(1 + floor(log_eta E), number of rungs while n_r >= 2)
    e_r = floor(E / eta^(R-1-r))                    (e_{R-1} = E, e_0 >= 1)
    device-hours per cell = s * g / 3600 * sum_r n_r e_r   (random search: s * g / 3600 * n E)

(s: seconds per epoch, g: devices charged per trial). A rung of one configuration would select
nothing, so the rungs stop at the last one that has two or more. Trial indices run on across
rungs (rung r starts at ``n_0 + ... + n_{r-1}``), so each rung's runs are trials and attempts of
their own. A rung may run fewer configurations than planned: only completed runs survive.

The random search is the one-rung case (n trials at E). Pure arithmetic on the plan and on the
outcomes of ended trials (trial index -> (status, validation CRA)): no Optuna, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from lipsweep.config import SweepConfig
from lipsweep.names import AttemptStatus

Outcomes = Mapping[int, tuple[str, float]]  # trial index -> (status, validation CRA@36)


@dataclass(frozen=True)
class Rung:
    """One rung of a cell's search: ``size`` configurations (at most) trained ``epochs`` epochs,
    trial indices ``offset`` to ``offset + size - 1``."""

    number: int
    size: int
    epochs: int
    offset: int

    @property
    def indices(self) -> range:
        return range(self.offset, self.offset + self.size)


def rung_count(epochs: int, trials: int, eta: int) -> int:
    """R: as many rungs as keep the first one at >= 1 epoch and the last one at >= 2
    configurations (at least one rung)."""
    by_epochs = 1
    while epochs // eta**by_epochs >= 1:
        by_epochs += 1
    by_trials, size = 1, trials
    while math.ceil(size / eta) >= 2:
        size = math.ceil(size / eta)
        by_trials += 1
    return min(by_epochs, by_trials)


def make_rungs(epochs: int, trials: int, eta: int) -> list[Rung]:
    """The rungs of a halving search of ``trials`` configurations up to ``epochs`` epochs."""
    count = rung_count(epochs, trials, eta)
    rungs, size, offset = [], trials, 0
    for number in range(count):
        rungs.append(Rung(number, size, epochs // eta ** (count - 1 - number), offset))
        offset += size
        size = math.ceil(size / eta)
    return rungs


def cell_rungs(config: SweepConfig, search_epochs: int) -> list[Rung]:
    """The cell's rungs: halving's, or the random search's single rung of ``trials`` at E."""
    if config.search == "halving":
        return make_rungs(search_epochs, config.trials, config.eta)
    return [Rung(0, config.trials, search_epochs, 0)]


def rung_of(rungs: list[Rung], index: int) -> Rung:
    for rung in rungs:
        if index in rung.indices:
            return rung
    raise ValueError(f"trial index {index} is in no rung of this search")


@dataclass(frozen=True)
class RungProgress:
    """How far a rung is: ``expected`` trials it runs (its size, or fewer when fewer completed
    in the rung below; None until the rung below is complete), how many ended for good and
    how many of those completed."""

    rung: Rung
    expected: int | None
    ended: int
    completed: int

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.ended >= self.expected

    @property
    def never_run(self) -> range:
        """Trial indices of this rung that will not run (fewer survivors than its size)."""
        if self.expected is None:
            return range(0)
        return range(self.rung.offset + self.expected, self.rung.offset + self.rung.size)


def progress(rungs: list[Rung], ended: Outcomes) -> list[RungProgress]:
    """Each rung's progress from the outcomes of the cell's ended search trials."""
    found, expected = [], rungs[0].size if rungs else 0
    for number, rung in enumerate(rungs):
        mine = [ended[i] for i in rung.indices if i in ended]
        # As ``survivors`` counts them: a completed run without a value cannot survive.
        completed = sum(
            status == AttemptStatus.COMPLETED and not math.isnan(value) for status, value in mine
        )
        found.append(RungProgress(rung, expected, len(mine), completed))
        if number + 1 < len(rungs):
            complete = expected is not None and len(mine) >= expected
            expected = min(rungs[number + 1].size, completed) if complete else None
    return found


def search_done(rungs: list[RungProgress]) -> bool:
    """Every rung complete: selection can take the best of the last rung."""
    return all(r.complete for r in rungs)


def current_rung(rungs: list[RungProgress]) -> RungProgress:
    """The first rung not complete yet (the last one once the search is done)."""
    return next((r for r in rungs if not r.complete), rungs[-1])


def survivors(
    ended: Outcomes, rung: Rung, count: int, accuracy: Mapping[int, float] | None = None
) -> list[int]:
    """Trial indices of the ``count`` best completed trials of ``rung``: highest validation
    CRA@36 first, then (ties: on short early rungs most runs certify nothing, CRA 0) the
    higher validation ``accuracy``, then the lower index (``select.ranked``'s order)."""
    accuracy = accuracy or {}
    completed = [
        (value, accuracy.get(index, 0.0), index)
        for index in rung.indices
        if index in ended
        for status, value in [ended[index]]
        if status == AttemptStatus.COMPLETED and not math.isnan(value)
    ]
    completed.sort(key=lambda entry: (-entry[0], -entry[1], entry[2]))
    return [index for _, _, index in completed[:count]]


def accuracies(ended_rows: pd.DataFrame) -> dict[int, float]:
    """Trial index -> validation accuracy of a cell's ended search rows (NaN as 0)."""
    if ended_rows.empty:
        return {}
    values = ended_rows["accuracy"].fillna(0.0)
    return dict(zip(ended_rows["trial_index"].astype(int), values.astype(float), strict=True))


def seeds(ended_rows: pd.DataFrame) -> dict[int, int]:
    """Trial index -> the seed its ended attempt ran with (a retried trial: the retry's)."""
    if ended_rows.empty:
        return {}
    values = ended_rows["seed"].astype(int)
    return dict(zip(ended_rows["trial_index"].astype(int), values, strict=True))


def outcomes(ended_rows: pd.DataFrame) -> dict[int, tuple[str, float]]:
    """Trial index -> (status, validation CRA@36) of a cell's ended search rows."""
    if ended_rows.empty:
        return {}
    return {
        int(row.trial_index): (str(row.status), float(row.cra_36))
        for row in ended_rows.itertuples()
    }

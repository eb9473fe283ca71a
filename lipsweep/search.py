"""The search stage's search algorithm: Ray Tune asks Optuna, one study per cell.

Every cell (dataset, size, method) has its own Optuna study, ``<sweep>/<cell>`` in the sweep's
``optuna.journal`` (durable; ``optuna-dashboard optuna.journal`` shows it), asked through Ray
Tune's Optuna integration (``OptunaSearch``) with a seeded ``RandomSampler`` (the paper's random
search) or TPE. ``CellSearch`` is the Tune searcher over all cells of a launch: it hands out the
cells' trials in turn, so one Tune experiment keeps every slot busy.

Resuming after a killed driver needs one rule on top of Optuna's own durability. A study trial
still RUNNING whose attempts have not ended in the Parquet dataset was interrupted: it is handed
out again, under its own number and hyperparameters (its attempts resume from their
checkpoints), before any fresh trial is asked. A RUNNING trial whose attempts did end (the
driver died before telling it) is told first. A trial the study knows as ended but whose
result row is gone (a deleted or damaged Parquet file) runs again the same way: the Parquet
dataset is the truth, the study only remembers the hyperparameters.

A halving search (lipsweep.halving) asks rung 0 as above. Rung r's trials live in a study of
their own, ``<sweep>/<cell>/rung<r>`` (so the dashboard compares runs of equal epochs), trial
number k being trial index ``offset_r + k``: once every trial of rung r - 1 has ended, its
survivors are enqueued there with their parents' params (the seed of the parent's completed
attempt: a retried parent's retry seed; user attributes ``rung`` and ``parent``, the parent's
trial index), asked, and handed out like interrupted trials, so the
same rules resume them. Opening a rung is idempotent: a relaunch asks enqueued trials a killed
driver left WAITING and adds only the survivors still missing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from lipsweep.config import OFFSET_RANGE, TEMPERATURE_RANGE, SweepConfig
from lipsweep.halving import (
    Rung,
    accuracies,
    cell_rungs,
    outcomes,
    progress,
    seeds,
    survivors,
)
from lipsweep.journal import journal
from lipsweep.names import AttemptStatus, Cell
from lipsweep.plan import PlannedTrial
from lipsweep.results.store import cell_attempts, ended_for_good, read_attempts
from lipsweep.trainable import Launch, concurrent_slots, execute

METRIC = "cra_36"  # validation CRA at 36/255, as the paper selects
ENDED = tuple(str(s) for s in AttemptStatus)  # what the trainable returns once a trial is over

TrialConfig = Callable[[int, dict[str, Any]], Any]  # (number, params) -> the trial's TrialTask
Ended = tuple[str, float]  # (status, validation CRA) of a trial whose attempts are over

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class SearchSettings:
    """What every cell's search shares (from the sweep's config)."""

    sampler: Literal["random", "tpe"]
    seed: int
    trials: int  # per cell (halving: configurations at rung 0)
    lr_range: tuple[float, float]
    weight_decay_range: tuple[float, float]
    dimensions: tuple[str, ...] = ("lr", "wd")  # --search-space
    temperature_range: tuple[float, float] = TEMPERATURE_RANGE
    offset_range: tuple[float, float] = OFFSET_RANGE

    @staticmethod
    def of(config: SweepConfig) -> SearchSettings:
        return SearchSettings(
            config.sampler, config.seed, config.trials, config.lr_range,
            config.weight_decay_range, config.search_space, config.temperature_range,
            config.offset_range,
        )  # fmt: skip


def search_space(settings: SearchSettings) -> Callable[[optuna.Trial], dict[str, int]]:
    """The space, define-by-run: the paper's lr and weight decay log-uniform and a seed, then
    the loss's temperature and offset, log-uniform, where --search-space names them (after
    the seed, so the paper's dimensions draw what they drew without them). The space returns
    the trial's number, which is its index in the sweep (its id, its checkpoints)."""

    def space(trial: optuna.Trial) -> dict[str, int]:
        trial.suggest_float("lr", *settings.lr_range, log=True)
        trial.suggest_float("weight_decay", *settings.weight_decay_range, log=True)
        trial.suggest_int("seed", 0, 999)
        if "temperature" in settings.dimensions:
            trial.suggest_float("temperature", *settings.temperature_range, log=True)
        if "offset" in settings.dimensions:
            trial.suggest_float("offset", *settings.offset_range, log=True)
        return {"number": trial.number}

    return space


def make_sampler(kind: Literal["random", "tpe"], seed: int) -> optuna.samplers.BaseSampler:
    if kind == "tpe":  # arguments explicit: Optuna 5 changed the TPE defaults
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=False, constant_liar=True, n_startup_trials=10
        )
    return optuna.samplers.RandomSampler(seed=seed)


def tell(study: optuna.Study, number: int, status: str, value: float | None) -> None:
    if status == AttemptStatus.COMPLETED:
        study.tell(number, value)
    else:
        study.tell(number, state=TrialState.FAIL)


@dataclass(frozen=True)
class Replay:
    """A study trial handed out again under its own number and hyperparameters: interrupted
    (RUNNING), told but its result row is gone, or a halving rung's survivor."""

    study: optuna.Study
    trial: FrozenTrial
    index: int  # the trial's index in the sweep: its id, its checkpoints

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def params(self) -> dict[str, Any]:
        # A survivor's params are fixed when it is enqueued; a driver killed between asking it
        # and suggesting them left them in its system attributes only.
        return {**self.trial.system_attrs.get("fixed_params", {}), **self.trial.params}


@dataclass
class Halving:
    """What a cell's halving search needs to open its next rung (lipsweep.halving): rung r's
    trials live in their own study, ``<study_name>/rung<r>`` (rung 0 is the cell's study), each
    with its parent's trial index and its rung as user attributes."""

    rungs: list[Rung]
    study_name: str
    storage: optuna.storages.BaseStorage
    space: Callable[[optuna.Trial], Any]
    read_ended: Callable[[], pd.DataFrame]  # the cell's ended search rows, read now

    def study_name_of(self, rung: int) -> str:
        return self.study_name if rung == 0 else f"{self.study_name}/rung{rung}"

    def study(self, rung: int) -> optuna.Study:
        sampler = optuna.samplers.RandomSampler(seed=0)  # never asked: params are fixed
        name = self.study_name_of(rung)
        try:  # loading appends nothing to the journal (create_study(load_if_exists) does)
            return optuna.load_study(study_name=name, storage=self.storage, sampler=sampler)
        except KeyError:
            return optuna.create_study(study_name=name, storage=self.storage,
                                       direction="maximize", sampler=sampler)  # fmt: skip


@dataclass
class CellTrials:
    """One cell's share of a launch's search: interrupted trials to replay, fresh ones to ask
    and, in a halving search, the rungs still to open."""

    name: str
    study: optuna.Study
    searcher: OptunaSearch
    replays: list[Replay]
    fresh: int
    trial_config: TrialConfig
    halving: Halving | None = None
    later: int = 0  # halving: trials of rungs not opened yet, at most
    in_flight: int = 0  # handed out and not ended yet

    @property
    def pending(self) -> int:
        """Trials this launch may still hand out (an upper bound for a halving search)."""
        return len(self.replays) + self.fresh + self.later


def catch_up(study: optuna.Study, offset: int, size: int, ended: dict[int, Ended]) -> list[Replay]:
    """Tell ``study`` what ended (trial number k is trial index offset + k) and return the
    trials to run again: interrupted, or told but without a result row (the Parquet dataset
    is the truth, so such a trial runs again under its number and params)."""
    replays = []
    for trial in study.get_trials(deepcopy=False):
        index = offset + trial.number
        if trial.state == TrialState.RUNNING and index in ended:
            tell(study, trial.number, *ended[index])
        elif trial.number < size and index not in ended:
            replays.append(Replay(study, trial, index))
    return replays


def prepare_cell(
    name: str,
    study_name: str,
    storage: optuna.storages.BaseStorage,
    settings: SearchSettings,
    ended: dict[int, Ended],
    trial_config: TrialConfig,
    halving: Halving | None = None,
) -> CellTrials:
    """Bring the cell's study (and, halving, its rungs' studies) up to date with ``ended``
    (trial index -> outcome, from the Parquet dataset) and say what is left to run of its
    ``trials`` trials; a halving cell whose rung 0 is asked opens the next rung that can open
    (or adds the survivors a killed driver did not enqueue)."""
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True
    )
    replays = catch_up(study, 0, settings.trials, ended)
    existing = len(study.trials)
    # A relaunch asks its fresh trials from a sampler seeded anew: seeding by the trials the
    # study holds keeps it from drawing the first launch's hyperparameters again.
    sampler_seed = random.Random(f"{settings.seed}/{name}/{existing}").randrange(2**31)
    searcher = OptunaSearch(
        space=search_space(settings),
        metric=METRIC,
        mode="max",
        sampler=make_sampler(settings.sampler, sampler_seed),
        study_name=study_name,
        storage=storage,
    )
    fresh = max(0, settings.trials - existing)
    cell = CellTrials(name, study, searcher, replays, fresh, trial_config, halving)
    if halving is None:
        return cell
    opened = set(optuna.get_all_study_names(storage))
    for rung in halving.rungs[1:]:
        if halving.study_name_of(rung.number) not in opened:
            cell.later += rung.size
            continue
        rung_study = halving.study(rung.number)
        activate_waiting(rung_study, halving.space)  # a driver killed while opening the rung
        cell.replays += catch_up(rung_study, rung.offset, rung.size, ended)
        cell.later += max(0, rung.size - len(rung_study.trials))
    if cell.fresh == 0:  # a rung whose rung below is complete opens (or completes) now
        cell.replays += open_rung(halving)
    return cell


def activate_waiting(
    study: optuna.Study, space: Callable[[optuna.Trial], Any]
) -> list[FrozenTrial]:
    """Ask every enqueued (WAITING) trial of ``study``, so it runs with its fixed params, and
    return them, now RUNNING."""
    numbers = []
    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        space(trial)  # records the fixed params with the space's distributions
        numbers.append(trial.number)
    trials = study.get_trials(deepcopy=False)
    return [trials[number] for number in numbers]


def open_rung(halving: Halving) -> list[Replay]:
    """Open the first rung not opened yet whose rung below is complete: its survivors (the
    best ``ceil(n / eta)`` completed trials below, lipsweep.halving.survivors) are enqueued in
    the rung's study with their params and asked. Returns the trials to run (none if a rung
    below is incomplete, or the last rung is open). Idempotent: survivors already in the
    rung's study are not added again."""
    rows = halving.read_ended()
    ended = outcomes(rows)
    steps = progress(halving.rungs, ended)
    for below, rung in zip(halving.rungs, halving.rungs[1:], strict=False):
        if not steps[below.number].complete:
            return []
        expected = steps[rung.number].expected or 0
        study = halving.study(rung.number)
        trials = study.get_trials(deepcopy=False)
        have = {trial.user_attrs.get("parent") for trial in trials}
        room = max(0, expected - len(trials))
        best = survivors(ended, below, expected, accuracies(rows))
        missing = [i for i in best if i not in have][:room]
        if missing:
            parents = halving.study(below.number).get_trials(deepcopy=False)
            completed_seeds = seeds(rows)  # a retried parent completed with its retry seed
            for index in missing:
                params = Replay(study, parents[index - below.offset], index).params
                params["seed"] = completed_seeds[index]
                user_attrs = {"rung": rung.number, "parent": index}
                study.enqueue_trial(params, user_attrs=user_attrs)
        opened = activate_waiting(study, halving.space)
        if opened:
            return [Replay(study, trial, rung.offset + trial.number) for trial in opened]
    return []


class CellSearch(Searcher):
    """A Tune searcher over cells: replays first, then fresh trials from each cell's
    OptunaSearch, cell by cell. A trial is told to its study only once it has ended (the
    trainable says so); one the GPU-hour cap kept from starting stays RUNNING in the study, so a
    relaunch replays it. A halving cell whose open rungs have all ended opens its next rung;
    while its trials run, the searcher answers "not now" rather than "finished"."""

    def __init__(self, cells: list[CellTrials]) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.cells = cells
        # Tune's trial id -> (cell, study, number, how): "asked" (fresh, from the searcher),
        # "replay" (RUNNING in the study: told when it ends) or "rerun" (told already).
        self.handed: dict[str, tuple[CellTrials, optuna.Study, int, str]] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec):
        return True  # the space is each cell's own (search_space)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        waiting = False
        for cell in self.cells:
            if cell.replays:
                replay = cell.replays.pop(0)
                how = "replay" if replay.trial.state == TrialState.RUNNING else "rerun"
                self.hand(trial_id, cell, replay.study, replay.number, how)
                return {"trial": cell.trial_config(replay.index, replay.params)}
            if cell.fresh > 0:
                cell.fresh -= 1
                params = dict(cell.searcher.suggest(trial_id))
                number = int(params.pop("number"))
                self.hand(trial_id, cell, cell.study, number, "asked")
                return {"trial": cell.trial_config(number, params)}
            waiting = waiting or (cell.halving is not None and cell.in_flight > 0)
        return None if waiting else Searcher.FINISHED

    def hand(
        self, trial_id: str, cell: CellTrials, study: optuna.Study, number: int, how: str
    ) -> None:
        self.handed[trial_id] = (cell, study, number, how)
        cell.in_flight += 1

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        cell, study, number, how = self.handed.pop(trial_id)
        cell.in_flight -= 1
        status = (result or {}).get("status")
        # Not ENDED: kept out by the cap, or crashed before recording anything. A "rerun" is
        # known to its study already; its row is back in the dataset.
        if status in ENDED and how == "replay":
            tell(study, number, status, result.get(METRIC))
        elif status in ENDED and how == "asked":
            if status == AttemptStatus.COMPLETED:
                cell.searcher.on_trial_complete(trial_id, {METRIC: result[METRIC]})
            else:
                cell.searcher.on_trial_complete(trial_id, None, error=True)
        if cell.halving is not None and not (cell.in_flight or cell.replays or cell.fresh):
            cell.replays += open_rung(cell.halving)

    def save(self, checkpoint_path: str) -> None:
        """What Tune snapshots: the trials handed out and not yet ended. lipsweep never restores
        it (Optuna's journal and the Parquet dataset are the sweep's state)."""
        handed = {key: [cell.name, number] for key, (cell, _, number, _) in self.handed.items()}
        Path(checkpoint_path).write_text(json.dumps(handed))

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a sweep resumes from optuna.journal and its Parquet dataset")


# ----------------------------------------------------------------------------- the stage

Monitor = Callable[[str], None]  # one line of news for whoever watches the run


def run_search(launch: Launch, planned: list[PlannedTrial], monitor: Monitor) -> int:
    """Run every cell's missing search trials in one Tune experiment, asked from each cell's
    Optuna study; return how many the GPU-hour cap kept from starting. A random sampler may
    be asked ahead; TPE is asked only when a slot is free, so it conditions on every result
    told by then. A halving search opens each cell's next rung once its rung has ended."""
    from ray import tune

    config = launch.config
    attempts = read_attempts(launch.folder)
    storage = journal(launch.folder)
    cells = []
    for cell in dict.fromkeys(t.cell for t in planned):
        mine = [t for t in planned if t.cell == cell]
        cells.append(search_cell(launch, cell, attempts, storage, mine))
    ready = sum(len(cell.replays) + cell.fresh for cell in cells)
    monitor(f"search: {ready} trials to run over {len(cells)} cells")
    if ready == 0:
        return 0
    tune_config = tune.TuneConfig(
        reuse_actors=True,
        search_alg=CellSearch(cells),
        num_samples=sum(cell.pending for cell in cells),
        max_concurrent_trials=concurrent_slots(config) if config.sampler == "tpe" else None,
    )
    return execute(config, launch.folder, "search", launch.tag, {}, tune_config)


def search_cell(
    launch: Launch, cell: Cell, attempts: pd.DataFrame, storage: Any, planned: list[PlannedTrial]
) -> CellTrials:
    """A cell's search state from its studies and the Parquet dataset: which trial indices
    ended, with what, and how to build a trial's task."""
    config = launch.config
    by_index = {trial.index: trial for trial in planned}

    def read_ended(frame: pd.DataFrame | None = None) -> pd.DataFrame:
        frame = read_attempts(launch.folder) if frame is None else frame
        return ended_for_good(cell_attempts(frame, cell, "search"), config.max_retries)

    def trial_config(index: int, params: dict[str, Any]) -> Any:
        return launch.task(
            by_index[index],
            params["lr"],
            params["weight_decay"],
            int(params["seed"]),
            params.get("temperature"),
            params.get("offset"),
        )

    settings = SearchSettings.of(config)
    study_name = f"{config.sweep_id}/{cell.name}"
    halving = None
    if config.search == "halving":
        rungs = cell_rungs(config, max(trial.epochs for trial in planned))
        space = search_space(settings)
        halving = Halving(rungs, study_name, storage, space, read_ended)
    ended = outcomes(read_ended(attempts))
    return prepare_cell(cell.name, study_name, storage, settings, ended, trial_config, halving)

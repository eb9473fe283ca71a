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
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from lipsweep.names import AttemptStatus, Cell
from lipsweep.plan import PlannedTrial
from lipsweep.results.store import cell_attempts, ended_for_good, read_attempts
from lipsweep.trainable import Launch, concurrent_slots, execute

METRIC = "cra_36"  # validation CRA at 36/255, as the paper selects
ENDED = tuple(str(s) for s in AttemptStatus)  # what the trainable returns once a trial is over

TrialConfig = Callable[[int, dict[str, Any]], Any]  # (number, params) -> the trial's TrialTask
Ended = tuple[str, float]  # (status, validation CRA) of a trial whose attempts are over

optuna.logging.set_verbosity(optuna.logging.WARNING)


def journal(folder: Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))


def search_space(
    lr_range: tuple[float, float], weight_decay_range: tuple[float, float]
) -> Callable[[optuna.Trial], dict[str, int]]:
    """The paper's space, define-by-run: lr and weight decay log-uniform, a seed. The space
    returns the trial's number, which is its index in the sweep (its id, its checkpoints)."""

    def space(trial: optuna.Trial) -> dict[str, int]:
        trial.suggest_float("lr", *lr_range, log=True)
        trial.suggest_float("weight_decay", *weight_decay_range, log=True)
        trial.suggest_int("seed", 0, 999)
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


@dataclass
class CellTrials:
    """One cell's share of a launch's search: interrupted trials to replay, fresh ones to ask."""

    name: str
    study: optuna.Study
    searcher: OptunaSearch
    replays: list[FrozenTrial]
    fresh: int
    trial_config: TrialConfig

    @property
    def pending(self) -> int:
        return len(self.replays) + self.fresh


@dataclass(frozen=True)
class SearchSettings:
    """What every cell's search shares (from the sweep's config)."""

    sampler: Literal["random", "tpe"]
    seed: int
    trials: int  # per cell
    lr_range: tuple[float, float]
    weight_decay_range: tuple[float, float]


def prepare_cell(
    name: str,
    study_name: str,
    storage: optuna.storages.BaseStorage,
    settings: SearchSettings,
    ended: dict[int, Ended],
    trial_config: TrialConfig,
) -> CellTrials:
    """Bring the cell's study up to date with ``ended`` (trial number -> outcome, from the
    Parquet dataset) and say what is left to run of its ``trials`` trials."""
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True
    )
    replays = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING and trial.number in ended:
            tell(study, trial.number, *ended[trial.number])
        elif trial.number < settings.trials and trial.number not in ended:
            # Interrupted (RUNNING), or told but its result row is gone: the Parquet
            # dataset is the truth, so the trial runs again under its number and params.
            replays.append(trial)
    existing = len(study.trials)
    # A relaunch asks its fresh trials from a sampler seeded anew: seeding by the trials the
    # study holds keeps it from drawing the first launch's hyperparameters again.
    sampler_seed = random.Random(f"{settings.seed}/{name}/{existing}").randrange(2**31)
    searcher = OptunaSearch(
        space=search_space(settings.lr_range, settings.weight_decay_range),
        metric=METRIC,
        mode="max",
        sampler=make_sampler(settings.sampler, sampler_seed),
        study_name=study_name,
        storage=storage,
    )
    fresh = max(0, settings.trials - existing)
    return CellTrials(name, study, searcher, replays, fresh, trial_config)


class CellSearch(Searcher):
    """A Tune searcher over cells: replays first, then fresh trials from each cell's
    OptunaSearch, cell by cell. A trial is told to its study only once it has ended (the
    trainable says so); one the GPU-hour cap kept from starting stays RUNNING in the study, so a
    relaunch replays it."""

    def __init__(self, cells: list[CellTrials]) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.cells = cells
        # Tune's trial id -> (cell, number, how): "asked" (fresh, from the searcher),
        # "replay" (RUNNING in the study: told when it ends) or "rerun" (told already).
        self.handed: dict[str, tuple[CellTrials, int, str]] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec):
        return True  # the space is each cell's own (search_space)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for cell in self.cells:
            if cell.replays:
                trial = cell.replays.pop(0)
                how = "replay" if trial.state == TrialState.RUNNING else "rerun"
                self.handed[trial_id] = (cell, trial.number, how)
                return {"trial": cell.trial_config(trial.number, trial.params)}
            if cell.fresh > 0:
                cell.fresh -= 1
                params = dict(cell.searcher.suggest(trial_id))
                number = int(params.pop("number"))
                self.handed[trial_id] = (cell, number, "asked")
                return {"trial": cell.trial_config(number, params)}
        return Searcher.FINISHED

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        cell, number, how = self.handed.pop(trial_id)
        status = (result or {}).get("status")
        if status not in ENDED:  # kept out by the cap, or crashed before recording anything
            return
        if how == "replay":
            tell(cell.study, number, status, result.get(METRIC))
        elif how == "rerun":
            return  # the study knows this trial already; its row is back in the dataset
        elif status == AttemptStatus.COMPLETED:
            cell.searcher.on_trial_complete(trial_id, {METRIC: result[METRIC]})
        else:
            cell.searcher.on_trial_complete(trial_id, None, error=True)

    def save(self, checkpoint_path: str) -> None:
        """What Tune snapshots: the trials handed out and not yet ended. lipsweep never restores
        it (Optuna's journal and the Parquet dataset are the sweep's state)."""
        handed = {key: [cell.name, number] for key, (cell, number, _) in self.handed.items()}
        Path(checkpoint_path).write_text(json.dumps(handed))

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a sweep resumes from optuna.journal and its Parquet dataset")


# ----------------------------------------------------------------------------- the stage

Monitor = Callable[[str], None]  # one line of news for whoever watches the run


def run_search(launch: Launch, planned: list[PlannedTrial], monitor: Monitor) -> int:
    """Run every cell's missing search trials in one Tune experiment, asked from each cell's
    Optuna study; return how many the GPU-hour cap kept from starting. A random sampler may
    be asked ahead; TPE is asked only when a slot is free, so it conditions on every result
    told by then."""
    from ray import tune

    config = launch.config
    attempts = read_attempts(launch.folder)
    storage = journal(launch.folder)
    cells = []
    for cell in dict.fromkeys(t.cell for t in planned):
        mine = [t for t in planned if t.cell == cell]
        cells.append(search_cell(launch, cell, attempts, storage, mine))
    pending = sum(cell.pending for cell in cells)
    monitor(f"search: {pending} trials to run over {len(cells)} cells")
    if pending == 0:
        return 0
    tune_config = tune.TuneConfig(
        reuse_actors=True,
        search_alg=CellSearch(cells),
        num_samples=pending,
        max_concurrent_trials=concurrent_slots(config) if config.sampler == "tpe" else None,
    )
    return execute(config, launch.folder, "search", launch.tag, {}, tune_config)


def search_cell(
    launch: Launch, cell: Cell, attempts: Any, storage: Any, planned: list[PlannedTrial]
) -> CellTrials:
    """A cell's search state from its study and the Parquet dataset: which trial numbers
    ended, with what, and how to build a trial's task."""
    config = launch.config
    done = ended_for_good(cell_attempts(attempts, cell, "search"), config.max_retries)
    ended = {int(r.trial_index): (str(r.status), float(r.cra_36)) for r in done.itertuples()}

    def trial_config(number: int, params: dict[str, Any]) -> Any:
        return launch.task(
            planned[number], params["lr"], params["weight_decay"], int(params["seed"])
        )

    settings = SearchSettings(
        config.sampler, config.seed, config.trials, config.lr_range, config.weight_decay_range
    )
    return prepare_cell(
        cell.name, f"{config.sweep_id}/{cell.name}", storage, settings, ended, trial_config
    )

"""One attempt of one trial: train a ConvNet for a fixed number of epochs, evaluate, checkpoint.

The protocol is the paper's (PAPER.md section 3): offset cross-entropy, SGD with momentum 0.9
and weight decay on every parameter, OneCycleLR stepped once per epoch after evaluation,
batch size 256. A NaN ends an attempt with status "nan", an out-of-memory error with "oom",
anything else with "failed", except a full disk: that ``OSError`` propagates, the attempt is not
over (like a killed one, it resumes from its checkpoint).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import socket
import time
import traceback
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch

from lipsweep.atomic import is_disk_full, write_bytes_atomic, write_text_atomic
from lipsweep.certify import certify_model, evaluate
from lipsweep.data import DATASETS, Batches, ImageSet, load_split, train_val_split
from lipsweep.layers.registry import spec as method_spec
from lipsweep.loss import DEFAULT_MARGIN, DEFAULT_TEMPERATURE, offset_cross_entropy
from lipsweep.measure import PeakMemory
from lipsweep.memory import is_out_of_memory, memory_cap
from lipsweep.model import build_model
from lipsweep.names import CHECKPOINT, PROGRESS, AttemptStatus

SPLIT_SEED = 0  # one fixed 90/10 split per dataset, so every search trial sees the same one


@dataclass(frozen=True)
class TrialSpec:
    """Everything that defines one attempt; two equal specs train the same model."""

    dataset: str
    size: str
    method: str
    epochs: int
    lr: float
    weight_decay: float
    seed: int
    stage: Literal["search", "final"] = "final"
    batch_size: int = 256
    eval_every: int = 1  # evaluate every this many epochs (and always after the last one)
    checkpoint_every_epochs: int = 10
    checkpoint_every_s: float = 300.0
    data_dir: str | None = None
    device: str = "cpu"
    max_examples: int | None = None  # use only the first N examples of each split (smoke runs)
    memory_limit_gib: float | None = None  # past it an allocation fails: status "oom"
    loss_temperature: float = DEFAULT_TEMPERATURE  # of the training loss (--search-space)
    loss_offset: float = DEFAULT_MARGIN  # the offset cross-entropy's margin m (--search-space)


@dataclass
class Outcome:
    """What an attempt produced; metrics are from the last evaluation."""

    status: AttemptStatus
    error: str = ""
    train_examples: int = 0  # examples per training epoch
    epochs_done: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    device_seconds: float = 0.0
    train_seconds: float = 0.0  # training epochs only: what the budget buys
    eval_seconds: float = 0.0  # the evaluations between and after epochs
    certify_seconds: float = 0.0  # the final run's certificate (bound, float64 margins)
    resumed_from_epoch: int = 0
    lipschitz_bound: float | None = None  # guaranteed, of the trained model; final stage only
    certified_lipschitz: float | None = None  # the L the final metrics were certified with
    float32_logit_deviation: float | None = None  # final stage: max |z32 - z64| (certify.py)
    started_at: str = ""
    ended_at: str = ""

    @property
    def seconds_per_epoch(self) -> float:
        trained = [row["train_seconds"] for row in self.history]
        return sum(trained) / len(trained) if trained else math.nan

    def peak_bytes(self, name: str) -> int | None:
        """The largest ``train_peak_bytes`` or ``inference_peak_bytes`` of the history (each
        run of the attempt measures its first epoch and first evaluation)."""
        measured = [int(row[name]) for row in self.history if row.get(name) is not None]
        return max(measured) if measured else None

    @property
    def inference_throughput(self) -> float | None:
        """Examples per second of the last evaluation (cached eval forward and margins)."""
        for row in reversed(self.history):
            if row.get("eval_seconds"):
                return row["examples"] / row["eval_seconds"]
        return None


class NonFiniteError(RuntimeError):
    """Loss or weights became NaN or infinite."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_data(spec: TrialSpec) -> tuple[ImageSet, ImageSet]:
    """(training set, evaluation set): 90/10 train/validation for search, train/test for final."""
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    train = load_split(spec.dataset, "train", data_dir)
    if spec.stage == "search":
        train, held_out = train_val_split(train, val_fraction=0.1, seed=SPLIT_SEED)
    else:
        held_out = load_split(spec.dataset, "test", data_dir)
    if spec.max_examples is not None:
        train = train.subset(range(min(len(train), spec.max_examples)))
        held_out = held_out.subset(range(min(len(held_out), spec.max_examples)))
    return train, held_out


def assumed_lipschitz(spec: TrialSpec) -> float:
    """The Lipschitz constant certificates use during training (the method's registry spec):
    1 for the 1-Lipschitz methods (final runs are re-certified with the bound if it exceeds 1),
    infinity for the unconstrained standard conv, which certifies nothing."""
    return method_spec(spec.method).assumed_lipschitz


def model_config(spec: TrialSpec) -> dict[str, str]:
    """The arguments of ``build_model`` that rebuild this attempt's model."""
    return {"method": spec.method, "size": spec.size, "dataset": spec.dataset}


def model_input(spec: TrialSpec) -> tuple[int, int, int]:
    info = DATASETS[spec.dataset]
    return (info.channels, info.image_size, info.image_size)


class Attempt:
    """The state of one attempt: model, optimizer, schedule, history and where it is saved."""

    def __init__(self, spec: TrialSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.device = torch.device(spec.device)
        torch.manual_seed(spec.seed)
        self.model = build_model(spec.method, spec.size, spec.dataset).to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=spec.lr, momentum=0.9, weight_decay=spec.weight_decay
        )
        # The paper steps OneCycleLR once per epoch (steps_per_epoch=1), all else default.
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=spec.lr, epochs=max(spec.epochs, 1), steps_per_epoch=1
        )
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.seconds_before = 0.0  # device-seconds used by earlier runs of this attempt
        self.notes: list[str] = []  # what happened that the row should say (a damaged file)
        self.run = 0  # 0 for the first run; each resume from a checkpoint adds one
        self.started_at = now()  # of the first run: a resumed attempt keeps it
        self.run_started = time.monotonic()

    def device_seconds(self) -> float:
        """Device-seconds used so far, over every run of this attempt."""
        return self.seconds_before + time.monotonic() - self.run_started

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint atomically: a crash leaves the old one or the new one. It is
        serialised in memory first: torch.save reports a full disk as a RuntimeError, the
        atomic writer as an OSError (ENOSPC)."""
        state = {
            "model": self.model.state_dict(),
            "model_config": model_config(self.spec),  # what rebuilds the model: build_model(**)
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "run": self.run,
            "started_at": self.started_at,
            "history": self.history,
            "device_seconds": self.device_seconds(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes_atomic(self.workdir / CHECKPOINT, buffer.getvalue())

    def restore(self) -> bool:
        """Load the last checkpoint if there is one (weights only: no arbitrary unpickling).

        Without one, a killed earlier run's device time (its progress record) still counts.
        A checkpoint that does not load (truncated, damaged, not a checkpoint) is set aside
        as ``checkpoint.pt.damaged-<time>`` and the attempt starts from scratch; ``notes``
        says so (checkpoints are written atomically, so there is no older one to fall back
        to)."""
        path = self.workdir / CHECKPOINT
        self.seconds_before = self._recorded_seconds()
        if not path.exists():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
            aside = path.with_name(f"{CHECKPOINT}.damaged-{now().replace(':', '')}")
            path.rename(aside)
            reason = str(error).splitlines()[0][:120]
            self.notes.append(f"{CHECKPOINT} did not load ({reason}): set aside as {aside.name}, "
                              "restarted from scratch")  # fmt: skip
            return False
        planned = state["scheduler"].get("total_steps")
        if planned is not None and planned != max(self.spec.epochs, 1):
            raise ValueError(
                f"the checkpoint in {self.workdir} was planned for {planned} epochs, this "
                f"attempt for {self.spec.epochs}: resume with the sweep's stored plan"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.run = int(state.get("run", 0)) + 1
        self.started_at = str(state.get("started_at", self.started_at))
        self.history = list(state["history"])
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        # Time spent after the checkpoint by a killed run was really used: count it too.
        self.seconds_before = max(float(state["device_seconds"]), self._recorded_seconds())
        return True

    def _recorded_seconds(self) -> float:
        """The device-seconds of the progress record (0 if there is none or it is damaged)."""
        progress = self.workdir / PROGRESS
        try:
            return float(json.loads(progress.read_text()).get("device_seconds", 0.0))
        except (OSError, ValueError, AttributeError, TypeError):
            return 0.0

    def record_progress(self) -> None:
        """A small file rewritten when a run starts and after every epoch: `status` sees live
        usage and which process trains the attempt; a resume sees the time a kill lost."""
        progress = {
            "epoch": self.epoch,
            "device_seconds": self.device_seconds(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        write_text_atomic(self.workdir / PROGRESS, json.dumps(progress))

    # -- training ----------------------------------------------------------------------------
    def train_epoch(self, batches: Batches) -> dict[str, float]:
        """One pass over the training batches. Shuffling and augmentation are seeded by
        (seed, epoch), so a resumed attempt sees exactly the batches it would have seen."""
        self.model.train()
        batches.generator.manual_seed(self.spec.seed * 1_000_003 + self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        seen = 0
        for x, y in batches:
            logits = self.model(x)
            loss = offset_cross_entropy(
                logits, y, self.spec.loss_offset, self.spec.loss_temperature
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            # Accumulate on the device; one synchronisation per epoch, not per batch.
            finite &= torch.isfinite(loss)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
        if not bool(finite) or not self.weights_finite():
            raise NonFiniteError(f"non-finite loss or weights in epoch {self.epoch + 1}")
        return {"train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen}

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def batches(self, data: ImageSet, train: bool) -> Batches:
        return Batches(data, self.spec.batch_size, train, torch.Generator(), self.device)

    def eval_due(self) -> bool:
        last = self.epoch == self.spec.epochs
        return last or (self.spec.eval_every > 0 and self.epoch % self.spec.eval_every == 0)


def run_attempt(
    spec: TrialSpec,
    workdir: Path,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> Outcome:
    """Train (or resume) one attempt to its planned epochs. Raises only on a full disk
    (``OSError``, ENOSPC): the attempt has not ended, it resumes from its last checkpoint."""
    outcome = Outcome(status=AttemptStatus.FAILED, started_at=now())
    workdir.mkdir(parents=True, exist_ok=True)
    attempt: Attempt | None = None
    try:
        with memory_cap(torch.device(spec.device), spec.memory_limit_gib):
            attempt = Attempt(spec, workdir)
            if attempt.restore():
                outcome.resumed_from_epoch = attempt.epoch
            train, held_out = load_data(spec)
            outcome.train_examples = len(train)
            _train_to_end(attempt, train, held_out, on_epoch)
            outcome.status = AttemptStatus.COMPLETED
            if spec.stage == "final":
                certify_final(attempt, held_out, outcome)
    except NonFiniteError as error:
        outcome.status, outcome.error = AttemptStatus.NAN, str(error)
    except Exception as error:
        if is_disk_full(error):
            raise
        if is_out_of_memory(error):
            outcome.status, outcome.error = AttemptStatus.OOM, str(error).splitlines()[0]
        else:
            last_line = traceback.format_exc().strip().splitlines()[-1]
            outcome.status, outcome.error = AttemptStatus.FAILED, last_line
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if attempt is not None:
        outcome.started_at = attempt.started_at
        outcome.epochs_done = attempt.epoch
        outcome.history = attempt.history
        outcome.device_seconds = attempt.device_seconds()
        outcome.metrics = _last_metrics(attempt.history)
        outcome.train_seconds = sum(row["train_seconds"] for row in attempt.history)
        outcome.eval_seconds = sum(row.get("eval_seconds", 0.0) for row in attempt.history)
        outcome.error = "; ".join(filter(None, [*attempt.notes, outcome.error]))
    outcome.ended_at = now()
    return outcome


def certify_final(attempt: Attempt, held_out: ImageSet, outcome: Outcome) -> None:
    """The final model's certificate (``certify_model``, without the attack): its guaranteed
    Lipschitz bound, the last metrics recomputed from float64 logits with L = max(1, bound),
    and how far float32 logits are from them. An error here fails the attempt: an uncertified
    final run is no result."""
    batches = attempt.batches(held_out, train=False)
    certificate = certify_model(attempt.model, batches, attack=False)
    outcome.certify_seconds = sum(certificate.seconds.values())
    outcome.lipschitz_bound = certificate.lipschitz_bound
    outcome.certified_lipschitz = certificate.lipschitz
    outcome.float32_logit_deviation = certificate.float32_logit_deviation
    attempt.history[-1].update(certificate.metrics)


def _train_to_end(
    attempt: Attempt,
    train: ImageSet,
    held_out: ImageSet,
    on_epoch: Callable[[dict[str, float]], None] | None,
) -> None:
    spec = attempt.spec
    train_batches = attempt.batches(train, train=True)
    eval_batches = attempt.batches(held_out, train=False)
    last_save = time.monotonic()
    attempt.record_progress()
    measured_train = measured_eval = False  # peak memory: first epoch and evaluation per run
    while attempt.epoch < spec.epochs:
        start = time.monotonic()
        row: dict[str, float] = {
            "epoch": attempt.epoch + 1,
            "run": attempt.run,  # which run of the attempt trained this epoch
            "lr": attempt.scheduler.get_last_lr()[0],
        }
        with PeakMemory(attempt.device) if not measured_train else nullcontext() as memory:
            row.update(attempt.train_epoch(train_batches))
        if not measured_train:
            row["train_peak_bytes"], measured_train = memory.peak_bytes, True
        row["train_seconds"] = time.monotonic() - start
        attempt.epoch += 1
        if attempt.eval_due():
            start = time.monotonic()
            with PeakMemory(attempt.device) if not measured_eval else nullcontext() as memory:
                row.update(evaluate(attempt.model, eval_batches, assumed_lipschitz(spec)))
            if not measured_eval:
                row["inference_peak_bytes"], measured_eval = memory.peak_bytes, True
            row["eval_seconds"] = time.monotonic() - start
        attempt.scheduler.step()
        attempt.history.append(row)
        due = attempt.epoch % spec.checkpoint_every_epochs == 0
        last = attempt.epoch == spec.epochs
        if due or last or time.monotonic() - last_save > spec.checkpoint_every_s:
            attempt.save()
            last_save = time.monotonic()
        attempt.record_progress()  # after the checkpoint: progress never runs ahead of it
        if on_epoch is not None:
            on_epoch(row)


def _last_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    for row in reversed(history):
        if "accuracy" in row:
            kept = ("epoch", "run", "lr", "train_peak_bytes", "inference_peak_bytes")
            return {k: v for k, v in row.items() if k not in kept}
    return {}

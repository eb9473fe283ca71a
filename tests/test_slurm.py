"""The SLURM backend against a real SLURM on this machine (cluster/slurm-single-node.sh).

The SLURM tests are skipped when slurmctld/munged are not installed (``apt-get install -y
--no-install-recommends slurm-wlm munge``) or when not run as root (the daemons run as root).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd
import psutil
import pytest
from rich.console import Console

from lipsweep.backends.local import LocalBackend
from lipsweep.backends.slurm import (
    SlurmBackend,
    all_job_states,
    latest_jobs,
    read_jobs,
    slurm_folder,
    wait_for_jobs,
)
from lipsweep.cli.render import status_table
from lipsweep.config import SlurmOptions, SweepConfig, time_minutes
from lipsweep.plan import CellPlan, save_plan
from lipsweep.results import read_attempts, read_history
from lipsweep.status import sweep_status
from tests.test_sweep import CONFIG

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "slurm-single-node.sh"
RAY_SCRIPT = ROOT / "cluster" / "ray-in-slurm.sh"
# 20 minutes: submitit counts a SIGUSR2 in the first 10 as a preemption, not a time-out.
OPTIONS = SlurmOptions(cpus_per_task=2, time="20:00")
COMPARED = ["attempt_id", "trial_id", "stage", "lr", "weight_decay", "seed", "status"]
SLACK_S = 1.5  # the results' ended_at has whole seconds (truncated)


def sweep_config(**changes: object) -> SweepConfig:
    """The sweep tests' tiny digits sweep (real images, no download) at 256 examples; the tests
    store its plans (store_plans). The CIFAR-10 subset is not used here: on 2 busy CPU cores a
    final run's Lipschitz bound at 32x32 alone took about a minute, too slow for these tests."""
    return replace(CONFIG, **{"sweep_id": "s", "batch_size": 128, "max_examples": 256, **changes})


# Interrupted mid-attempt: the whole digits training set (11 batches, 1-3 s an epoch here), 8
# search epochs and 1 final. The tests interrupt a job while an attempt has at least
# EPOCHS_LEFT epochs to go: more than SLURM's KillWait (5 s), during which a killed run's
# trials train on (and may finish their attempts).
LONGER = {"max_examples": None, "budgets": ("2h",), "max_epochs": 8}
FINAL_EPOCHS, EPOCHS_LEFT = 1, 6


def store_plans(config: SweepConfig, *outs: Path, final_epochs: int | None = None) -> None:
    """Each cell's plan (max_epochs, or final_epochs for the final budgets) stored as a launch
    stores it, so the launch reuses it instead of calibrating (~15 s a cell here)."""
    for out, cell in itertools.product(outs, config.cells()):
        epochs = dict.fromkeys(config.budgets, final_epochs or config.max_epochs)
        epochs[config.search_budget] = config.max_epochs
        save_plan(out, CellPlan(cell.dataset, cell.size, cell.method, 1.0, epochs))


def launch_slurm(config: SweepConfig, out: Path, options: SlurmOptions) -> dict[str, str]:
    """Submit the sweep as `lipsweep launch --backend slurm` does; cell -> its latest job id."""
    config = replace(config, backend="slurm", slurm=options)
    SlurmBackend(options).launch(config, out, lambda line: None)
    return latest_jobs(out)


def job_state(job_id: str) -> str | None:
    return all_job_states().get(job_id)


def start_cluster(nodes: int) -> Path:
    """A private SLURM of ``nodes`` nodes on this machine, in a new folder."""
    missing = [name for name in ("slurmctld", "slurmd", "munged") if not shutil.which(name)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM daemons need root")
    # munged wants every folder above its socket searchable by all: not pytest's 0700 ones.
    folder = Path(tempfile.mkdtemp(prefix="lipsweep-slurm-"))
    folder.chmod(0o755)
    started = subprocess.run(
        [str(SCRIPT), "start", str(folder), str(nodes)], capture_output=True, text=True, check=False
    )
    assert started.returncode == 0, started.stderr
    return folder


def stop_cluster(folder: Path) -> None:
    subprocess.run([str(SCRIPT), "stop", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm() -> Iterator[str]:
    """A private single-node SLURM for this module, stopped by PID at the end."""
    folder = start_cluster(1)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    yield os.environ["SLURM_CONF"]
    stop_cluster(folder)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.fixture
def slurm_two_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private two-node SLURM (two slurmd daemons, n1 and n2, on this machine)."""
    folder = start_cluster(2)
    monkeypatch.setenv("SLURM_CONF", str(folder / "slurm.conf"))
    yield str(folder / "slurm.conf")
    stop_cluster(folder)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSWEEP_CACHE", str(tmp_path / "cache"))  # jobs inherit it
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def status_text(out: Path) -> str:
    recorder = Console(record=True, width=250, file=open(os.devnull, "w"))  # noqa: SIM115
    config = SweepConfig.load(out)
    jobs = SlurmBackend(config.slurm).job_states(out) if config.backend == "slurm" else {}
    recorder.print(status_table(sweep_status(out), jobs))
    return recorder.export_text()


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`lipsweep ARGS` in a new process, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "lipsweep", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def job_field(job_id: str, name: str) -> str:
    """One field of `scontrol show job` (StartTime, Restarts, ExitCode, ...)."""
    answer = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    )
    for part in answer.stdout.split():
        key, _, value = part.partition("=")
        if key == name:
            return value
    raise KeyError(f"{name} not in `scontrol show job {job_id}`")


def job_temp_dirs(out: Path, job_id: str) -> list[Path]:
    """The Ray temp dirs (/tmp/r<jobid>_<pid>) of the cell job running for ``out`` now: those
    whose process is this sweep's submitit task."""
    found = []
    for path in Path("/tmp").glob(f"r{job_id.split('_')[0]}_*"):
        try:
            command = psutil.Process(int(path.name.rpartition("_")[2])).cmdline()
        except (ValueError, psutil.Error):
            continue
        if str(slurm_folder(out)) in command:
            found.append(path)
    return found


def job_processes(job_id: str) -> list[psutil.Process]:
    """The live processes of a job of this module's SLURM (its environment says so: other
    SLURMs on this machine number their jobs from 1 too)."""
    wanted = {"SLURM_JOB_ID": job_id.split("_")[0], "SLURM_CONF": os.environ["SLURM_CONF"]}
    found = []
    for process in psutil.process_iter():
        try:
            environment = process.environ()
        except psutil.Error:  # gone, a zombie, or not readable
            continue
        if all(environment.get(key) == value for key, value in wanted.items()):
            found.append(process)
    return found


def job_start(job_id: str) -> pd.Timestamp:
    """When the job's current (or last) run started, as an aware timestamp (SLURM prints local
    time without a zone)."""
    local = datetime.strptime(job_field(job_id, "StartTime"), "%Y-%m-%dT%H:%M:%S").astimezone()
    return pd.Timestamp(local)


def finished_ids(out: Path) -> set[str]:
    return set(read_attempts(out)["attempt_id"]) if (out / "results").exists() else set()


def mid_attempt(out: Path, most: int = 10**9) -> str | None:
    """An attempt with a checkpoint after an epoch in 1..most (its progress record says so: it
    is written after the checkpoint) and no result yet."""
    finished = finished_ids(out)
    for path in (out / "attempts").glob("*/progress.json"):
        if path.parent.name not in finished and 1 <= json.loads(path.read_text())["epoch"] <= most:
            return path.parent.name
    return None


def left_mid_way(out: Path) -> dict[str, dict]:
    """attempt id -> {"epoch": its checkpoint's epoch, "device_seconds": the most device time
    it recorded (checkpoint or progress record)}, for attempts with a checkpoint and no result.
    A run killed between a checkpoint and the progress record leaves the checkpoint ahead."""
    import torch

    finished = finished_ids(out)
    left = {}
    for path in (out / "attempts").glob("*/checkpoint.pt"):
        if path.parent.name in finished:
            continue
        state = torch.load(path, weights_only=True)
        progress = path.parent / "progress.json"
        recorded = json.loads(progress.read_text())["device_seconds"] if progress.exists() else 0
        seconds = max(state["device_seconds"], recorded)
        left[path.parent.name] = {"epoch": state["epoch"], "device_seconds": seconds}
    return left


def running_job(out: Path, max_epochs: int = LONGER["max_epochs"]) -> str:
    """The sweep's only job id, once an attempt of it has checkpointed early (epochs 1 to
    max_epochs - EPOCHS_LEFT) of its search."""
    early = max_epochs - EPOCHS_LEFT
    wait_until(lambda: mid_attempt(out, early) is not None, 240, "an attempt past its first epoch")
    (job_id,) = [ids[-1] for ids in read_jobs(out).values()]
    assert job_state(job_id) == "RUNNING"
    return job_id


def interrupt_and_restart(
    out: Path, job_id: str, interrupt
) -> tuple[dict[str, dict], pd.Timestamp]:
    """Interrupt the running job with ``interrupt()`` (which must requeue it), wait until it is
    pending again and every process of its first run is gone (SLURM shows PENDING while they
    are still being killed), start it at once (a requeued job waits ~2 min for its BeginTime)
    and wait until it ends. Returns what the first run left of its unfinished attempts
    (left_mid_way), and when it started."""
    first_start = job_start(job_id)
    (temp,) = job_temp_dirs(out, job_id)
    assert job_processes(job_id)
    interrupt()
    wait_until(lambda: job_state(job_id) == "PENDING", 60, "the requeue")
    wait_until(lambda: not job_processes(job_id), 60, "the first run's processes to end")
    left = left_mid_way(out)  # the first run is dead: this is what it left
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    wait_for_jobs(out, [job_id], timeout_s=300)
    # SLURM kills the first run, mostly before it can remove its temp dir: the second does.
    assert not temp.exists(), "the requeued job left the first run's Ray temp dir"
    return left, first_start


def check_resumed_once(
    out: Path, job_id: str, left: dict[str, dict], first_start: pd.Timestamp
) -> None:
    """Every attempt ran to the end exactly once; each one the first run left mid-way resumed
    from its checkpoint (history: run 0, then run 1) and counts its devices' time once."""
    attempts = read_attempts(out).set_index("attempt_id")
    assert attempts.index.is_unique and set(attempts["status"]) == {"completed"}
    assert (attempts["epochs_done"] == attempts["epochs_planned"]).all()
    assert len(list((out / "results" / "attempts").rglob("*.parquet"))) == len(attempts)
    history = read_history(out)
    resumed = {a: p for a, p in left.items() if p["epoch"] >= 1}
    assert resumed, "the interruption left no attempt mid-way"
    assert set(resumed) <= set(attempts.index)
    restart = job_start(job_id)  # the second run's start
    for attempt_id, row in attempts.iterrows():
        mine = history[history["attempt_id"] == attempt_id].sort_values("epoch")
        assert list(mine["epoch"]) == list(range(1, row["epochs_planned"] + 1))
        if attempt_id not in resumed:
            assert (mine["run"] == 0).all() and row["resumed_from_epoch"] == 0
            continue
        done_before = resumed[attempt_id]["epoch"]
        assert row["resumed_from_epoch"] == done_before
        assert list(mine["run"]) == [0] * done_before + [1] * (len(mine) - done_before)
        # GPU-hours: the first run's recorded time once (not 0, not twice), plus the second run.
        seconds, first_run = row["device_seconds"], resumed[attempt_id]["device_seconds"]
        assert seconds >= mine["train_seconds"].sum()
        assert seconds <= (row["ended_at"] - first_start).total_seconds() + SLACK_S
        second_run = (row["ended_at"] - restart).total_seconds()
        assert first_run + mine.loc[mine["run"] == 1, "train_seconds"].sum() <= seconds
        assert seconds <= first_run + second_run + SLACK_S
        assert row["gpu_hours"] == pytest.approx(seconds / 3600)  # a CPU slot counts as 1
    assert not list((out / "ledger").glob("*.json")), "a GPU-hour reservation was left behind"
    assert set(attempts["slurm_job_id"]) == {job_id.split("_")[0]}
    assert job_field(job_id, "Restarts") == "1"


def test_time_limits_parse() -> None:
    assert time_minutes("30") == 30
    assert time_minutes("2:00:00") == 120
    assert time_minutes("1-00") == 1440
    assert time_minutes("1-12:00:00") == 2160
    with pytest.raises(ValueError):
        time_minutes("soon")


def test_options_file(tmp_path: Path) -> None:
    path = tmp_path / "slurm.toml"
    path.write_text('[slurm]\npartition = "gpu"\ngpus_per_node = 4\narray_parallelism = 8\n')
    options = replace(SlurmOptions.from_file(path), partition="a100")
    assert (options.partition, options.gpus_per_node, options.array_parallelism) == ("a100", 4, 8)
    path.write_text('{"partitoin": "gpu"}')
    path = path.rename(tmp_path / "slurm.json")
    with pytest.raises(ValueError, match="partitoin"):
        SlurmOptions.from_file(path)


def test_cli_refuses_bad_slurm_options_and_cancel_without_jobs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lipsweep.cli import app

    runner = CliRunner()
    out = str(tmp_path / "sweep")
    result = runner.invoke(app, ["launch", "--backend", "slurm", "--out", out, "--time", "soon"])
    assert result.exit_code == 2 and "--time 'soon'" in result.output
    result = runner.invoke(app, ["cancel", out])
    assert result.exit_code == 2 and "holds no sweep" in result.output
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_array_over_cells_equals_the_local_sweep(slurm: str, tmp_path: Path, ray_session) -> None:
    # Two cells, one slot: the array runs its tasks one after the other.
    config = sweep_config()
    out, local_out = tmp_path / "slurm-sweep", tmp_path / "local-sweep"
    store_plans(config, out, local_out)
    submitted = launch_slurm(config, out, replace(OPTIONS, array_parallelism=1))
    LocalBackend().launch(config, local_out, lambda line: None)  # the same sweep, here
    wait_for_jobs(out, list(submitted.values()), timeout_s=300)
    assert set(submitted) == {"digits-XS-aol", "digits-XS-sll"}
    (array,) = {job_id.split("_")[0] for job_id in submitted.values()}  # one array
    assert read_jobs(out) == {cell: [job_id] for cell, job_id in submitted.items()}
    remote = read_attempts(out)
    # An array task's SLURM_JOB_ID is its own id: the array's id plus the task index.
    assert set(remote["slurm_job_id"]) <= {str(int(array) + i) for i in range(2)}
    local = read_attempts(local_out)
    key = ["attempt_id"]
    assert len(remote) == len(local) == 6
    assert (
        remote[COMPARED]
        .sort_values(key)
        .reset_index(drop=True)
        .equals(local[COMPARED].sort_values(key).reset_index(drop=True))
    )
    text = status_text(out)
    assert "SLURM job" in text and text.count("2/2") == 2
    assert all(f"{job_id} COMPLETED" in text for job_id in submitted.values())
    assert "SLURM job" not in status_text(local_out)


@pytest.mark.slow
def test_requeued_job_resumes_its_attempt_and_runs_each_attempt_once(
    slurm: str, tmp_path: Path
) -> None:
    """SLURM's own requeue (an admin's `scontrol requeue`, or a node failure)."""
    config = sweep_config(methods=("aol",), **LONGER)
    out = tmp_path / "sweep"
    store_plans(config, out, final_epochs=FINAL_EPOCHS)
    launch_slurm(config, out, OPTIONS)
    job_id = running_job(out)
    requeue = ["scontrol", "requeue", job_id]
    left, first_start = interrupt_and_restart(
        out, job_id, lambda: subprocess.run(requeue, check=True)
    )
    check_resumed_once(out, job_id, left, first_start)
    assert len(read_attempts(out)) == 3
    assert read_jobs(out) == {"digits-XS-aol": [job_id]}


@pytest.mark.slow
def test_preemption_signal_checkpoints_and_requeues_through_submitit(
    slurm: str, tmp_path: Path
) -> None:
    """SIGUSR2 as SLURM sends it before a preemption or the time limit (sbatch --signal=USR2@90,
    which submitit sets: every process of the job's steps, not the batch shell; `scancel
    --signal=USR2 ID` does the same). submitit's handler calls CellJob.checkpoint and requeues
    the job itself; the trials' Ray processes get the signal too and must not die of it."""
    import submitit

    config = sweep_config(methods=("sll",), **LONGER)
    out = tmp_path / "sweep"
    store_plans(config, out, final_epochs=FINAL_EPOCHS)
    launch_slurm(config, out, OPTIONS)
    job_id = running_job(out)
    signal_it = ["scancel", "--signal=USR2", job_id]
    left, first_start = interrupt_and_restart(
        out, job_id, lambda: subprocess.run(signal_it, check=True)
    )
    log = "".join((slurm_folder(out) / f"{job_id}_0_log.{e}").read_text() for e in ("out", "err"))
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log
    assert "Calling checkpoint method." in log and f"Requeued job {job_id}" in log
    check_resumed_once(out, job_id, left, first_start)
    assert len(read_attempts(out)) == 3
    # The requeued task ran the CellJob submitit stored at the signal, to its end.
    assert submitit.SlurmJob(slurm_folder(out), job_id).result() == "digits-XS-sll"
    assert read_jobs(out) == {"digits-XS-sll": [job_id]}


@pytest.mark.slow
def test_cancelled_job_shows_in_status_and_lipsweep_resume_finishes(
    slurm: str, tmp_path: Path
) -> None:
    # `lipsweep cancel` starts a Python process (~2 s, more under load) before its scancel:
    # 12 more search epochs than the other tests, so the attempts are still mid-way then.
    config = sweep_config(methods=("aol",), **{**LONGER, "max_epochs": LONGER["max_epochs"] + 12})
    out = tmp_path / "sweep"
    store_plans(config, out, final_epochs=FINAL_EPOCHS)
    launch_slurm(config, out, OPTIONS)
    job_id = running_job(out, config.max_epochs)
    cancelled = cli("cancel", str(out))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancelled 1 jobs: {job_id}" in cancelled.stdout
    wait_for_jobs(out, [job_id], timeout_s=60)
    wait_until(lambda: not job_processes(job_id), 60, "the cancelled job's processes to end")
    left = {a: p["epoch"] for a, p in left_mid_way(out).items() if p["epoch"] >= 1}
    assert left, "the cancellation left no attempt mid-way"
    assert f"{job_id} CANCELLED" in status_text(out)
    resumed = cli("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    ids = read_jobs(out)["digits-XS-aol"]
    assert len(ids) == 2 and ids[0] == job_id and f"SLURM job {ids[1]}" in resumed.stdout
    wait_for_jobs(out, [ids[1]], timeout_s=300)
    attempts = read_attempts(out)
    assert attempts["attempt_id"].is_unique and len(attempts) == 3
    assert set(attempts["status"]) == {"completed"}
    resumed = attempts.set_index("attempt_id")["resumed_from_epoch"]
    assert {a: resumed[a] for a in left} == left  # the cancelled attempts went on
    assert not list((out / "ledger").glob("*.json"))
    text = status_text(out)
    assert f"{ids[1]} COMPLETED" in text and "1/1" in text
    # `lipsweep resume` of a finished SLURM sweep submits nothing and exits 0.
    again = cli("resume", str(out))
    assert again.returncode == 0, again.stderr
    assert "no cell to submit" in " ".join(again.stdout.split())
    assert read_jobs(out) == {"digits-XS-aol": ids}


RAY_PROBE = r'''
"""What the test asserts about the Ray cluster ray-in-slurm.sh started (runs on its head)."""
import json, os, re, subprocess, sys
from pathlib import Path

import psutil
import ray

ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
nodes = [
    {"id": n["NodeID"], "address": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU")}
    for n in ray.nodes()
    if n["Alive"]
]
# ray-in-slurm.sh's temp dirs: /tmp/r<jobid>n<node index>.
temp = re.compile(rf"/tmp/r{os.environ['SLURM_JOB_ID']}n[01](?![0-9])")
listening = set()
for process in psutil.process_iter(["cmdline"]):
    try:
        if any(temp.search(part) for part in process.info["cmdline"] or []):
            listening |= {
                (c.laddr.ip, c.laddr.port)
                for c in process.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            }
    except psutil.Error:
        pass
temps = [f"/tmp/r{os.environ['SLURM_JOB_ID']}n{index}" for index in range(2)]
intruder = subprocess.run(
    [sys.executable, "-c", "import os, ray; ray.init(address=os.environ['RAY_ADDRESS'])"],
    env={**os.environ, "RAY_AUTH_TOKEN": "0" * 64},
    capture_output=True,
    text=True,
    timeout=120,
)
json.dump(
    {
        "nodes": nodes,
        "ports": sorted(port for _, port in listening),
        "address": os.environ["RAY_ADDRESS"],
        "temp_dirs": [str(p) for p in map(Path, temps) if (p / "session_latest").exists()],
        "intruder": [intruder.returncode, intruder.stderr[-2000:]],
    },
    open(sys.argv[1], "w"),
)
'''


def ray_processes_of(job_id: str) -> list[str]:
    """Live processes whose command line names one of the job's Ray temp dirs."""
    marker, found = f"/tmp/r{job_id}n", []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if marker in command:
            found.append(f"{process.info['pid']}: {command[:120]}")
    return found


@pytest.mark.slow
def test_ray_over_a_two_node_allocation_runs_a_sweep_on_both_nodes(
    slurm_two_nodes: str, tmp_path: Path
) -> None:
    """cluster/ray-in-slurm.sh in a two-node allocation (one CPU per node): a Ray head and a
    worker join, `lipsweep launch --backend ray --address` runs its two search trials on the
    two nodes, and the script's stop leaves no Ray step running."""
    out, probe, found = tmp_path / "sweep", tmp_path / "probe.py", tmp_path / "probe.json"
    probe.write_text(RAY_PROBE)
    # The launch reuses a stored plan (3 search epochs, 1 final) instead of calibrating.
    save_plan(out, CellPlan("digits", "XS", "aol", 1.0, {"6s": 3, "4s": 1}))
    driver = tmp_path / "driver.sh"
    driver.write_text(
        "set -e\n"
        f'python "{probe}" "{found}"\n'
        "python -m lipsweep launch --preset quickstart --methods aol --trials 2 "
        '--search-budget 6s --budget 4s --backend ray --address "$RAY_ADDRESS" '
        f'--out "{out}"\n'
    )
    log = tmp_path / "job.out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    sbatch = ["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"]
    submitted = subprocess.run(
        [*sbatch, f"--output={log}", f"--chdir={ROOT}", f"--wrap={RAY_SCRIPT} bash {driver}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip()
    wait_for_jobs(out, [job_id], timeout_s=300)
    output = log.read_text()
    assert job_field(job_id, "JobState") == "COMPLETED", output[-3000:]
    assert job_field(job_id, "NodeList") == "n[1-2]"
    assert "ray-in-slurm: 2 Ray nodes at" in output
    # Checked by the script between COMMAND's end and the job's (when slurmd would clean up
    # anyway): SLURM runs none of the Ray steps any more.
    assert "ray-in-slurm: Ray stopped on 2 nodes, no step left" in output, output[-3000:]
    probed = json.loads(found.read_text())
    nodes = probed["nodes"]
    assert len({n["id"] for n in nodes}) == 2 and all(n["cpus"] == 1 for n in nodes)
    # Each Ray node advertises an address of its node (here: this machine's), the head's is
    # RAY_ADDRESS.
    here = {a.address for addresses in psutil.net_if_addrs().values() for a in addresses}
    assert all(n["address"] in here for n in nodes)
    assert probed["address"].split(":")[0] in {n["address"] for n in nodes}
    # No dashboard; a client without this job's token is refused; one short temp dir per node.
    assert 8265 not in probed["ports"] and int(probed["address"].split(":")[1]) in probed["ports"]
    code, error = probed["intruder"]
    assert code != 0 and "InvalidAuthToken" in error, error
    temps = [f"/tmp/r{job_id}n{index}" for index in range(2)]
    assert probed["temp_dirs"] == temps
    assert not any(map(os.path.exists, temps)), "a Ray temp dir was left behind"
    # Every Ray process of the job is gone with it (`ray start --block`, raylets, GCS, workers):
    # none is left running with a command line or environment naming the job's temp dirs.
    deadline = time.monotonic() + 30
    while (left := ray_processes_of(job_id)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"Ray processes outlived their job: {left}"
    attempts = read_attempts(out)
    assert len(attempts) == 3 and set(attempts["status"]) == {"completed"}
    assert sorted(attempts["epochs_done"]) == [1, 3, 3]
    # One Ray node per SLURM node and one CPU each: the two trials ran at once, one per node
    # (start times are not compared: a trial's worker can take longer to start than it trains).
    search = attempts[attempts["stage"] == "search"]
    assert sorted(search["slurm_node"]) == ["n1", "n2"], search[["trial_id", "slurm_node"]]


CHILD = r'''
"""Like a SLURM step's main process: submitit's SIGUSR2 handler, Ray started by jobs.cell."""
import json, os, signal, sys
from pathlib import Path

import psutil
import ray

from jobs.cell import start_ray

caught = []
signal.signal(signal.SIGUSR2, lambda signum, frame: caught.append(signum))
start_ray(Path(sys.argv[2]))


@ray.remote
class Trial:
    def pid(self):
        return os.getpid()


trial = Trial.remote()
worker = ray.get(trial.pid.remote())
ray_processes = psutil.Process().children(recursive=True)
for process in [*ray_processes, psutil.Process()]:  # as slurmstepd signals a step
    process.send_signal(signal.SIGUSR2)
# Round trips after the signal: through the trial's worker, the raylet (a new task) and the GCS.
# A process that the signal ends would be gone before it could answer.
answers = ray.get(trial.pid.remote(), timeout=60) == worker
fresh_task = ray.get(ray.remote(lambda: 1).remote(), timeout=60)
nodes = len(ray.nodes())
alive = [p.pid for p in ray_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
json.dump(
    {
        "caught": caught,
        "processes": [p.pid for p in ray_processes],
        "alive": alive,
        "worker": worker,
        "answers": answers,
        "fresh_task": fresh_task,
        "nodes": nodes,
    },
    open(sys.argv[1], "w"),
)
ray.shutdown()
'''


@pytest.mark.slow
def test_ray_processes_of_a_job_survive_the_preemption_signal(tmp_path: Path) -> None:
    """SLURM signals every process of the step, Ray's too; SIGUSR2 ends a process that does not
    handle it. A cell job's Ray (jobs.cell.start_ray) ignores it, its main process keeps
    submitit's handler, and the trials keep running until the job is requeued."""
    child, found = tmp_path / "child.py", tmp_path / "found.json"
    child.write_text(CHILD)
    temp = Path(f"/tmp/rt{os.getpid()}")
    ran = subprocess.run(
        [sys.executable, str(child), str(found), str(temp)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    shutil.rmtree(temp, ignore_errors=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(found.read_text())
    assert result["caught"] == [signal.SIGUSR2]
    assert result["worker"] in result["processes"] and len(result["processes"]) >= 3
    assert result["alive"] == result["processes"]
    assert result["answers"] and result["fresh_task"] == 1 and result["nodes"] == 1


def test_finished_cells_are_not_resubmitted(tmp_path: Path) -> None:
    """A cell whose every final run has ended for good needs no new job on a relaunch; a NaN
    final with retries left, or a missing budget, keeps the cell open."""
    from datetime import UTC

    from lipsweep.backends.slurm import finished_cells
    from lipsweep.results import write_attempt

    config = SweepConfig(
        sweep_id="s",
        datasets=("digits",),
        sizes=("XS",),
        methods=("aol", "cpl", "sll"),
        budgets=("1h", "2h"),
        max_retries=1,
    )

    def final(method: str, budget: str, status: str, attempt: int = 0) -> None:
        trial = f"final-digits-XS-{method}-{budget}-t0"
        row = {
            "sweep": "s",
            "dataset": "digits",
            "method": method,
            "size": "XS",
            "stage": "final",
            "budget": budget,
            "trial_id": trial,
            "attempt": attempt,
            "attempt_id": f"{trial}-a{attempt}",
            "status": status,
            "ended_at": datetime.now(UTC),
        }
        write_attempt(tmp_path, row, [])

    final("aol", "1h", "completed")
    final("aol", "2h", "oom")
    final("cpl", "1h", "completed")
    final("cpl", "2h", "nan")  # one retry left
    final("sll", "1h", "completed")  # 2h not run yet
    assert finished_cells(config, tmp_path) == {"digits-XS-aol"}
    final("cpl", "2h", "nan", attempt=1)  # retries used up
    assert finished_cells(config, tmp_path) == {"digits-XS-aol", "digits-XS-cpl"}


def test_the_slurm_folder_is_created_private(tmp_path: Path) -> None:
    """submitit's folder holds the pickled jobs the tasks run: make_executor creates it 0700,
    and tightens one that another umask or a user left open (no sbatch needed to build it)."""
    import stat

    from lipsweep.backends.slurm import make_executor

    pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    try:
        make_executor(out, OPTIONS, "lipsweep-t")
    except Exception as error:  # a submitit that wants SLURM to build its executor
        pytest.skip(f"submitit's SLURM executor cannot be built here: {error}")
    assert stat.S_IMODE(slurm_folder(out).stat().st_mode) == 0o700
    slurm_folder(out).chmod(0o777)
    make_executor(out, OPTIONS, "lipsweep-t")
    assert stat.S_IMODE(slurm_folder(out).stat().st_mode) == 0o700

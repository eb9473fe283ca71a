"""The local backend (embedded Ray in this process) and the ray backend (join a running Ray
cluster at an address): the driver runs the whole sweep here."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from lipsweep.audit import gate_plugins
from lipsweep.backends.base import Monitor, check_inputs, existing_config, prepare
from lipsweep.calibrate import Progress
from lipsweep.config import SweepConfig
from lipsweep.errors import InputError
from lipsweep.lock import driver_lock
from lipsweep.names import Cell
from lipsweep.runner import run_sweep

CONNECT_TIMEOUT_S = 5.0


class LocalBackend:
    """Ray started for this run only (``address="local"``), on 127.0.0.1, or, with ``address``,
    an existing Ray cluster joined as a client of its head."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def launch(
        self, config: SweepConfig, out: Path, monitor: Monitor, progress: Progress | None = None
    ) -> None:
        import ray

        check_inputs(existing_config(config, out), out)  # cheap checks before Ray starts
        gate_plugins(config.methods)  # a user's layer is audited before Ray starts too
        if self.address is None:
            check_resources(config, local_resources())
        else:
            check_reachable(self.address)
        # One driver per sweep folder, from before calibration and the first write of
        # sweep.json or a plan: a second driver is refused before it does any work.
        with driver_lock(out):
            started_here = False
            try:
                if not ray.is_initialized():
                    self.start_ray()
                    started_here = True
                check_resources(config, ray.cluster_resources())
                config, plans, notes = prepare(config, out, progress)
                for note in notes:
                    monitor(note)
                run_sweep(config, out, plans, monitor=monitor)
            finally:
                if started_here:
                    ray.shutdown()

    def start_ray(self) -> None:
        import ray

        from lipsweep.ray_local import start_local_ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if self.address is None:
            start_local_ray()
            return
        ray.init(address=self.address, log_to_driver=False)

    def job_states(self, out: Path) -> dict[Cell, str]:
        return {}

    def cancel(self, out: Path) -> list[str]:
        return []


def check_reachable(address: str) -> None:
    """A Ray address that answers within seconds, or a one-line InputError (ray.init would
    retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r}: expected HOST:PORT of a Ray head")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise InputError(
            f"no Ray cluster answers at {address} ({error}): start it or fix --address"
        ) from None


def local_resources() -> dict[str, float]:
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_resources(config: SweepConfig, have: dict[str, float]) -> None:
    """A trial that asks for more CPUs or GPUs than the cluster has would wait forever."""
    for key, need, option in (
        ("CPU", config.cpus_per_trial, "--cpus-per-trial"),
        ("GPU", config.gpus_per_trial, "--gpus-per-trial"),
    ):
        if key == "GPU" and need > 0 and not have.get(key, 0):
            raise InputError(
                f"{option} {need:g} but no CUDA device is visible here: use "
                "--gpus-per-trial 0 (CPU), or --backend slurm to run on GPU nodes"
            )
        if need > have.get(key, 0):
            raise InputError(
                f"{option} {need:g} but only {have.get(key, 0):g} {key}s are there: lower it"
            )

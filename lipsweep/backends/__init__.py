"""Where a sweep runs: ``local`` (Ray embedded in this process), ``ray`` (a running Ray cluster
joined at ``--address``) or ``slurm`` (one submitit job-array task per cell). The choice and its
options are stored in sweep.json, so ``lipsweep resume`` and ``lipsweep cancel`` use them."""

from __future__ import annotations

from lipsweep.backends.base import Backend
from lipsweep.config import SlurmOptions, SweepConfig


def backend_for(config: SweepConfig) -> Backend:
    if config.backend == "slurm":
        from lipsweep.backends.slurm import SlurmBackend

        return SlurmBackend(config.slurm or SlurmOptions())
    from lipsweep.backends.local import LocalBackend

    return LocalBackend(config.address if config.backend == "ray" else None)


__all__ = ["Backend", "backend_for"]

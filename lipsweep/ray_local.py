"""Ray started for one run only, reachable from this machine only.

``ray.init(address="local")`` starts a fresh Ray instance (never one left by someone else),
but Ray advertises and binds its gRPC servers (GCS, raylet, workers) on the address it sees as
this node's, every interface on most machines, whatever ``_node_ip_address`` says. With
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray takes the loopback address as the node's address,
so every server listens on 127.0.0.1.
"""

from __future__ import annotations

import os
from pathlib import Path

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_local_ray(
    num_cpus: int | None = None, num_gpus: int | None = None, temp_dir: Path | None = None
) -> None:
    """A new Ray instance on 127.0.0.1: no dashboard, no usage stats, no log forwarding."""
    os.environ[LOOPBACK_ENV] = "0"  # for the processes Ray starts
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray._private import ray_constants

    # This process may have imported ray before the variable was set: its constant is read
    # at import time, and this is the one place that consults it (services.get_node_ip_address).
    ray_constants.ENABLE_RAY_CLUSTER = False
    options: dict = {}
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        os.environ["RAY_TMPDIR"] = str(temp_dir)
        options["_temp_dir"] = str(temp_dir)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
        **options,
    )

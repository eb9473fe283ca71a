"""Ray started for one run only, reachable from this machine only, its files private.

``ray.init(address="local")`` starts a fresh Ray instance (never one left by someone else),
but Ray advertises and binds its gRPC servers (GCS, raylet, workers) on the address it sees as
this node's, every interface on most machines, whatever ``_node_ip_address`` says. With
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray takes the loopback address as the node's address,
so every server listens on 127.0.0.1.

Ray's own defaults leave its temp folders (sockets, logs, spilled objects) open to every user
(Ray chmods its temp root and the session folders 0777) and write its token file
``~/.ray/auth_token`` with the umask (0644). Here Ray's temp root is ``r`` inside a private
folder (0700: a new short one under /tmp unless one is given), so no other user can reach it
even while Ray starts, and the token file is made 0600 (in a ``~/.ray`` created 0700 when Ray
would create it).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
PRIVATE = 0o700
RAY_SUBDIR = "r"  # Ray's temp root inside the private folder (short: socket paths are limited)


def auth_token_path() -> Path:
    """Where Ray keeps the token of the clusters it starts (its default path)."""
    return Path.home() / ".ray" / "auth_token"


def private_temp_dir(temp_dir: Path | None) -> Path:
    """``temp_dir`` (created if missing) or a new /tmp/rayXXXXXXXX, mode 0700 either way. Short,
    as Ray's socket paths under it are limited to about 107 characters."""
    if temp_dir is None:
        return Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # mkdtemp makes it 0700
    temp_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE)
    temp_dir.chmod(PRIVATE)
    return temp_dir


def private_ray_home() -> None:
    """``~/.ray`` created 0700 if missing, before Ray writes its token there (an existing one
    is kept as it is; a home that cannot be written is left to Ray)."""
    with contextlib.suppress(OSError):
        auth_token_path().parent.mkdir(mode=PRIVATE, exist_ok=True)


def protect_auth_token() -> None:
    """The token file, if Ray wrote one, readable by its owner only."""
    token = auth_token_path()
    if token.is_file():
        token.chmod(0o600)


def start_local_ray(
    num_cpus: int | None = None, num_gpus: int | None = None, temp_dir: Path | None = None
) -> Path:
    """A new Ray instance on 127.0.0.1 (no dashboard, no usage stats, no log forwarding), its
    temp root in a private folder; returns that folder (``temp_dir`` when given)."""
    os.environ[LOOPBACK_ENV] = "0"  # for the processes Ray starts
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray._private import ray_constants

    # This process may have imported ray before the variable was set: its constant is read
    # at import time, and this is the one place that consults it (services.get_node_ip_address).
    ray_constants.ENABLE_RAY_CLUSTER = False
    folder = private_temp_dir(temp_dir)
    temp = folder / RAY_SUBDIR
    os.environ["RAY_TMPDIR"] = str(temp)
    private_ray_home()
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(temp),
        )
    finally:
        protect_auth_token()
    return folder

"""Ray started by lipsweep listens on the loopback interface only."""

from __future__ import annotations

import os

import psutil

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def listening_addresses(root: int) -> dict[str, set[str]]:
    """process name -> the addresses its TCP sockets listen on, for ``root`` and its children."""
    found: dict[str, set[str]] = {}
    parent = psutil.Process(root)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            for connection in process.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN:
                    found.setdefault(process.name(), set()).add(connection.laddr.ip)
        except psutil.NoSuchProcess:
            continue
    return found


def test_every_ray_server_listens_on_loopback_only(ray_session) -> None:
    found = listening_addresses(os.getpid())
    assert any("gcs" in name for name in found), f"no GCS among the listeners: {found}"
    exposed = {name: ips - LOOPBACK for name, ips in found.items() if ips - LOOPBACK}
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert ray_session.get_runtime_context().gcs_address.startswith("127.0.0.1:")

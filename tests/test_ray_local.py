"""Ray started by lipsweep listens on the loopback interface only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil

from lipsweep.ray_local import (
    auth_token_path,
    private_ray_home,
    private_temp_dir,
    protect_auth_token,
)

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


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_local_ray_files_are_private(ray_session) -> None:
    """Ray's temp root (which Ray makes 0777) is in a new short folder under /tmp that is 0700
    (Ray's default: /tmp/ray, 0777); its token file, if it wrote one, is 0600 (Ray's default:
    the umask, 0644)."""
    from ray._private.worker import _global_node

    temp = Path(_global_node.get_temp_dir_path())
    assert temp.parent.parent == Path("/tmp") and len(str(temp)) <= 20, temp
    assert mode(temp.parent) == 0o700
    assert Path(_global_node.get_session_dir_path()).parent == temp
    token = auth_token_path()
    if token.exists():
        assert mode(token) & 0o077 == 0, oct(mode(token))


def test_token_and_given_temp_dir_made_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    private_ray_home()
    assert mode(tmp_path / ".ray") == 0o700
    token = tmp_path / ".ray" / "auth_token"
    token.write_text("0" * 64)
    token.chmod(0o644)
    protect_auth_token()
    assert mode(token) == 0o600
    given = tmp_path / "given"
    given.mkdir(mode=0o755)
    assert private_temp_dir(given) == given and mode(given) == 0o700
    assert mode(private_temp_dir(tmp_path / "new" / "r1")) == 0o700

"""Whether a process still runs, told apart from a killed one not yet reaped."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine; a zombie (killed, not yet reaped) does not."""
    if Path("/proc/self/stat").exists():  # Linux: the state letter follows "(name)"
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:  # no /proc (macOS)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True

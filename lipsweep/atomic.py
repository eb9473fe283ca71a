"""Files written whole or not at all: a temporary name in the same folder, then a rename.

The temporary name never ends in the target's suffix (DuckDB's ``*.parquet`` glob must not see
it), and it is removed if the write fails (a full disk leaves no 0-byte ``.tmp`` behind). A full
disk is always an ``OSError`` with errno ENOSPC (or EDQUOT) naming the file: libraries that
report it otherwise (torch.save: a RuntimeError) serialise to memory and write bytes here.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)``, then rename the temporary file to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        if is_disk_full(error) and not error.filename:  # a failed write() names no file
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda temporary: temporary.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda temporary: temporary.write_text(text))


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)

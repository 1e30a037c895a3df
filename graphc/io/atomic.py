"""Atomic file writes: a crash mid-write never leaves a half-written file under `path`.

The data goes to a temporary file in the same directory, is flushed and fsync'ed, and is then
renamed over `path` (`os.replace` is atomic on POSIX). The old file stays intact until then.
The file gets the permissions a plain ``open(path, "wb")`` would give it (`mode` masked by
the process umask), not the private 0600 of `tempfile.mkstemp`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None],
                 mode: int = 0o666) -> Path:
    """Call `write(f)` on a temporary binary file, then atomically move it to `path`.

    `mode` is the permission bits before the umask (0o777 for a shared library)."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    while True:
        tmp = directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            # O_EXCL: never follow or reuse someone else's file; the kernel applies the umask.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target

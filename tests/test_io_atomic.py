"""Atomic writes: all or nothing, and the permissions a plain open() would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from graphc.io.atomic import atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_umask_permissions_not_private_ones(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        data = atomic_write(tmp_path / "model.gcg", lambda f: f.write(b"x"))
        lib = atomic_write(tmp_path / "libm.so", lambda f: f.write(b"y"), mode=0o777)
        os.umask(0o077)
        private = atomic_write(tmp_path / "secret.bin", lambda f: f.write(b"z"))
    finally:
        os.umask(old)
    assert (_mode(data), _mode(lib), _mode(private)) == (0o644, 0o755, 0o600)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def fail(f: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]

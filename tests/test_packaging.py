"""Packaging: every package folder is installed, and passes/ runtime/ map into graphc."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = {"passes": "graphc.passes", "runtime": "graphc.runtime"}
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if parts[0] not in ("graphc", "passes", "runtime"):
            continue
        head = mapping.get(parts[0], parts[0])
        found.add(".".join([head, *parts[1:]]))
    found |= {p for p in ("graphc",) if (ROOT / "graphc" / "__init__.py").exists()}
    assert found - listed == set(), f"package folders missing from pyproject.toml: {found - listed}"
    assert config["package-dir"]["graphc.passes"] == "passes"
    assert config["package-dir"]["graphc.runtime"] == "runtime"

"""Packaging: every pass package ships in a regular (non-editable) install."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_pass_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {"mapper.passes." + init.parent.name
               for init in (ROOT / "passes").glob("*/__init__.py")}
    assert on_disk, "no pass packages found under passes/"
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"

"""Writing one benchmark's section of benchmarks/RESULTS.md, leaving the other sections alone."""

from __future__ import annotations

import os
import platform
import re
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
_HEADER = ("# Benchmark results\n\nEach section is written by the script it names; rerun the "
           "script to refresh it. Timings are medians from one run on the machine named in the "
           "section.\n")


def machine() -> str:
    """A one-line description of where the numbers were taken."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def section(key: str) -> str:
    """The text of the section marked `key` as RESULTS.md has it ("" when there is none)."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    if start not in text:
        return ""
    return text[text.index(start):text.index(end)]


def update_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section marked `key` in RESULTS.md with `body`."""
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = (f"{start}\n## {title}\n\n_{date.today().isoformat()}, {machine()}_\n\n"
             f"{body.strip()}\n{end}")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)

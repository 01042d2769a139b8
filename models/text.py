"""English text that ships with CPython (`pydoc_data.topics`), split into disjoint calibration
and evaluation passages, and calibration files built from it for the reference models.

The 79 help topics are sorted by name; even-numbered topics give calibration passages and
odd-numbered ones evaluation passages, so no sentence is ever in both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

Split = Literal["calib", "eval"]


def passages(split: Split, count: int, words: int = 90) -> list[str]:
    """The first `count` passages of about `words` words of one split."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    chosen = names[0::2] if split == "calib" else names[1::2]
    found: list[str] = []
    for name in chosen:
        text = re.sub(r"\s+", " ", topics[name]).strip()
        tokens = text.split(" ")
        for start in range(0, len(tokens) - words // 2, words):
            found.append(" ".join(tokens[start:start + words]))
            if len(found) == count:
                return found
    return found


def calibration_file(path: Path, split: Split, count: int,
                     tokenize: Callable[[str], dict[str, np.ndarray]]) -> Path:
    """Write a `--calib` .npz of `count` tokenized passages (samples stacked first)."""
    feeds = [tokenize(text) for text in passages(split, count)]
    arrays = {name: np.stack([feed[name] for feed in feeds]) for name in feeds[0]}
    np.savez(path, **arrays)
    return path

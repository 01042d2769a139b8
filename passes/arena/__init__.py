"""Activation arenas (CONTRACTS.md section 4): lower bound, greedy-by-size, a MiniMalloc-class
exact search with CP-SAT as fallback, MiniMalloc's CSV format, and the pipeline pass."""

from __future__ import annotations

import importlib
from typing import Any

# Lazy: the CLI imports mapper.passes.arena.cli at start-up, which must not pull in ONNX
# and OR-Tools for `--help`, `--version` or `hw list`.
_HOMES = {
    "ArenaPass": "arena_pass", "activation_buffers": "arena_pass",
    "greedy_by_size": "greedy",
    "Buffer": "problem", "Solution": "problem", "find_conflicts": "problem",
    "lower_bound": "problem",
    "SearchResult": "search", "search_capacity": "search",
    "ArenaResult": "solve", "FitResult": "solve", "fit_capacity": "solve",
    "minimize_arena": "solve",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"mapper.passes.arena.{_HOMES[name]}"), name)
    raise AttributeError(name)

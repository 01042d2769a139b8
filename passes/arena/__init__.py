"""Activation arenas (CONTRACTS.md section 4): lower bound, greedy-by-size, a MiniMalloc-class
exact search with CP-SAT as fallback, MiniMalloc's CSV format, and the pipeline pass."""

from mapper.passes.arena.arena_pass import ArenaPass, activation_buffers
from mapper.passes.arena.greedy import greedy_by_size
from mapper.passes.arena.problem import Buffer, Solution, find_conflicts, lower_bound
from mapper.passes.arena.search import SearchResult, search_capacity
from mapper.passes.arena.solve import ArenaResult, FitResult, fit_capacity, minimize_arena

__all__ = ["ArenaPass", "ArenaResult", "Buffer", "FitResult", "SearchResult", "Solution",
           "activation_buffers", "find_conflicts", "fit_capacity", "greedy_by_size",
           "lower_bound", "minimize_arena", "search_capacity"]

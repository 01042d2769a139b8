"""Which config (and rank) each matrix gets: the budget ILP over an error table, built faster
than the paper's full table.

The paper decomposes every (matrix, config) pair exactly (432 per matrix) before its ILP.
Here:
1. every option's error is *estimated* from one SVD and a dozen quantizations per matrix
   (decompose.estimate_errors);
2. options dominated in (bits, estimated error) are dropped: what remains per matrix is its
   frontier, typically a tenth of the grid;
3. the ILP on the estimates picks a frontier point per matrix; only the frontier points
   around each pick (WINDOW on either side) are decomposed exactly;
4. the ILP is solved again on the exact errors of those; where a pick lands on the edge of
   its window the window widens and step 3-4 repeat (up to MAX_ROUNDS).
`exhaustive=True` decomposes every option instead (the paper's table): the benchmark shows
both reach the same assignment on MiniLM-L6.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mapper.passes.lqlora import budget
from mapper.passes.lqlora.decompose import Decomposition, decompose, estimate_errors
from mapper.passes.lqlora.grid import Config, fits, storage_bits, uses_bnb4

WINDOW = 2
MAX_ROUNDS = 3
# Options are ranked on a short alternation; the chosen ones then run it to convergence.
SEARCH_ITERATIONS = 3
# Uniform baselines decomposed exactly (the best ones by estimate).
UNIFORM_CANDIDATES = 1
FACTOR_BITS = 32  # the low-rank factors are stored in float32


@dataclass(frozen=True, eq=False)
class Matrix:
    """One weight to decompose, in the row layout [out, in], with its column importance."""

    name: str
    weight: np.ndarray
    importance: np.ndarray | None
    ranks: tuple[int, ...]  # the ranks it may take (one, or {0, r} when factors are priced)
    bnb4: bool = False  # NF4 configs are emitted as MatMulBnb4 (absmax in float32)

    @property
    def elements(self) -> int:
        """Weights of the matrix."""
        return int(self.weight.size)


@dataclass(frozen=True)
class Option:
    """One (config, rank) for one matrix and what it costs."""

    config: Config
    rank: int
    q_bits: int
    factor_bits: int
    estimate: float

    def bits(self, include_factors: bool) -> int:
        """Bits the budget counts for this option."""
        return self.q_bits + (self.factor_bits if include_factors else 0)


@dataclass(frozen=True, eq=False)
class Choice:
    """The decided option of one matrix and its exact decomposition."""

    matrix: Matrix
    option: Option
    decomposition: Decomposition


@dataclass(frozen=True, eq=False)
class SearchResult:
    """Every matrix's choice, the final ILP, and how much work the table took."""

    choices: list[Choice]
    assignment: budget.Assignment
    estimated: budget.Assignment
    uniform: tuple[Option, float] | None  # best uniform option that fits, exact error
    options: int  # options in the grid, over all matrices
    frontier: int  # options left after dominance pruning
    decomposed: int  # exact decompositions run
    stats: dict[str, int] = field(default_factory=dict)


def frontier(options: Sequence[Option], include_factors: bool) -> list[Option]:
    """Options not dominated in (bits, estimated error), cheapest first."""
    kept: list[Option] = []
    for option in sorted(options, key=lambda o: (o.bits(include_factors), o.estimate)):
        if not kept or option.estimate < kept[-1].estimate:
            if kept and option.bits(include_factors) == kept[-1].bits(include_factors):
                kept[-1] = option
            else:
                kept.append(option)
    return kept


def options_for(matrix: Matrix, configs: Sequence[Config], seed: int) -> list[Option]:
    """Every option of one matrix with its estimated error."""
    rows, cols = matrix.weight.shape
    usable = [c for c in configs if fits(c, cols)]
    found: list[Option] = []
    for rank in matrix.ranks:
        estimates = estimate_errors(matrix.weight, usable, rank, matrix.importance, seed)
        for config, error in zip(estimates.configs, estimates.errors, strict=True):
            bnb4 = matrix.bnb4 and uses_bnb4(config, "bnb4")
            found.append(Option(config, rank, storage_bits(config, rows, cols, bnb4),
                                FACTOR_BITS * rank * (rows + cols), error))
    return found


def search(matrices: Sequence[Matrix], configs: Sequence[Config], budget_bits: int,
           include_factors: bool, time_limit_s: float, seed: int,
           exhaustive: bool = False,
           cache: dict[tuple[int, Config, int], Decomposition] | None = None) -> SearchResult:
    """The assignment of options to `matrices` within `budget_bits` (see the module doc).
    `cache` keeps decompositions across calls on the same matrices (the benchmark's full
    table). Raises ValueError when even the cheapest options do not fit."""
    all_options = [options_for(m, configs, seed + i) for i, m in enumerate(matrices)]
    fronts = ([sorted(o, key=lambda x: (x.bits(include_factors), x.estimate))
               for o in all_options] if exhaustive
              else [frontier(o, include_factors) for o in all_options])
    cache = {} if cache is None else cache

    def exact(m: int, option: Option) -> Decomposition:
        key = (m, option.config, option.rank)
        if key not in cache:
            cache[key] = decompose(matrices[m].weight, option.config, option.rank,
                                   matrices[m].importance, seed + m,
                                   max_iterations=SEARCH_ITERATIONS)
        return cache[key]

    def converged(m: int, option: Option) -> Decomposition:
        short = exact(m, option)
        if short.iterations < SEARCH_ITERATIONS:
            return short  # it already stopped on its own
        return decompose(matrices[m].weight, option.config, option.rank,
                         matrices[m].importance, seed + m)

    bits_table = [[o.bits(include_factors) for o in front] for front in fronts]
    estimated = budget.solve(bits_table, [[o.estimate for o in f] for f in fronts],
                             budget_bits, time_limit_s / 3, seed)
    if exhaustive:
        windows = [set(range(len(f))) for f in fronts]
    else:
        windows = [set(range(max(0, p - WINDOW), min(len(f), p + WINDOW + 1)))
                   for p, f in zip(estimated.picks, fronts, strict=True)]
    # The best uniform option is always a candidate (and the hint when it fits), so the
    # ILP's answer is never worse than the baseline it is compared with.
    uniform = _best_uniform(matrices, all_options, include_factors, budget_bits, exact)
    extra: list[list[Option]] = [[] for _ in matrices]
    if uniform is not None:
        key = (uniform[0].config, uniform[0].rank)
        for m, options in enumerate(all_options):
            extra[m].append(next(o for o in options if (o.config, o.rank) == key))
    assignment = estimated
    chosen: list[Option] = []
    for _ in range(MAX_ROUNDS):
        cand = [_unique([fronts[m][i] for i in sorted(w)] + extra[m])
                for m, w in enumerate(windows)]
        bits_rows = [[o.bits(include_factors) for o in c] for c in cand]
        error_rows = [[exact(m, o).error for o in c] for m, c in enumerate(cand)]
        hint = None
        if uniform is not None:
            key = (uniform[0].config, uniform[0].rank)
            hint = [next(i for i, o in enumerate(c) if (o.config, o.rank) == key) for c in cand]
        solved = budget.solve(bits_rows, error_rows, budget_bits, time_limit_s / 3, seed, hint)
        chosen = [cand[m][p] for m, p in enumerate(solved.picks)]
        assignment = solved
        grown = False
        for m, option in enumerate(chosen):
            if option not in fronts[m]:
                continue
            pick = fronts[m].index(option)
            low, high = min(windows[m]), max(windows[m])
            if pick == low and low > 0:
                windows[m].update(range(max(0, low - WINDOW), low))
                grown = True
            if pick == high and high < len(fronts[m]) - 1:
                windows[m].update(range(high + 1, min(len(fronts[m]), high + WINDOW + 1)))
                grown = True
        if not grown or exhaustive:
            break
    if not exhaustive and assignment.status == "OPTIMAL":
        # Optimal over the exactly evaluated options only: the window search is a heuristic.
        assignment = budget.Assignment(assignment.picks, assignment.objective,
                                       assignment.bound, "OPTIMAL_ON_EVALUATED",
                                       assignment.bits)
    choices = [Choice(matrices[m], option, converged(m, option))
               for m, option in enumerate(chosen)]
    return SearchResult(choices=choices, assignment=assignment, estimated=estimated,
                        uniform=uniform, options=sum(map(len, all_options)),
                        frontier=sum(map(len, fronts)), decomposed=len(cache))


def _unique(options: list[Option]) -> list[Option]:
    """`options` without repeats, in order."""
    return list(dict.fromkeys(options))


def _best_uniform(matrices: Sequence[Matrix], all_options: Sequence[Sequence[Option]],
                  include_factors: bool, budget_bits: int, exact
                  ) -> tuple[Option, float] | None:
    """The uniform (config, rank) of least exact error that fits: the baseline the ILP must
    beat. Candidates are ranked by estimate; the best are decomposed (short alternation)."""
    keyed = [{(o.config, o.rank): o for o in options} for options in all_options]
    shared = set(keyed[0]).intersection(*keyed[1:]) if keyed else set()
    fitting = []
    for key in shared:
        total = sum(k[key].bits(include_factors) for k in keyed)
        if total <= budget_bits:
            fitting.append((sum(k[key].estimate for k in keyed), key))
    best: tuple[Option, float] | None = None
    for _, key in sorted(fitting, key=lambda item: item[0])[:UNIFORM_CANDIDATES]:
        error = sum(exact(m, keyed[m][key]).error for m in range(len(matrices)))
        if best is None or error < best[1]:
            best = (keyed[0][key], error)
    return best


def options_bits_floor(matrix: Matrix, configs: Sequence[Config], include_factors: bool
                       ) -> tuple[int, int]:
    """The fewest and most bits any option of `matrix` costs (no estimates needed)."""
    rows, cols = matrix.weight.shape
    q_bits = [storage_bits(c, rows, cols, matrix.bnb4 and uses_bnb4(c, "bnb4"))
              for c in configs if fits(c, cols)]
    factors = [FACTOR_BITS * r * (rows + cols) if include_factors else 0
               for r in matrix.ranks]
    return min(q_bits) + min(factors), max(q_bits) + max(factors)

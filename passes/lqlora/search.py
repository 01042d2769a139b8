"""Which config (and rank) each matrix gets: the budget ILP over an error table, built faster
than the paper's full table.

The paper decomposes every (matrix, config) pair exactly (432 per matrix) before its ILP.
Here:
1. every option's error is *estimated* from one SVD and a dozen quantizations per matrix
   (decompose.estimate_errors): the first alternation step, exact for rank 0;
2. the ILP on the estimates' frontiers (options not dominated in (bits, estimate), a tenth
   of the grid) gives a first pick per matrix;
3. the estimates misjudge how much the alternation absorbs of a variant's coarser stored
   scales. Per cell (NF bits, block, rank) near the pick's width, the finest variant is
   decomposed and every variant requantized on its converged residual; at the pick's
   width the coarsest is decomposed too, which fits the share (alpha) of the extra scale
   error that stays; each variant is predicted from these (_calibrated), other widths
   borrow the matrix's alpha, and cells not calibrated scale their estimates by their
   width's median exact/estimate ratio;
4. frontiers are rebuilt on the predicted errors, the ILP solved, the frontier points
   around each pick (WINDOW on either side) decomposed; each new exact error refits the
   predictions; rounds repeat until nothing new is decomposed (at most MAX_ROUNDS);
5. the final ILP runs on the exact errors of everything decomposed.
`exhaustive=True` decomposes every option instead (the paper's table); benchmarks/
lqlora_table.py compares the two on MiniLM-L6.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mapper.passes.lqlora import budget
from mapper.passes.lqlora.decompose import (
    Decomposition,
    decompose,
    estimate_errors,
    residual_errors,
)
from mapper.passes.lqlora.grid import Config, fits, storage_bits, uses_bnb4

WINDOW = 1
MAX_ROUNDS = 6
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


def frontier(options: Sequence[Option], include_factors: bool,
             value: Callable[[Option], float] | None = None) -> list[Option]:
    """Options not dominated in (bits, error), cheapest first; the error is `value` of an
    option, its estimate by default."""
    error = value or (lambda o: o.estimate)
    kept: list[Option] = []
    for option in sorted(options, key=lambda o: (o.bits(include_factors), error(o))):
        if not kept or error(option) < error(kept[-1]):
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
    cache = {} if cache is None else cache
    known: list[dict[Option, float]] = [{} for _ in matrices]  # exact errors found so far
    refined: list[dict[Option, float]] = [{} for _ in matrices]  # see _cell_errors
    anchors: list[dict[tuple[str, int, int, int], Option]] = [{} for _ in matrices]

    def exact(m: int, option: Option) -> Decomposition:
        key = (m, option.config, option.rank)
        if key not in cache:
            cache[key] = decompose(matrices[m].weight, option.config, option.rank,
                                   matrices[m].importance, seed + m,
                                   max_iterations=SEARCH_ITERATIONS)
        known[m][option] = cache[key].error
        return cache[key]

    def converged(m: int, option: Option) -> Decomposition:
        short = exact(m, option)
        if short.iterations < SEARCH_ITERATIONS:
            return short  # it already stopped on its own
        return decompose(matrices[m].weight, option.config, option.rank,
                         matrices[m].importance, seed + m)

    fronts = [frontier(o, include_factors) for o in all_options]
    # One share of the time limit per ILP: the estimate's, each round's, the final one.
    share = time_limit_s / (MAX_ROUNDS + 2)
    estimated = budget.solve([[o.bits(include_factors) for o in f] for f in fronts],
                             [[o.estimate for o in f] for f in fronts], budget_bits, share,
                             seed)
    # The best uniform option is always a candidate (and the hint when it fits), so the
    # ILP's answer is never worse than the baseline it is compared with.
    uniform = _best_uniform(matrices, all_options, include_factors, budget_bits, exact)
    if exhaustive:
        for m, options in enumerate(all_options):
            for option in options:
                exact(m, option)
    else:
        for m, front in enumerate(fronts):
            pick = front[estimated.picks[m]]
            for cell, finest, coarsest in _cell_representatives(all_options[m], pick):
                refined[m].update(_cell_errors(matrices[m], cell, exact(m, finest)))
                anchors[m][_cell(finest)] = finest
                if finest.config.bits == pick.config.bits:
                    exact(m, coarsest)  # the other widths borrow this width's alpha
        for _ in range(MAX_ROUNDS):
            before = len(cache)
            values = [_calibrated(all_options[m], known[m], refined[m], anchors[m])
                      for m in range(len(matrices))]
            fronts = [frontier(o, include_factors, values[m].__getitem__)
                      for m, o in enumerate(all_options)]
            solved = budget.solve([[o.bits(include_factors) for o in f] for f in fronts],
                                  [[values[m][o] for o in f] for m, f in enumerate(fronts)],
                                  budget_bits, share, seed)
            for m, (front, pick) in enumerate(zip(fronts, solved.picks, strict=True)):
                for option in front[max(0, pick - WINDOW):pick + WINDOW + 1]:
                    exact(m, option)
            if len(cache) == before:
                break
    # The final ILP sees every option decomposed so far, on exact errors only.
    cand = [list(k) for k in known]
    hint = None
    if uniform is not None:
        key = (uniform[0].config, uniform[0].rank)
        hint = [next(i for i, o in enumerate(c) if (o.config, o.rank) == key) for c in cand]
    assignment = budget.solve([[o.bits(include_factors) for o in c] for c in cand],
                              [[known[m][o] for o in c] for m, c in enumerate(cand)],
                              budget_bits, share, seed, hint)
    chosen = [cand[m][p] for m, p in enumerate(assignment.picks)]
    if not exhaustive and assignment.status == "OPTIMAL":
        # Optimal over the exactly evaluated options only: the search is a heuristic.
        assignment = budget.Assignment(assignment.picks, assignment.objective,
                                       assignment.bound, "OPTIMAL_ON_EVALUATED",
                                       assignment.bits)
    choices = [Choice(matrices[m], option, converged(m, option))
               for m, option in enumerate(chosen)]
    return SearchResult(choices=choices, assignment=assignment, estimated=estimated,
                        uniform=uniform, options=sum(map(len, all_options)),
                        frontier=sum(map(len, fronts)),
                        decomposed=sum(map(len, known)))


def _cell(option: Option) -> tuple[str, int, int, int]:
    """The (family, bits, block, rank) an option shares with its double-quantization
    variants (an integer config is a cell of its own)."""
    return type(option.config).__name__, option.config.bits, option.config.block, option.rank


def _cell_representatives(options: Sequence[Option], pick: Option
                          ) -> list[tuple[list[Option], Option, Option]]:
    """Per cell of the estimated pick's rank whose bits are the pick's or a neighbouring
    width: its options, and those of least and of most estimate (the finest and the
    coarsest stored scales): decomposing the two calibrates the whole cell (see
    _calibrated). Rank 0 needs none (its estimate is the exact error: nothing alternates),
    and other ranks than the pick's are left to the windows (where factors are priced, the
    pick is mostly rank 0)."""
    widths = sorted({o.config.bits for o in options})
    at = widths.index(pick.config.bits)
    near = set(widths[max(0, at - 1):at + 2])
    cells: dict[tuple[str, int, int, int], list[Option]] = {}
    for option in options:
        if option.rank and option.rank == pick.rank and option.config.bits in near:
            cells.setdefault(_cell(option), []).append(option)
    return [(c, min(c, key=lambda o: o.estimate), max(c, key=lambda o: o.estimate))
            for c in cells.values()]


def _cell_errors(matrix: Matrix, cell: Sequence[Option], decomposition: Decomposition
                 ) -> dict[Option, float]:
    """Every option of `cell` quantized on the residual one of them (`decomposition`)
    converged to: what each variant's coarser stored scales add to the error, before the
    alternation absorbs part of it (see _calibrated)."""
    residual = matrix.weight.astype(np.float32) - decomposition.l1 @ decomposition.l2
    found = residual_errors(residual, [o.config for o in cell], matrix.importance)
    return dict(zip(cell, found.errors, strict=True))


def _calibrated(options: Sequence[Option], known: dict[Option, float],
                refined: dict[Option, float], anchors: dict[tuple[str, int, int, int], Option]
                ) -> dict[Option, float]:
    """Every option's error: exact where decomposed. In a calibrated cell (its finest option,
    the cell's anchor, decomposed; every option requantized on its residual: `refined`),
    the anchor's exact error plus a share alpha of the error its coarser scales add, alpha
    fitted by least squares to the cell's other decomposed options (the alternation absorbs
    part of a block-scale error: alpha is 0.1-0.4 on MiniLM-L6, the prediction within
    1-2%). Elsewhere the estimate, scaled by the median exact/estimate ratio of its bits
    width."""
    slopes: dict[tuple[str, int, int, int], float] = {}
    for cell, anchor in anchors.items():
        pairs = [(refined[o] - refined[anchor], known[o] - known[anchor])
                 for o in known if o in refined and _cell(o) == cell and o is not anchor]
        spread = sum(r * r for r, _ in pairs)
        if spread > 0:
            slopes[cell] = min(max(sum(r * e for r, e in pairs) / spread, 0.0), 1.0)
    # A cell with nothing decomposed beside its anchor borrows the matrix's median alpha.
    fallback = float(np.median(list(slopes.values()))) if slopes else 1.0
    slopes = {cell: slopes.get(cell, fallback) for cell in anchors}
    by_width: dict[tuple[int, int], list[float]] = {}
    for option, error in known.items():
        if option.estimate > 0:
            by_width.setdefault((option.config.bits, option.rank), []).append(
                error / option.estimate)
    values = {}
    for option in options:
        cell = _cell(option)
        if option in known:
            values[option] = known[option]
        elif option in refined and cell in anchors:
            anchor = anchors[cell]
            values[option] = known[anchor] + slopes[cell] * (refined[option]
                                                             - refined[anchor])
        else:
            ratios = by_width.get((option.config.bits, option.rank), [1.0])
            values[option] = option.estimate * float(np.median(ratios))
    return values


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

"""MoETuner-style expert placement with CP-SAT: balanced clusters, then clusters onto devices.

Decision: `placement[l, e]`, the device of expert e at MoE layer l, with exactly E/G experts
of every layer on every device and each device's token load at most a per-layer cap.
Objective: bandwidth-weighted transitions, `sum_l sum_(e,f) flows[l, e, f] * W[dev(l, e),
dev(l + 1, f)]`, W = 0 on one device, `w_intra` within a node, `w_inter` across nodes (in
the ratio of the links' transfer times, `cost.link_weights`).

First the local-search baseline (`local.py`: chain-aware construction, per-layer exact
and swap moves, node-preserving suffix relabels, node regrouping, restarts; fixed work, so
the same at any time limit), reported as `baselines.local_search`; every search below
starts from it and the answer is never worse. Bound: the per-layer-pair bound (`local.py`,
any load caps) or CP-SAT's bound on the joint model, on the objective's scale; OPTIMAL
when the objective meets it. Then, within the work budget:
0. polish: each layer's uncapped optimum repaired into its cap, then swaps (numpy);

The search only ever accepts improvements, so a valid placement exists from the start:
1. heuristic: EPLB packing of layer 0, then each next layer greedily next to the devices
   its tokens come from, within the caps (EPLB's packing where greedy fails);
2. stage 1 (MoETuner's balanced expert clusters): each layer split into G load-capped
   clusters of E/G experts that the same tokens use (`cluster.py`);
3. stage 2 (MoETuner's cluster-to-device assignment): each layer's clusters permuted onto
   devices to minimize the weighted transfers between consecutive layers: exact per-layer
   assignments (linear sum assignment given both neighbours) swept to a fixed point, then
   one CP-SAT model over all layers where it is small enough;
4. refinement: the joint CP-SAT model (all layers, experts and devices) where tractable;
   otherwise block coordinate descent: each layer re-solved exactly by CP-SAT given its
   fixed neighbours, windows of consecutive layers jointly, and stage 2 again.

Load caps: a layer's cap is EPLB's own max device load (balance never worse than EPLB's)
unless that exceeds `(1 + load_tolerance) x mean`; then the best balance found. The search
is repeated with caps relaxed to `(1 + load_tolerance) x mean`, and the relaxed placement
is kept only when it cuts the weighted transfers by at least `min_gain`.

Determinism: fixed seeds, one CP-SAT worker, deterministic-time limits, and a stopping
rule on estimated work (`cpsat.WorkBudget`); the wall clock only guards.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from ortools.graph.python import linear_sum_assignment
from ortools.sat.python import cp_model

from mapper.passes.moe.baselines import eplb
from mapper.passes.moe.cluster import layer_clusters
from mapper.passes.moe.cost import Topology
from mapper.passes.moe.cpsat import (
    WALL_PER_DET,
    WorkBudget,
    affordable,
    balanced_assignment,
    build_window,
    read_assignment,
    read_window,
    solve,
    window_booleans,
)
from mapper.passes.moe.local import local_search, make_chain, pair_bound, polish
from mapper.passes.moe.metrics import (
    TraceStats,
    check_placement,
    device_loads,
    device_traffic,
    one_hot,
)

Method = Literal["auto", "joint", "staged"]
log = logging.getLogger(__name__)

# Largest joint model (booleans) solved at once, and largest refinement window.
_JOINT_LIMIT = 60_000
_WINDOW_LIMIT = 20_000
# Largest stage-2 model over all layers handed to CP-SAT after the assignment sweeps.
_STAGE2_LIMIT = 15_000
# Share of the time limit the work estimate may fill (the rest absorbs estimate error).
_WORK_SHARE = 0.85
# Estimated seconds of one stage-1 layer (numpy swap search: about E^2 per swap).
_CLUSTER_S_PER_E2 = 2.5e-6


@dataclass(frozen=True)
class PlaceOptions:
    """Search settings of the placement solver."""

    time_limit_s: float = 30.0
    seed: int = 0
    method: Method = "auto"
    load_tolerance: float = 0.05
    min_gain: float = 0.05


@dataclass(frozen=True)
class PlacementProblem:
    """A trace's statistics, the devices, and the relative cost of one transfer per link."""

    stats: TraceStats
    topology: Topology
    w_intra: int = 10
    w_inter: int = 10

    def weights(self) -> np.ndarray:
        """`[G, G]` cost of one transition between two devices."""
        nodes = self.topology.node_of()
        same_node = nodes[:, None] == nodes[None, :]
        weights = np.where(same_node, self.w_intra, self.w_inter).astype(np.int64)
        np.fill_diagonal(weights, 0)
        return weights


@dataclass(frozen=True, eq=False)
class PlacementResult:
    """The chosen placement and how it was found."""

    placement: np.ndarray
    objective: int
    bound: float | None
    solver_status: str  # OPTIMAL | FEASIBLE | HEURISTIC
    fallback: bool  # True when the time limit left only the heuristics
    method: str  # joint | staged
    balance: str  # eplb | tolerance: the load caps the kept placement honours
    notes: tuple[str, ...] = ()
    stages: tuple[tuple[str, int], ...] = ()  # (stage, weighted cost after it)
    rungs: int = 1  # searches of doubling budget run (see place_experts)
    # The local-search baseline (local.py) and its objective; the result is never worse.
    baseline: np.ndarray | None = None
    baseline_objective: int | None = None
    bound_source: str = "none"  # pair | cp-sat | none: which bound `bound` is

    @property
    def gap(self) -> float | None:
        """(objective - bound) / objective; 0 when the bound proves the placement optimal."""
        if self.bound is None:
            return None
        if self.objective <= 0:
            return 0.0
        return max(0.0, (self.objective - self.bound) / self.objective)

    @property
    def scope(self) -> str:
        """What `solver_status` and `bound` are proven for."""
        caps = "EPLB-level load caps" if self.balance == "eplb" else "relaxed load caps"
        if self.solver_status == "OPTIMAL" and self.bound_source == "pair":
            return "every placement, whatever the load caps (the per-layer-pair bound is met)"
        if self.method == "joint":
            return f"the joint model within the {caps}"
        return f"the staged search within the {caps}"


def weighted_cost(placement: np.ndarray, stats: TraceStats, weights: np.ndarray) -> int:
    """The objective: bandwidth-weighted transitions of a placement."""
    return int((device_traffic(placement, stats, weights.shape[0]) * weights[None]).sum())


def pair_cost(placement: np.ndarray, stats: TraceStats, weights: np.ndarray, layer: int
              ) -> int:
    """Weighted transitions between layers `layer` and `layer + 1` alone."""
    hot = one_hot(placement[layer:layer + 2], weights.shape[0])
    return int(((hot[0].T @ stats.flows[layer] @ hot[1]) * weights).sum())


def _canonical(placement: np.ndarray, g: int, per_node: int | None = None) -> np.ndarray:
    """Relabel devices in the order layer 0 first uses them: with `per_node`, nodes in the
    order of first use and devices within each node likewise (equal nodes are
    interchangeable, and so are the devices of one node)."""
    size = per_node or g
    first = list(dict.fromkeys(int(d) for d in placement[0]))
    first += [d for d in range(g) if d not in first]
    node_order = list(dict.fromkeys(d // size for d in first))
    relabel = np.empty(g, dtype=np.int64)
    for rank, node in enumerate(node_order):
        members = [d for d in first if d // size == node]
        relabel[members] = rank * size + np.arange(len(members))
    return relabel[placement]


def _assignment(cost: np.ndarray) -> np.ndarray:
    """Exact min-cost permutation of a square integer matrix: row -> column."""
    size = cost.shape[0]
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    solver.add_arcs_with_cost(rows.ravel(), cols.ravel(), cost.ravel().astype(np.int64))
    if solver.solve() != solver.OPTIMAL:
        raise AssertionError("linear sum assignment failed on a complete square matrix")
    return np.array([solver.right_mate(row) for row in range(size)])


class _Search:
    """One run of heuristic -> stage 1 -> stage 2 -> refinement under one set of load caps."""

    def __init__(self, problem: PlacementProblem, caps: np.ndarray, witness: np.ndarray,
                 options: PlaceOptions, budget: WorkBudget, method: str) -> None:
        self.stats = problem.stats
        self.topology = problem.topology
        self.g = problem.topology.num_devices
        self.per = self.stats.num_experts // self.g
        self.caps = caps
        self.witness = witness
        self.options = options
        self.budget = budget
        self.method = method
        self.weights = problem.weights()
        self.stages: list[tuple[str, int]] = []
        self.bound: float | None = None
        self.status = "FEASIBLE"
        self.solved = False  # some CP-SAT model returned a solution

    # runner protocol (cluster.Runner) ---------------------------------------------------

    def det_for(self, booleans: int, det: float) -> float:
        """Deterministic time (up to `det`) affordable for a model of `booleans`."""
        return affordable(self.budget, booleans, det)

    def run(self, model: cp_model.CpModel, det: float, booleans: int
            ) -> tuple[cp_model.CpSolver, int]:
        """Solve one model within the budget."""
        solver, status = solve(model, self.budget, det, self.options.seed, booleans)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            self.solved = True
        return solver, status

    # bookkeeping ------------------------------------------------------------------------

    def cost(self, placement: np.ndarray) -> int:
        """Weighted transitions of a placement."""
        return weighted_cost(placement, self.stats, self.weights)

    def _better(self, current: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, bool]:
        if self.cost(candidate) < self.cost(current):
            return candidate, True
        return current, False

    def _det_share(self, share: float) -> float:
        """Deterministic time per layer when `share` of the budget goes to one pass over
        the layers (at least enough for a small exact solve, at most half a unit)."""
        per_layer = share * self.budget.units / max(self.stats.num_layers, 1)
        return min(0.5, max(0.02, per_layer / WALL_PER_DET))

    def _local_gain(self, placement: np.ndarray, layer: int, row: np.ndarray) -> int:
        """Cost saved by replacing one layer's row (only its two layer pairs change)."""
        pairs = [p for p in (layer - 1, layer) if 0 <= p < self.stats.num_layers - 1]
        candidate = placement.copy()
        candidate[layer] = row
        return sum(pair_cost(placement, self.stats, self.weights, p)
                   - pair_cost(candidate, self.stats, self.weights, p) for p in pairs)

    def _stage(self, name: str, placement: np.ndarray) -> None:
        self.stages.append((name, self.cost(placement)))
        log.info("moe placement: %s: weighted cost %d (work %.1f of %.1f s, %.1f s wall left)",
                 name, self.stages[-1][1], self.budget.used, self.budget.units,
                 self.budget.wall_left())

    # heuristic --------------------------------------------------------------------------

    def greedy(self) -> np.ndarray:
        """Layer 0 balanced; each next layer next to its tokens' previous devices, capped."""
        stats, g = self.stats, self.g
        placement = self.witness.copy()
        for layer in range(1, stats.num_layers):
            prev = one_hot(placement[layer - 1:layer], g)[0]
            cost = stats.flows[layer - 1].T @ prev @ self.weights
            loads = stats.loads[layer]
            row = np.full(stats.num_experts, -1, dtype=np.int64)
            used, counts = np.zeros(g, dtype=np.int64), np.zeros(g, dtype=np.int64)
            for e in sorted(range(stats.num_experts), key=lambda e: (-int(loads[e]), e)):
                free = [d for d in range(g) if counts[d] < self.per
                        and used[d] + loads[e] <= self.caps[layer]]
                if not free:
                    break
                d = min(free, key=lambda d: (int(cost[e, d]), int(used[d]), d))
                row[e], used[d], counts[d] = d, used[d] + loads[e], counts[d] + 1
            if (row >= 0).all():
                placement[layer] = row
        self.budget.charge(1e-5 * stats.num_layers * stats.num_experts * g)
        return placement

    # stage 1 ----------------------------------------------------------------------------

    def stage1(self) -> np.ndarray | None:
        """Per-layer load-capped clusters of co-used experts (labels not aligned yet)."""
        layers, n = self.stats.num_layers, self.stats.num_experts
        clusters = self.witness.copy()
        each = 2e-4 + _CLUSTER_S_PER_E2 * n * n
        if self.budget.left() < layers * each:
            return None  # not enough for every layer: leave the budget to the next steps
        for layer in range(layers):
            if self.budget.left() < each:
                return None
            self.budget.charge(each)
            clusters[layer] = layer_clusters(self.stats, layer, self.g, int(self.caps[layer]),
                                             self.witness[layer], self, self._det_share(0.1))
        return clusters

    def align(self, clusters: np.ndarray) -> np.ndarray:
        """Label clusters layer after layer so that the clusters sharing tokens share devices."""
        placement = clusters.copy()
        for layer in range(1, self.stats.num_layers):
            placement[layer] = self._relabel(placement, clusters, layer, use_next=False)
        return placement

    def _relabel(self, placement: np.ndarray, clusters: np.ndarray, layer: int,
                 use_next: bool = True) -> np.ndarray:
        """Best device for each of a layer's clusters given the neighbour layers (exact)."""
        g, stats = self.g, self.stats
        hot = one_hot(clusters[layer:layer + 1], g)[0]  # [expert, cluster]
        cost = np.zeros((g, g), dtype=np.int64)  # [cluster, device]
        if layer > 0:
            prev = one_hot(placement[layer - 1:layer], g)[0]
            cost += hot.T @ stats.flows[layer - 1].T @ prev @ self.weights
        if use_next and layer + 1 < stats.num_layers:
            nxt = one_hot(placement[layer + 1:layer + 2], g)[0]
            cost += hot.T @ stats.flows[layer] @ nxt @ self.weights.T
        self.budget.charge(2e-4)
        return _assignment(cost)[clusters[layer]]

    # stage 2 ----------------------------------------------------------------------------

    def stage2(self, placement: np.ndarray) -> np.ndarray:
        """Clusters (a layer's device groups) onto devices: assignment sweeps, then CP-SAT."""
        layers, g = self.stats.num_layers, self.g
        if g < 2 or layers < 2:
            return placement
        for sweep in range(2 * layers):
            if self.budget.exhausted():
                break
            before = self.cost(placement)
            order = range(layers) if sweep % 2 == 0 else range(layers - 1, -1, -1)
            for layer in order:
                row = self._relabel(placement, placement, layer)
                if self._local_gain(placement, layer, row) > 0:
                    placement = placement.copy()
                    placement[layer] = row
            if self.cost(placement) >= before:
                break
        return self._stage2_cpsat(placement)

    def _stage2_cpsat(self, placement: np.ndarray) -> np.ndarray:
        layers, g = self.stats.num_layers, self.g
        cluster_flows = device_traffic(placement, self.stats, g)
        booleans = window_booleans(cluster_flows, 0, layers - 1, self.topology, g)
        if booleans > _STAGE2_LIMIT:
            return placement
        det = self.det_for(booleans, min(10.0, 0.15 * self.budget.units / WALL_PER_DET))
        if det <= 0:
            return placement
        cluster_loads = device_loads(placement, self.stats, g)
        identity = np.tile(np.arange(g), (layers, 1))
        window = build_window(loads=cluster_loads, flows=cluster_flows, current=identity,
                              lo=0, hi=layers - 1, per=1, caps=None, weights=self.weights,
                              topology=self.topology)
        solver, status = self.run(window.model, det, booleans)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return placement
        perm = read_window(window, solver, identity)  # perm[l, cluster] = device
        return self._better(placement, np.take_along_axis(perm, placement, axis=1))[0]

    # refinement -------------------------------------------------------------------------

    def _window(self, placement: np.ndarray, lo: int, hi: int, det: float, *,
                symmetry: bool = False) -> np.ndarray | None:
        booleans = window_booleans(self.stats.flows, lo, hi, self.topology,
                                   self.stats.num_experts)
        det = self.det_for(booleans, det)
        if det <= 0:
            return None
        window = build_window(loads=self.stats.loads, flows=self.stats.flows,
                              current=placement, lo=lo, hi=hi, per=self.per, caps=self.caps,
                              weights=self.weights, topology=self.topology,
                              symmetry=symmetry)
        solver, status = self.run(window.model, det, booleans)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        if lo == 0 and hi == self.stats.num_layers - 1:
            self.status = solver.status_name(status)
            self.bound = solver.best_objective_bound
        return read_window(window, solver, placement)

    def _span(self) -> int:
        """Most consecutive layers a refinement window may hold."""
        size = 1
        while size < self.stats.num_layers and window_booleans(
                self.stats.flows, 0, size, self.topology,
                self.stats.num_experts) <= _WINDOW_LIMIT:
            size += 1
        return size

    def _sweep(self, placement: np.ndarray, forward: bool, det: float
               ) -> tuple[np.ndarray, bool]:
        """Every layer re-solved exactly given its neighbours."""
        improved = False
        layers = self.stats.num_layers
        for layer in range(layers) if forward else range(layers - 1, -1, -1):
            if self.budget.exhausted():
                break
            candidate = self._window(placement, layer, layer, det)
            if candidate is not None and self._local_gain(placement, layer,
                                                          candidate[layer]) > 0:
                placement, improved = candidate, True
        return placement, improved

    def refine(self, placement: np.ndarray) -> np.ndarray:
        """Single-layer moves, windows of layers, stage 2 again: until nothing improves."""
        layers = self.stats.num_layers
        span = self._span()
        sweep = 0
        while not self.budget.exhausted():
            placement, improved = self._sweep(placement, sweep % 2 == 1, self._det_share(0.1))
            if span > 1:
                for lo in range(sweep % 2 * (span // 2), layers - 1, max(1, span - 1)):
                    if self.budget.exhausted():
                        break
                    candidate = self._window(placement, lo, min(layers - 1, lo + span - 1),
                                             min(2.5, 0.03 * self.budget.units / WALL_PER_DET))
                    if candidate is not None:
                        placement, better = self._better(placement, candidate)
                        improved |= better
            before = self.cost(placement)
            placement = self.stage2(placement)
            improved |= self.cost(placement) < before
            sweep += 1
            if not improved:
                break
        return placement

    def joint(self, placement: np.ndarray) -> np.ndarray:
        """Every layer, expert and device in one CP-SAT model, hinted with `placement`."""
        single_node = self.topology.num_nodes == 1
        per_node = self.topology.devices_per_node
        symmetric = single_node or self.g % per_node == 0
        start = _canonical(placement, self.g, None if single_node else per_node) \
            if symmetric else placement
        candidate = self._window(start, 0, self.stats.num_layers - 1,
                                 self.budget.left() / WALL_PER_DET, symmetry=symmetric)
        if candidate is None:
            return placement
        return self._better(placement, candidate)[0]

    def polish(self, placement: np.ndarray) -> np.ndarray:
        """Numpy sweeps beyond the baseline's moves (local.polish), within the budget."""
        if self.stats.num_layers < 2 or self.g < 2:
            return placement
        chain = make_chain(self.stats, self.weights, self.caps,
                           self.topology.devices_per_node)

        def afford(seconds: float) -> bool:
            if self.budget.left() < seconds or self.budget.wall_left() <= 0.05:
                return False
            self.budget.charge(seconds)
            return True

        return self._better(placement, polish(chain, placement, afford))[0]

    def search(self, starts: tuple[np.ndarray, ...] = ()) -> np.ndarray:
        """Heuristic, polish, stage 1 + 2, then the joint model or refinement: the best
        placement."""
        # The starts come from the local search, which already builds greedy chains.
        placement = min(starts, key=self.cost) if starts else self.greedy()
        self._stage("heuristic", placement)
        placement = self.polish(placement)
        self._stage("polish", placement)
        clusters = self.stage1()
        if clusters is not None:
            aligned = self.stage2(self.align(clusters))
            self._stage("stage1+2", aligned)
            placement, better = self._better(placement, aligned)
            if not better:
                placement = self.stage2(placement)
        if self.method == "joint":
            # A sweep of exact single-layer moves first makes a better hint.
            placement = self._sweep(placement, True, self._det_share(0.05))[0]
            placement = self.joint(placement)
            self._stage("joint", placement)
        else:
            placement = self.refine(placement)
            self._stage("refine", placement)
        return placement


# --- load caps --------------------------------------------------------------------------------


def _min_max_layer(loads: np.ndarray, g: int, hint: np.ndarray, search: _Search,
                   det: float) -> np.ndarray:
    """The layer's most balanced E/G-per-device packing CP-SAT finds (hinted with EPLB's)."""
    n = len(loads)
    det = search.det_for(n * g, det)
    if det <= 0:
        return hint
    model = cp_model.CpModel()
    x, peak = balanced_assignment(model, loads, g, hint)
    assert peak is not None
    model.minimize(peak)
    solver, status = search.run(model, det, n * g)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return hint
    row = read_assignment(solver, x)
    best = np.bincount(row, weights=loads, minlength=g).max()
    return row if best < np.bincount(hint, weights=loads, minlength=g).max() else hint


@dataclass(frozen=True, eq=False)
class LoadCaps:
    """Per-layer caps on a device's token load, and a placement within the tighter ones."""

    eplb: np.ndarray  # EPLB's own max load (or the best balance found, if above tolerance)
    tolerance: np.ndarray  # (1 + tolerance) x mean, or the best balance found if above
    witness: np.ndarray  # a balanced placement within `eplb`


def load_caps(problem: PlacementProblem, tolerance: float, search: _Search) -> LoadCaps:
    """Both sets of caps (see the module docstring) and a placement meeting them."""
    stats, g = problem.stats, problem.topology.num_devices
    witness = eplb(stats.loads, g)
    packed = np.stack([np.bincount(witness[layer], weights=stats.loads[layer], minlength=g)
                       .max() for layer in range(stats.num_layers)]).astype(np.int64)
    mean = stats.loads.sum(axis=1) / g
    tol = np.floor((1.0 + tolerance) * mean + 1e-9).astype(np.int64)
    for layer in np.nonzero(packed > tol)[0]:
        # EPLB's packing is outside the tolerance here: look for a better balance.
        row = _min_max_layer(stats.loads[layer], g, witness[layer], search,
                             search._det_share(0.05))
        witness[layer] = row
        packed[layer] = np.bincount(row, weights=stats.loads[layer], minlength=g).max()
    return LoadCaps(eplb=packed, tolerance=np.maximum(tol, packed), witness=witness)


# --- entry point ------------------------------------------------------------------------------


# The wall-clock guard, as a multiple of the time limit.
WALL_GUARD = 3.0


def choose_method(stats: TraceStats, topology: Topology, method: Method) -> str:
    """'joint' when the whole model is small enough (or asked for), else 'staged'."""
    if method != "auto":
        return method
    size = window_booleans(stats.flows, 0, stats.num_layers - 1, topology, stats.num_experts)
    return "joint" if size <= _JOINT_LIMIT else "staged"


def _within(placement: np.ndarray, stats: TraceStats, g: int, caps: np.ndarray) -> bool:
    """True when every device's load at every layer is within that layer's cap."""
    return bool((device_loads(placement, stats, g) <= caps[:, None]).all())


def _ladder(total: float, first: float) -> list[float]:
    """Rung time limits: `first`, then doubling, as many as fit in `total` (one rung of
    `total` when even `first` does not); they never depend on `total`, only their count."""
    if total < first:
        return [total]
    rungs, size = [], first
    while sum(rungs) + size <= total * (1 + 1e-9):
        rungs.append(size)
        size *= 2
    return rungs


# Time limit of the first rung, seconds; each next rung doubles it.
_FIRST_RUNG_S = 0.5


def _phase(problem: PlacementProblem, options: PlaceOptions, caps: np.ndarray,
           witness: np.ndarray, balance: str, budget: WorkBudget, method: str,
           starts: tuple[np.ndarray, ...]) -> PlacementResult:
    """One search within one set of load caps, from the starts that meet them."""
    stats, g = problem.stats, problem.topology.num_devices
    search = _Search(problem, caps, witness, options, budget, method)
    best = search.search(tuple(p for p in starts if _within(p, stats, g, caps)))
    check_placement(best, stats.num_experts, g)
    bound = search.bound if method == "joint" else None
    return PlacementResult(
        placement=best, objective=search.cost(best),
        bound=None if bound is None or not math.isfinite(bound) else float(bound),
        solver_status=search.status if method == "joint" else "FEASIBLE",
        fallback=not search.solved, method=method, balance=balance,
        stages=tuple(search.stages))


def _rung_budget(limit: float, deadline: float) -> WorkBudget:
    # The search stops on estimated work (deterministic: CP-SAT's deterministic time), so
    # the same trace and seed give the same placement on a busy machine; the wall clock is
    # only a guard against a machine far slower than the estimate assumes.
    return WorkBudget(units=_WORK_SHARE * limit,
                      deadline=min(deadline, time.perf_counter() + WALL_GUARD * limit + 5.0))


@dataclass(frozen=True, eq=False)
class _Starts:
    """The local-search placements at both caps (the baseline is the one the policy keeps)."""

    at_eplb: PlacementResult
    relaxed: PlacementResult | None


def _local_starts(problem: PlacementProblem, options: PlaceOptions, caps: LoadCaps,
                  method: str) -> _Starts:
    """The local-search baseline (local.py) at EPLB-level caps and at the relaxed caps."""
    stats, topology = problem.stats, problem.topology
    weights = problem.weights()

    def result(placement: np.ndarray, balance: str) -> PlacementResult:
        check_placement(placement, stats.num_experts, topology.num_devices)
        objective = weighted_cost(placement, stats, weights)
        return PlacementResult(placement=placement, objective=objective, bound=None,
                               solver_status="HEURISTIC", fallback=True, method=method,
                               balance=balance, stages=(("local search", objective),),
                               baseline=placement, baseline_objective=objective)

    at_eplb = local_search(stats, weights, caps.eplb, caps.witness, topology.devices_per_node,
                           options.seed)
    relaxed = None
    if (caps.tolerance > caps.eplb).any():
        relaxed = local_search(stats, weights, caps.tolerance, caps.witness,
                               topology.devices_per_node, options.seed, start=at_eplb)
    return _Starts(result(at_eplb, "eplb"),
                   None if relaxed is None else result(relaxed, "tolerance"))


def _first_rung(problem: PlacementProblem, options: PlaceOptions, limit: float, method: str,
                deadline: float, caps: LoadCaps, starts: _Starts
                ) -> tuple[PlacementResult, PlacementResult, str]:
    """The first rung decides the balance: phase A at EPLB-level caps, then (where the caps
    can be relaxed) phase B at `(1 + load_tolerance) x mean`; B is kept when it cuts the
    weighted transfers by at least `min_gain`. Returns the best placement within the kept
    caps (never worse than that caps' local search), that local search, and a note."""
    budget = _rung_budget(limit, deadline)
    relax = starts.relaxed is not None
    phase_a = budget.split(0.5 if relax else 1.0)
    first = _phase(problem, options, caps.eplb, caps.witness, "eplb", phase_a, method,
                   (starts.at_eplb.placement,))
    budget.charge(phase_a.used)
    # A phase starts from the local search, so it is never worse (and may carry a proof).
    best_a = first if first.objective <= starts.at_eplb.objective else replace(
        starts.at_eplb, fallback=first.fallback)
    if starts.relaxed is None:
        return best_a, starts.at_eplb, ""
    second = _phase(problem, options, caps.tolerance, caps.witness, "tolerance",
                    budget.split(1.0), method, (best_a.placement, starts.relaxed.placement))
    best_b = second if second.objective <= starts.relaxed.objective else replace(
        starts.relaxed, fallback=second.fallback)
    best_b = best_b if best_b.objective <= best_a.objective else replace(
        best_a, balance="tolerance", solver_status="FEASIBLE", bound=None)
    saving = 100 * (1 - best_b.objective / max(best_a.objective, 1))
    tol = options.load_tolerance
    if best_b.objective <= (1.0 - options.min_gain) * best_a.objective:
        return best_b, starts.relaxed, (
            f"load caps relaxed to (1 + {tol:g}) x mean: {saving:.1f}% fewer weighted "
            "transfers than at EPLB's balance")
    return replace(best_a, fallback=best_a.fallback and second.fallback), starts.at_eplb, (
        f"kept EPLB-level balance: relaxing the load caps to (1 + {tol:g}) x mean saved only "
        f"{saving:.1f}% of the weighted transfers (< {100 * options.min_gain:g}%)")


# Work budget of the load-cap setup (EPLB's packing and, where it is above the tolerance, a
# short min-max CP-SAT per layer): fixed, so every time limit uses the same caps.
_SETUP_S = 1.0


def place_experts(problem: PlacementProblem, options: PlaceOptions) -> PlacementResult:
    """The best placement found within `options.time_limit_s`; valid at any time limit.

    First the local-search baseline (`local.py`, fixed work, the same at any limit) at both
    sets of load caps. Then rungs of doubling work budget (`_ladder`): the first decides the
    balance (`_first_rung`), each later one is the whole search within the kept caps,
    started from the best placement so far, replacing it only when strictly lower. Nothing
    depends on the time limit but the number of rungs, so a longer limit repeats the shorter
    one's work and adds more: never a worse objective, and never worse than the local-search
    baseline of the kept caps. The bound is the best of the per-layer-pair bound (any load
    caps) and CP-SAT's bound on the joint model (within the kept caps).
    """
    stats, g = problem.stats, problem.topology.num_devices
    method = choose_method(stats, problem.topology, options.method)
    if g == 1:
        single = np.zeros_like(stats.loads)
        return PlacementResult(placement=single, objective=0, bound=0.0,
                               solver_status="OPTIMAL", fallback=False, method=method,
                               balance="eplb", bound_source="pair")
    deadline = time.perf_counter() + WALL_GUARD * options.time_limit_s + 5.0
    setup = _Search(problem, np.zeros(stats.num_layers, dtype=np.int64),
                    eplb(stats.loads, g), options,
                    WorkBudget(units=_SETUP_S, deadline=deadline), method)
    caps = load_caps(problem, options.load_tolerance, setup)
    pair = pair_bound(stats.flows, g, problem.topology.devices_per_node, problem.w_intra,
                      problem.w_inter)
    starts = _local_starts(problem, options, caps, method)
    # The wall guard of the rungs starts after the baseline's fixed work.
    deadline = max(deadline, time.perf_counter() + WALL_GUARD * options.time_limit_s + 5.0)
    ladder = _ladder(options.time_limit_s, _FIRST_RUNG_S)
    if starts.at_eplb.objective <= pair:
        # The local search meets the bound at EPLB-level balance: optimal, nothing to run.
        kept, baseline, note, ladder = starts.at_eplb, starts.at_eplb, "", []
    else:
        kept, baseline, note = _first_rung(problem, options, ladder[0], method, deadline,
                                           caps, starts)
    solved = setup.solved or not kept.fallback
    notes = [note] if note else []
    row = caps.eplb if kept.balance == "eplb" else caps.tolerance
    cp_bound = kept.bound
    rungs = min(1, len(ladder))
    for limit in ladder[1:]:
        if kept.objective <= pair or kept.solver_status == "OPTIMAL":
            break  # proven optimal (the pair bound, or CP-SAT within the kept caps)
        if time.perf_counter() >= deadline:
            break
        found = _phase(problem, options, row, caps.witness, kept.balance,
                       _rung_budget(limit, deadline), method, (kept.placement,))
        rungs += 1
        solved |= not found.fallback
        if found.bound is not None:
            cp_bound = max(cp_bound if cp_bound is not None else found.bound, found.bound)
        if found.objective < kept.objective or (found.objective == kept.objective
                                                and found.solver_status == "OPTIMAL"):
            kept = found
    # The search ran when CP-SAT returned a solution or a rung improved on the baseline.
    solved |= kept.objective < baseline.objective
    status = "FEASIBLE" if solved else "HEURISTIC"
    bound, source = float(pair), "pair"
    if cp_bound is not None and cp_bound > bound:
        bound, source = float(cp_bound), "cp-sat"
    if kept.solver_status == "OPTIMAL":
        bound, source = max(bound, float(kept.objective)), "cp-sat"
    if kept.objective <= bound + 1e-6:
        status = "OPTIMAL"
    gap = 0.0 if kept.objective <= 0 else max(0.0, 1 - bound / kept.objective)
    if not solved:
        notes.append("the time limit left only the local-search baseline (no CP-SAT solution, "
                     "no rung improved on it)")
    notes.append(f"{rungs} rung(s) of doubling work budget, each started from the best "
                 "placement so far (the first from the local-search baseline); best kept"
                 if rungs else "the local-search baseline meets the per-layer-pair bound: "
                 "no search needed")
    notes.append(f"objective {kept.objective}, bound {bound:.0f} ("
                 + ("per-layer-pair bound, any load caps" if source == "pair"
                    else "CP-SAT's bound on the joint model") + f"): gap {100 * gap:.2f}%")
    return replace(kept, notes=tuple(notes), rungs=rungs, bound=bound, bound_source=source,
                   solver_status=status, fallback=not solved and status != "OPTIMAL",
                   baseline=baseline.placement, baseline_objective=baseline.objective)

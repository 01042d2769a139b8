"""The CP-SAT models of the placement search, and the work budget that bounds them.

One model serves every step: layers lo..hi of a placement are free, the layers around them
fixed. Items are experts (E/G per device, token-load caps) or, for stage 2, a layer's
clusters (one per device, no caps). Costs of transitions to fixed layers are linear; inside
the window a pair (e at l, f at l + 1) costs `count x (w_inter - (w_inter - w_intra) x
same_node - w_intra x same_device)`, with the indicators bounded above by the choices and
by each device's room (the room cuts give the LP bound its strength).

Budget: the search stops on *estimated* work (seconds this machine needs for CP-SAT's
deterministic time, for building models in Python and for the numpy steps), which is a
deterministic quantity, so the same input and time limit give the same placement. The
wall clock is only a guard against a much slower machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from ortools.sat.python import cp_model

from mapper.passes.moe.cost import Topology
from mapper.passes.moe.metrics import one_hot

# Measured on the 2-core development machine while other jobs ran: wall seconds per CP-SAT
# deterministic unit (1.4 over 64 mixed solves), fixed cost of one CP-SAT call (0.01-0.05 s)
# and of building one boolean with its constraints through the Python API (2-4.5e-5 s).
WALL_PER_DET = 1.6
SOLVE_OVERHEAD_S = 0.03
BUILD_PER_BOOL_S = 3e-5


@dataclass
class WorkBudget:
    """Estimated seconds of work left (what the search stops on) and a wall-clock guard."""

    units: float
    deadline: float
    used: float = 0.0

    def left(self) -> float:
        """Estimated seconds left."""
        return self.units - self.used

    def wall_left(self) -> float:
        """Wall seconds to the guard deadline."""
        return self.deadline - time.perf_counter()

    def exhausted(self) -> bool:
        """No work (or wall time) left."""
        return self.left() <= 1e-3 or self.wall_left() <= 0.05

    def grant(self, want: float) -> float:
        """Up to `want` of what is left."""
        return max(0.0, min(want, self.left()))

    def charge(self, units: float) -> None:
        """Account for work done."""
        self.used += units

    def split(self, share: float) -> WorkBudget:
        """A sub-budget of `share` of what is left, ending at the same share of wall time."""
        return WorkBudget(units=self.left() * share,
                          deadline=time.perf_counter() + share * self.wall_left())


def balanced_assignment(model: cp_model.CpModel, loads: np.ndarray, g: int, hint: np.ndarray,
                        cap: int | None = None
                        ) -> tuple[list[list[cp_model.IntVar]], cp_model.IntVar | None]:
    """x[e][d]: expert e on device (or cluster) d; each expert once, n/g per device, each
    device's load at most `cap`, or, with no cap, at most a new variable `peak` (returned,
    for the caller to minimize); hinted with `hint`."""
    n, per = len(loads), len(loads) // g
    x = [[model.new_bool_var("") for _ in range(g)] for _ in range(n)]
    peak = model.new_int_var(0, int(loads.sum()), "peak") if cap is None else None
    for e in range(n):
        model.add_exactly_one(x[e])
        for d in range(g):
            model.add_hint(x[e][d], bool(hint[e] == d))
    for d in range(g):
        model.add(sum(x[e][d] for e in range(n)) == per)
        model.add(sum(int(loads[e]) * x[e][d] for e in range(n)) <= (cap if peak is None
                                                                      else peak))
    return x, peak


def read_assignment(solver: cp_model.CpSolver, x: list[list[cp_model.IntVar]]) -> np.ndarray:
    """The device of each expert in a solved `balanced_assignment`."""
    return np.array([next(d for d, var in enumerate(row) if solver.boolean_value(var))
                     for row in x])


def affordable(budget: WorkBudget, booleans: int, det: float) -> float:
    """Deterministic time (up to `det`) the budget can pay for on a model of `booleans`,
    after building and calling it; 0 when not even a short solve fits."""
    fixed = SOLVE_OVERHEAD_S + BUILD_PER_BOOL_S * booleans
    det = min(det, (budget.left() - fixed) / WALL_PER_DET)
    if det < 0.005 or budget.wall_left() <= 0.05:
        return 0.0
    return det


def solve(model: cp_model.CpModel, budget: WorkBudget, det: float, seed: int,
          booleans: int) -> tuple[cp_model.CpSolver, int]:
    """Solve deterministically (seed, one worker, det limit), charging the budget."""
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.random_seed = seed
    params.num_workers = 1
    params.max_deterministic_time = det
    params.max_time_in_seconds = max(0.05, min(budget.wall_left(), 3 * WALL_PER_DET * det + 1))
    status = solver.solve(model)
    budget.charge(SOLVE_OVERHEAD_S + BUILD_PER_BOOL_S * booleans
                  + WALL_PER_DET * solver.deterministic_time)
    return solver, status


@dataclass
class Window:
    """A CP-SAT model over layers lo..hi; `x[l - lo][item][device]`."""

    model: cp_model.CpModel
    lo: int
    hi: int
    x: list[list[list[cp_model.IntVar]]] = field(default_factory=list)


def window_booleans(flows: np.ndarray, lo: int, hi: int, topology: Topology, items: int
                    ) -> int:
    """Booleans of a window model over layers lo..hi (to decide before building it)."""
    pairs = int(sum(np.count_nonzero(flows[layer]) for layer in range(lo, hi)))
    extra = topology.num_nodes if topology.num_nodes > 1 else 0
    return (hi - lo + 1) * items * topology.num_devices + pairs * (topology.num_devices + extra)


def _link_weights(weights: np.ndarray, topology: Topology) -> tuple[int, int]:
    g = topology.num_devices
    nodes = topology.node_of()
    w_intra = int(weights[0, 1]) if g > 1 and nodes[0] == nodes[1] else 0
    inter = weights[nodes[:, None] != nodes[None, :]]
    w_inter = int(inter[0]) if inter.size else w_intra
    if not w_intra:
        w_intra = w_inter
    return w_intra, w_inter


def build_window(*, loads: np.ndarray, flows: np.ndarray, current: np.ndarray, lo: int,
                 hi: int, per: int, caps: np.ndarray | None, weights: np.ndarray,
                 topology: Topology, symmetry: bool = False) -> Window:
    """Layers lo..hi free, layers lo - 1 and hi + 1 fixed at `current`, hinted with it."""
    g = topology.num_devices
    n = loads.shape[1]
    nodes = topology.node_of()
    num_nodes = topology.num_nodes
    w_intra, w_inter = _link_weights(weights, topology)
    model = cp_model.CpModel()
    window = Window(model=model, lo=lo, hi=hi)
    for layer in range(lo, hi + 1):
        x = [[model.new_bool_var(f"x{layer}_{e}_{d}") for d in range(g)] for e in range(n)]
        window.x.append(x)
        for e in range(n):
            model.add_exactly_one(x[e])
            for d in range(g):
                model.add_hint(x[e][d], bool(current[layer, e] == d))
        for d in range(g):
            model.add(sum(x[e][d] for e in range(n)) == per)
            if caps is not None:
                model.add(sum(int(loads[layer, e]) * x[e][d] for e in range(n))
                          <= int(caps[layer]))
    if symmetry:
        # Devices of one node are interchangeable, and so are equal nodes: number them in
        # the order layer lo first uses them (value precedence within each node, and between
        # the first devices of consecutive nodes); the caller relabels the hint to match.
        size = topology.devices_per_node if num_nodes > 1 else g
        first = window.x[0]
        for d in range(1, g):
            before = d - 1 if d % size else d - size
            for e in range(n):
                model.add(first[e][d] <= sum(first[p][before] for p in range(e)))
    terms: list[cp_model.LinearExprT] = []
    constant = 0
    if lo > 0:
        cost = flows[lo - 1].T @ one_hot(current[lo - 1:lo], g)[0] @ weights
        terms += [int(cost[e, d]) * window.x[0][e][d] for e in range(n) for d in range(g)
                  if cost[e, d]]
    if hi < loads.shape[0] - 1:
        cost = flows[hi] @ one_hot(current[hi + 1:hi + 2], g)[0] @ weights.T
        terms += [int(cost[e, d]) * window.x[-1][e][d] for e in range(n) for d in range(g)
                  if cost[e, d]]
    split = num_nodes > 1 and w_inter != w_intra
    node_members = [[d for d in range(g) if nodes[d] == node] for node in range(num_nodes)]
    for offset, layer in enumerate(range(lo, hi)):
        xa, xb = window.x[offset], window.x[offset + 1]
        hint_a, hint_b = current[layer], current[layer + 1]
        room: dict[tuple[str, int, int], list[cp_model.IntVar]] = {}
        for e, f in zip(*np.nonzero(flows[layer]), strict=True):
            count = int(flows[layer, e, f])
            constant += count * w_inter
            for d in range(g):
                s = model.new_bool_var("")
                model.add_implication(s, xa[e][d])
                model.add_implication(s, xb[f][d])
                model.add_hint(s, bool(hint_a[e] == d and hint_b[f] == d))
                terms.append(-count * w_intra * s)
                room.setdefault(("out", e, d), []).append(s)
                room.setdefault(("in", f, d), []).append(s)
            if split:
                for node, members in enumerate(node_members):
                    t = model.new_bool_var("")
                    model.add(t <= sum(xa[e][d] for d in members))
                    model.add(t <= sum(xb[f][d] for d in members))
                    model.add_hint(t, bool(nodes[hint_a[e]] == node and nodes[hint_b[f]] == node))
                    terms.append(-count * (w_inter - w_intra) * t)
                    room.setdefault(("out-node", e, node), []).append(t)
                    room.setdefault(("in-node", f, node), []).append(t)
        # An item pairs with at most as many items as its device (node) holds.
        for (kind, item, where), pairs in room.items():
            side = xa if kind.startswith("out") else xb
            devices = node_members[where] if kind.endswith("node") else [where]
            limit = per * len(devices)
            if len(pairs) > limit:
                model.add(sum(pairs) <= limit * sum(side[item][d] for d in devices))
    model.minimize(sum(terms) + constant)
    return window


def read_window(window: Window, solver: cp_model.CpSolver, current: np.ndarray) -> np.ndarray:
    """`current` with the window's layers replaced by the solver's choices."""
    result = current.copy()
    for offset, x in enumerate(window.x):
        for e, row in enumerate(x):
            result[window.lo + offset, e] = next(d for d, v in enumerate(row)
                                                 if solver.boolean_value(v))
    return result

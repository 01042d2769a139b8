"""Chain-aware construction and numpy swap local search (the `local_search` baseline), and
the per-layer-pair lower bound on the placement objective.

The objective is a chain: with layers l - 1 and l + 1 fixed, the cost of layer l is linear
in its row, `sum_e a[e, dev(e)]` with `a = flows[l-1].T @ hot(l-1) @ W + flows[l] @
hot(l+1) @ W.T`. So one layer can be improved exactly or by swaps against a constant
matrix:
- group relabel: the layer's device groups permuted onto devices (G x G assignment; load
  caps are per layer, so any relabel keeps them);
- the uncapped optimum (E x E assignment over E/G slots per device), kept when it meets the
  layer's cap;
- swap descent: best pair swaps under the cap, several device-disjoint swaps at once (their
  gains add up: the row cost is linear).
And the chain as a whole: relabelling the devices of every layer from a cut onwards by a
node-preserving permutation changes only the pair across the cut (G x G assignments, per
node pair then over nodes).

Construction: layer by layer, each next layer packed next to the devices its tokens come
from (from EPLB's layer 0, from a clustered layer 0, and backwards from a clustered last
layer), then sweeps of the moves above in alternating directions until nothing improves,
then deterministic restarts that shuffle the groups of a few layers. Everything is numpy
on the transition matrices; the work is fixed by the instance (no clock), so the result
is the same at any time limit.

Bound: for one layer pair, an expert at layer l shares its device with at most E/G experts
of layer l + 1, so at most its E/G largest transition counts stay on the device (the same
for columns, and for nodes with E/G x devices-per-node). The cost is `w_intra x
cross-device + (w_inter - w_intra) x cross-node`; summing each part's bound over the pairs
gives a lower bound on the objective's own scale (constant offsets included), valid for
any load caps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ortools.graph.python import linear_sum_assignment

from mapper.passes.moe.cluster import grown_clusters, similarity, swap_search


def _hot(row: np.ndarray, g: int) -> np.ndarray:
    out = np.zeros((len(row), g))
    out[np.arange(len(row)), row] = 1.0
    return out


def _by_device(matrix: np.ndarray, row: np.ndarray, g: int) -> np.ndarray:
    """`[G, cols]`: the rows of `matrix` summed by the device `row` puts them on (a valid
    row holds E/G experts per device, so this is a sort and a reshape)."""
    order = np.argsort(row, kind="stable")
    return matrix[order].reshape(g, -1, matrix.shape[1]).sum(axis=1)


def _traffic(flows: np.ndarray, row: np.ndarray, nxt: np.ndarray, g: int) -> np.ndarray:
    """`[G, G]` transitions of one layer pair from device to device."""
    return _by_device(_by_device(flows, row, g).T, nxt, g).T


def _assign(cost: np.ndarray) -> np.ndarray:
    """Exact min-cost permutation of a square matrix: row -> column."""
    size = cost.shape[0]
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    scaled = np.rint(cost - cost.min()).astype(np.int64)
    solver.add_arcs_with_cost(rows.ravel(), cols.ravel(), scaled.ravel())
    if solver.solve() != solver.OPTIMAL:
        raise AssertionError("linear sum assignment failed on a complete square matrix")
    return np.array([solver.right_mate(row) for row in range(size)])


@dataclass(frozen=True)
class Chain:
    """The instance in float form: flows `[L - 1, E, E]`, loads `[L, E]`, weights `[G, G]`,
    caps `[L]`, devices per node."""

    flows: np.ndarray
    loads: np.ndarray
    weights: np.ndarray
    caps: np.ndarray
    per_node: int
    # Layers whose uncapped optimum broke the load cap once (not tried again).
    over_cap: set[int] = field(default_factory=set)

    @property
    def layers(self) -> int:
        """MoE layers."""
        return int(self.loads.shape[0])

    @property
    def g(self) -> int:
        """Devices."""
        return int(self.weights.shape[0])

    @property
    def per(self) -> int:
        """Experts per device."""
        return int(self.loads.shape[1]) // self.g

    def costs(self, placement: np.ndarray, layer: int, *, prev: bool = True,
              nxt: bool = True) -> np.ndarray:
        """`[E, G]` cost of each expert of `layer` on each device, neighbours fixed."""
        g = self.g
        a = np.zeros((self.loads.shape[1], g))
        if prev and layer > 0:
            a += _by_device(self.flows[layer - 1], placement[layer - 1], g).T @ self.weights
        if nxt and layer + 1 < self.layers:
            a += _by_device(self.flows[layer].T, placement[layer + 1], g).T @ self.weights.T
        return a

    def cost(self, placement: np.ndarray) -> int:
        """The objective (weighted transitions)."""
        g, total = self.g, 0.0
        for layer in range(self.layers - 1):
            traffic = _traffic(self.flows[layer], placement[layer], placement[layer + 1], g)
            total += float((traffic * self.weights).sum())
        return round(total)

    def fits(self, row: np.ndarray, layer: int) -> bool:
        """The row holds E/G experts per device within the layer's cap."""
        counts = np.bincount(row, minlength=self.g)
        loads = np.bincount(row, weights=self.loads[layer], minlength=self.g)
        return bool((counts == self.per).all() and (loads <= self.caps[layer] + 1e-9).all())


# --- one layer -------------------------------------------------------------------------------


def _relabel(row: np.ndarray, a: np.ndarray, g: int) -> np.ndarray:
    """The layer's groups permuted onto devices at least cost (always within the caps)."""
    group_cost = _by_device(a, row, g)  # [group, device]
    return _assign(group_cost)[row]


def _uncapped(a: np.ndarray, per: int) -> np.ndarray:
    """The layer's optimum ignoring load caps: experts onto E/G slots per device."""
    slots = np.repeat(np.arange(a.shape[1]), per)
    return slots[_assign(a[:, slots])]


def _swaps(row: np.ndarray, a: np.ndarray, loads: np.ndarray, cap: float, g: int,
           max_rounds: int) -> np.ndarray:
    """Swap descent: each round, the best device-disjoint improving swaps within the cap."""
    row = row.copy()
    n = len(row)
    dev_load = np.bincount(row, weights=loads, minlength=g)
    dl = loads[None, :] - loads[:, None]  # e's device gains l_f - l_e when e <-> f
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    for _ in range(max_rounds):
        cur = a[np.arange(n), row]
        across = a[:, row]  # across[e, f] = a[e, dev(f)]
        delta = across + across.T - cur[:, None] - cur[None, :]
        here = dev_load[row]
        ok = upper & (row[:, None] != row[None, :]) & (here[:, None] + dl <= cap + 1e-9) \
            & (here[None, :] - dl <= cap + 1e-9) & (delta < -1e-9)
        flat = np.flatnonzero(ok)
        if flat.size == 0:
            break
        order = flat[np.argsort(delta.ravel()[flat], kind="stable")][:8 * g]
        used = np.zeros(g, dtype=bool)
        for index in order:
            e, f = divmod(int(index), n)
            de, df = row[e], row[f]
            if used[de] or used[df]:
                continue
            used[de] = used[df] = True
            dev_load[de] += loads[f] - loads[e]
            dev_load[df] += loads[e] - loads[f]
            row[e], row[f] = df, de
    return row


def improve_row(chain: Chain, placement: np.ndarray, layer: int, a: np.ndarray | None = None,
                max_rounds: int = 64) -> np.ndarray:
    """A row of `layer` no costlier than the current one (neighbours fixed), within caps."""
    g, per = chain.g, chain.per
    if a is None:
        a = chain.costs(placement, layer)
    n = a.shape[0]
    row = placement[layer]

    def value(candidate: np.ndarray) -> float:
        return float(a[np.arange(n), candidate].sum())

    best, best_value = row, value(row)
    if layer not in chain.over_cap:
        free = _uncapped(a, per)
        if chain.fits(free, layer):
            return free if value(free) < best_value - 1e-9 else row  # the layer's optimum
        chain.over_cap.add(layer)  # the caps bind here: swaps only from now on
    for start in (row, _relabel(row, a, g)):
        candidate = _swaps(start, a, chain.loads[layer], chain.caps[layer], g, max_rounds)
        if value(candidate) < best_value - 1e-9:
            best, best_value = candidate, value(candidate)
    return best


def _repair(row: np.ndarray, a: np.ndarray, loads: np.ndarray, cap: float, g: int
            ) -> np.ndarray | None:
    """A row within the cap from an over-cap one: swaps out of the most loaded device, each
    the least extra cost per unit of load moved that keeps the partner device within the
    cap (None when stuck)."""
    row = row.copy()
    n = len(row)
    dev_load = np.bincount(row, weights=loads, minlength=g)
    for _ in range(4 * n):
        worst = int(np.argmax(dev_load))
        if dev_load[worst] <= cap + 1e-9:
            return row
        mine = np.nonzero(row == worst)[0]
        other = np.nonzero(row != worst)[0]
        moved = loads[mine][:, None] - loads[other][None, :]  # load leaving `worst`
        partner = dev_load[row[other]][None, :] + moved
        ok = (moved > 0) & (partner <= np.maximum(cap, dev_load[worst] - moved) + 1e-9)
        if not ok.any():
            return None
        delta = (a[mine[:, None], row[other][None, :]] + a[other, worst][None, :]
                 - a[mine, worst][:, None] - a[other, row[other]][None, :])
        relief = np.where(ok, np.minimum(moved, dev_load[worst] - cap), 1.0)
        score = np.where(ok, delta / relief, np.inf)
        i, j = np.unravel_index(int(np.argmin(score)), score.shape)
        e, f = int(mine[i]), int(other[j])
        d = int(row[f])
        dev_load[worst] -= moved[i, j]
        dev_load[d] += moved[i, j]
        row[e], row[f] = d, worst
    return None


def polish_row(chain: Chain, placement: np.ndarray, layer: int, max_rounds: int = 64
               ) -> np.ndarray:
    """A stronger move than `improve_row` where the cap binds: the layer's uncapped optimum
    repaired into the cap, then swap descent; the current row if that is not cheaper."""
    a = chain.costs(placement, layer)
    n = a.shape[0]
    row = placement[layer]
    free = _uncapped(a, chain.per)
    fixed = _repair(free, a, chain.loads[layer], chain.caps[layer], chain.g)
    if fixed is None:
        return row
    fixed = _swaps(fixed, a, chain.loads[layer], chain.caps[layer], chain.g, max_rounds)
    if a[np.arange(n), fixed].sum() < a[np.arange(n), row].sum() - 1e-9:
        return fixed
    return row


# --- the chain -------------------------------------------------------------------------------


def _node_preserving(cost: np.ndarray, g: int, per_node: int) -> np.ndarray | None:
    """Device permutation `perm[b] = c` of least `sum_b cost[b, perm[b]]` that maps whole
    nodes onto whole nodes (None when nodes differ in size)."""
    if g % per_node:
        return None
    nodes = g // per_node
    if nodes == 1:
        return _assign(cost)
    inner = {}
    value = np.zeros((nodes, nodes))
    for n in range(nodes):
        for m in range(nodes):
            block = cost[n * per_node:(n + 1) * per_node, m * per_node:(m + 1) * per_node]
            inner[n, m] = _assign(block)
            value[n, m] = block[np.arange(per_node), inner[n, m]].sum()
    outer = _assign(value)
    perm = np.empty(g, dtype=np.int64)
    for n in range(nodes):
        m = int(outer[n])
        perm[n * per_node:(n + 1) * per_node] = m * per_node + inner[n, m]
    return perm


def _suffix_moves(chain: Chain, placement: np.ndarray) -> bool:
    """Relabel every layer from a cut onwards where that cuts the pair across the cut."""
    g = chain.g
    improved = False
    for cut in range(1, chain.layers):
        traffic = _traffic(chain.flows[cut - 1], placement[cut - 1], placement[cut], g)
        cost = traffic.T @ chain.weights  # cost[b, c]: traffic into b if b were relabelled c
        perm = _node_preserving(cost, g, chain.per_node)
        if perm is None:
            return False
        now = float(cost[np.arange(g), np.arange(g)].sum())
        if float(cost[np.arange(g), perm].sum()) < now - 1e-9:
            placement[cut:] = perm[placement[cut:]]
            improved = True
    return improved


def _node_partition(chain: Chain, placement: np.ndarray) -> bool:
    """Regroup the devices into nodes for every layer at once: device swaps between nodes
    on the traffic summed over the layer pairs (a relabel of all layers keeps every
    same-device pair, so only the cross-node cost changes)."""
    g, size = chain.g, chain.per_node
    if size >= g or g % size:
        return False
    traffic = np.zeros((g, g))
    for layer in range(chain.layers - 1):
        traffic += _traffic(chain.flows[layer], placement[layer], placement[layer + 1], g)
    mutual = traffic + traffic.T
    np.fill_diagonal(mutual, 0.0)
    node = np.arange(g) // size
    improved = False
    for _ in range(4 * g):
        aff = mutual @ _hot(node, g // size)  # [device, node]
        own = aff[np.arange(g), node]
        cross = aff[:, node]  # cross[a, b] = affinity of a to b's node
        gain = cross + cross.T - own[:, None] - own[None, :] - 2 * mutual
        gain = np.where(node[:, None] != node[None, :], gain, 0.0)
        a, b = divmod(int(np.argmax(gain)), g)
        if gain[a, b] <= 1e-9:
            break
        node[a], node[b] = node[b], node[a]
        improved = True
    if improved:
        perm = np.empty(g, dtype=np.int64)
        for n in range(g // size):
            perm[np.nonzero(node == n)[0]] = n * size + np.arange(size)
        placement[:] = perm[placement]
    return improved


# Share of the objective below which a sweep's gain ends the descent.
_MIN_SWEEP_GAIN = 1e-4
# Restarts only where one descent is cheap (layers x experts^2 at most this).
_RESTART_SIZE = 1_500_000


def descend(chain: Chain, placement: np.ndarray, max_sweeps: int = 12) -> np.ndarray:
    """Sweeps of exact and swap moves per layer, and suffix relabels, to a local optimum."""
    placement = placement.copy()
    before = chain.cost(placement)
    for sweep in range(max_sweeps):
        if chain.weights.max() > chain.weights[chain.weights > 0].min():
            _node_partition(chain, placement)
        _suffix_moves(chain, placement)
        order = range(chain.layers) if sweep % 2 == 0 else range(chain.layers - 1, -1, -1)
        for layer in order:
            placement[layer] = improve_row(chain, placement, layer)
        after = chain.cost(placement)
        if after >= before - _MIN_SWEEP_GAIN * before:
            break  # a sweep that gains (almost) nothing ends the descent
        before = after
    return placement


def _chain_from(chain: Chain, start: np.ndarray, first: int, witness: np.ndarray
                ) -> np.ndarray:
    """Layer `first` fixed, every other layer packed next to the layer before it (after it
    when going backwards from the last layer)."""
    placement = witness.copy()
    placement[first] = start
    forward = first == 0
    order = range(1, chain.layers) if forward else range(chain.layers - 2, -1, -1)
    for layer in order:
        a = chain.costs(placement, layer, prev=forward, nxt=not forward)
        placement[layer] = improve_row(chain, placement, layer, a)
    return placement


def _clustered(chain: Chain, stats, layer: int, witness_row: np.ndarray) -> np.ndarray:
    """A load-capped clustering of one layer's co-used experts (the witness if none fits)."""
    sim = similarity(stats, layer)
    loads = stats.loads[layer]
    cap = int(chain.caps[layer])
    start = grown_clusters(sim, loads, chain.g, cap)
    start = witness_row if start is None else start
    return swap_search(sim, loads, start, cap, 2 * len(loads))


# Estimated seconds of one `polish_row` + `improve_row` (an E x E assignment and numpy
# swaps; measured on the shared 2-core machine: 8 ms at E = 128).
POLISH_S_PER_E2 = 6e-7


def polish(chain: Chain, placement: np.ndarray, afford: Callable[[float], bool],
           max_sweeps: int = 8) -> np.ndarray:
    """Sweeps of `polish_row` and `improve_row` over the layers (and the chain moves) while
    `afford(estimated seconds)` allows: the pass's own moves beyond the baseline's."""
    placement = placement.copy()
    each = POLISH_S_PER_E2 * chain.loads.shape[1] ** 2
    before = chain.cost(placement)
    for sweep in range(max_sweeps):
        if chain.weights.max() > chain.weights[chain.weights > 0].min():
            _node_partition(chain, placement)
        _suffix_moves(chain, placement)
        order = range(chain.layers) if sweep % 2 == 0 else range(chain.layers - 1, -1, -1)
        for layer in order:
            if not afford(each):
                return placement
            placement[layer] = polish_row(chain, placement, layer)
            placement[layer] = improve_row(chain, placement, layer)
        after = chain.cost(placement)
        if after >= before - _MIN_SWEEP_GAIN * before:
            break
        before = after
    return placement


def make_chain(stats, weights: np.ndarray, caps: np.ndarray, per_node: int) -> Chain:
    """The float form of an instance under one set of load caps."""
    return Chain(flows=stats.flows.astype(np.float64), loads=stats.loads.astype(np.float64),
                 weights=weights.astype(np.float64), caps=caps.astype(np.float64),
                 per_node=per_node)


def local_search(stats, weights: np.ndarray, caps: np.ndarray, witness: np.ndarray,
                 per_node: int, seed: int = 0, restarts: int = 4,
                 start: np.ndarray | None = None) -> np.ndarray:
    """The best placement of the chain-aware starts after descent and restarts.

    `start`: a placement within `caps` to descend from too (alone on large instances, where
    the constructions would repeat the work that found it)."""
    chain = make_chain(stats, weights, caps, per_node)
    if chain.layers < 2 or chain.g < 2:
        return witness.copy()
    large = chain.layers * chain.loads.shape[1] ** 2 > _RESTART_SIZE
    starts = [] if start is None else [start]
    last = chain.layers - 1
    construct = not (large and start is not None)
    if construct:
        starts.append(_chain_from(chain, witness[0], 0, witness))
    if construct and chain.per > 1:
        starts.append(_chain_from(chain, _clustered(chain, stats, 0, witness[0]), 0, witness))
        starts.append(_chain_from(chain, _clustered(chain, stats, last, witness[last]), last,
                                  witness))
    best, best_cost = None, None
    for begin in starts:
        candidate = descend(chain, begin)
        value = chain.cost(candidate)
        if best_cost is None or value < best_cost:
            best, best_cost = candidate, value
    assert best is not None and best_cost is not None
    rng = np.random.default_rng(seed)
    if large:
        restarts = 0
    for _ in range(restarts):
        # Shuffle the device groups of a few layers, then descend again.
        trial = best.copy()
        for layer in rng.choice(chain.layers, size=max(1, chain.layers // 8), replace=False):
            trial[layer] = rng.permutation(chain.g)[trial[layer]]
        trial = descend(chain, trial)
        value = chain.cost(trial)
        if value < best_cost:
            best, best_cost = trial, value
    return best


# --- bound -----------------------------------------------------------------------------------


def _kept_at_most(flows: np.ndarray, size: int) -> float:
    """Transitions of one pair that can stay in groups of `size` experts per side."""
    n = flows.shape[0]
    if size >= n:
        return float(flows.sum())
    rows = np.partition(flows, n - size, axis=1)[:, n - size:].sum()
    cols = np.partition(flows, n - size, axis=0)[n - size:, :].sum()
    return float(min(rows, cols))


def pair_bound(flows: np.ndarray, num_devices: int, devices_per_node: int, w_intra: int,
               w_inter: int) -> int:
    """A lower bound on the weighted transitions of any placement (module docstring)."""
    if flows.shape[0] == 0 or num_devices < 2:
        return 0
    n = flows.shape[1]
    per = n // num_devices
    node = per * min(devices_per_node, num_devices)
    total = 0.0
    for pair in flows.astype(np.float64):
        moved = pair.sum()
        cross_device = moved - _kept_at_most(pair, per)
        cross_node = moved - _kept_at_most(pair, node) if num_devices > devices_per_node else 0
        total += w_intra * cross_device + (w_inter - w_intra) * cross_node
    return int(np.ceil(total - 1e-6))

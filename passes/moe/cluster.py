"""Stage 1 of the placement: per-layer, load-capped clusters of experts that tokens use together.

Two experts belong together when the same tokens reach them: the tokens routed to both in
the layer (co-activation), plus how much their traffic from the previous layer and to the
next layer overlaps (`sum_f min(flows[e, f], flows[e', f])`, in transitions). Each layer is
split into G clusters of exactly E/G experts, each cluster's token load within the layer's
cap, maximizing the similarity kept inside clusters: Kernighan-Lin pair swaps from three
starts (EPLB's balanced packing, a greedy similarity packing, clusters grown around the
heaviest experts), then CP-SAT on the quadratic model where it is small, hinted with the
best of them. Cluster labels are arbitrary here;
stage 2 aligns them across layers.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from ortools.sat.python import cp_model

from mapper.passes.moe.cpsat import balanced_assignment, read_assignment
from mapper.passes.moe.metrics import TraceStats

# Largest quadratic clustering model (pair indicators) handed to CP-SAT for one layer.
_CLUSTER_LIMIT = 6_000


def similarity(stats: TraceStats, layer: int) -> np.ndarray:
    """`[E, E]` symmetric, zero-diagonal similarity of the experts of `layer` (transitions)."""
    sim = stats.coactivation[layer].astype(np.int64).copy()
    if layer + 1 < stats.num_layers:
        out = stats.flows[layer]
        sim += np.minimum(out[:, None, :], out[None, :, :]).sum(axis=2)
    if layer > 0:
        into = stats.flows[layer - 1].T
        sim += np.minimum(into[:, None, :], into[None, :, :]).sum(axis=2)
    sim = (sim + sim.T) // 2
    np.fill_diagonal(sim, 0)
    return sim


def kept(sim: np.ndarray, labels: np.ndarray) -> int:
    """Similarity inside clusters (each unordered pair once)."""
    same = labels[:, None] == labels[None, :]
    return int(np.where(same, sim, 0).sum() // 2)


def swap_search(sim: np.ndarray, loads: np.ndarray, labels: np.ndarray, cap: int,
                max_swaps: int) -> np.ndarray:
    """Best-improvement pair swaps between clusters, keeping sizes and every load <= cap."""
    labels = labels.copy()
    g = int(labels.max()) + 1
    hot = (labels[:, None] == np.arange(g)[None, :]).astype(np.int64)
    affinity = sim @ hot  # [E, G]: similarity of each expert to each cluster
    cluster_load = loads @ hot
    for _ in range(max_swaps):
        own = affinity[np.arange(len(labels)), labels]
        cross = affinity[:, labels]  # cross[e, e'] = affinity of e to the cluster of e'
        gain = cross - own[:, None] + cross.T - own[None, :] - 2 * sim
        delta = loads[None, :] - loads[:, None]  # load change of e's cluster if e <-> e'
        ok = (labels[:, None] != labels[None, :]) \
            & (cluster_load[labels][:, None] + delta <= cap) \
            & (cluster_load[labels][None, :] - delta <= cap)
        gain = np.where(ok, gain, 0)
        flat = int(np.argmax(gain))
        e, f = divmod(flat, len(labels))
        if gain[e, f] <= 0:
            break
        a, b = labels[e], labels[f]
        affinity[:, a] += sim[:, f] - sim[:, e]
        affinity[:, b] += sim[:, e] - sim[:, f]
        cluster_load[a] += loads[f] - loads[e]
        cluster_load[b] += loads[e] - loads[f]
        labels[e], labels[f] = b, a
    return labels


def greedy_clusters(sim: np.ndarray, loads: np.ndarray, g: int, cap: int) -> np.ndarray | None:
    """Heaviest expert first into the cluster it is most similar to (room and cap allowing)."""
    n = len(loads)
    per = n // g
    labels = np.full(n, -1, dtype=np.int64)
    used, counts = np.zeros(g, dtype=np.int64), np.zeros(g, dtype=np.int64)
    for e in sorted(range(n), key=lambda e: (-int(loads[e]), e)):
        free = [d for d in range(g) if counts[d] < per and used[d] + loads[e] <= cap]
        if not free:
            return None
        score = [int(sim[e, labels == d].sum()) for d in free]
        d = free[max(range(len(free)), key=lambda i: (score[i], -used[free[i]], -free[i]))]
        labels[e], used[d], counts[d] = d, used[d] + loads[e], counts[d] + 1
    return labels


class Runner(Protocol):
    """Runs CP-SAT models within the search's budget."""

    def det_for(self, booleans: int, det: float) -> float:
        """Deterministic time (up to `det`) affordable for a model of `booleans` (0: skip)."""
        ...

    def run(self, model: cp_model.CpModel, det: float, booleans: int
            ) -> tuple[cp_model.CpSolver, int]:
        """Solve and charge the budget."""
        ...


def grown_clusters(sim: np.ndarray, loads: np.ndarray, g: int, cap: int) -> np.ndarray | None:
    """Clusters grown one at a time: seed with the heaviest free expert, then keep adding the
    free expert most similar to the cluster (cap allowing) until it holds E/G experts."""
    n = len(loads)
    per = n // g
    labels = np.full(n, -1, dtype=np.int64)
    for cluster in range(g):
        free = np.nonzero(labels < 0)[0]
        seed = int(free[np.argmax(loads[free])])
        labels[seed] = cluster
        load = int(loads[seed])
        pull = sim[seed].astype(np.int64).copy()
        for _ in range(per - 1):
            free = np.nonzero(labels < 0)[0]
            fits = free[load + loads[free] <= cap]
            if fits.size == 0:
                return None
            pick = int(fits[np.argmax(pull[fits])])
            labels[pick] = cluster
            load += int(loads[pick])
            pull += sim[pick]
        if load > cap:
            return None
    return labels


def cpsat_clusters(sim: np.ndarray, loads: np.ndarray, hint: np.ndarray, cap: int,
                   runner: Runner, det: float) -> np.ndarray | None:
    """The quadratic clustering model in CP-SAT (None when too big or no solution in time)."""
    n, g = len(loads), int(hint.max()) + 1
    pairs = [(e, f) for e in range(n) for f in range(e + 1, n) if sim[e, f] > 0]
    booleans = (len(pairs) + n) * g
    if booleans > _CLUSTER_LIMIT:
        return None
    det = runner.det_for(booleans, det)
    if det < 0.05:  # too short to move past the hint: not worth building the model
        return None
    model = cp_model.CpModel()
    x, _ = balanced_assignment(model, loads, g, hint, cap)
    # Clusters are interchangeable: value precedence in expert order breaks that symmetry
    # (the hint is relabelled to follow it).
    for d in range(1, g):
        for e in range(n):
            model.add(x[e][d] <= sum(x[p][d - 1] for p in range(e)))
    terms = []
    for e, f in pairs:
        for d in range(g):
            s = model.new_bool_var("")
            model.add_implication(s, x[e][d])
            model.add_implication(s, x[f][d])
            model.add_hint(s, bool(hint[e] == d and hint[f] == d))
            terms.append(int(sim[e, f]) * s)
    model.maximize(sum(terms))
    solver, status = runner.run(model, det, booleans)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return read_assignment(solver, x)


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters in the order of their first expert (value precedence)."""
    order: list[int] = []
    for d in labels:
        if int(d) not in order:
            order.append(int(d))
    relabel = np.empty(len(order), dtype=np.int64)
    relabel[order] = np.arange(len(order))
    return relabel[labels]


def layer_clusters(stats: TraceStats, layer: int, g: int, cap: int, witness: np.ndarray,
                   runner: Runner, det: float) -> np.ndarray:
    """Stage 1 for one layer: the best load-capped clustering found (witness if nothing)."""
    sim = similarity(stats, layer)
    loads = stats.loads[layer]
    max_swaps = 4 * len(loads)
    candidates = [swap_search(sim, loads, witness, cap, max_swaps)]
    for start in (greedy_clusters(sim, loads, g, cap), grown_clusters(sim, loads, g, cap)):
        if start is not None:
            candidates.append(swap_search(sim, loads, start, cap, max_swaps))
    best = max(candidates, key=lambda labels: kept(sim, labels))
    exact = cpsat_clusters(sim, loads, canonical_labels(best), cap, runner, det)
    if exact is not None and kept(sim, exact) > kept(sim, best):
        best = exact
    return best

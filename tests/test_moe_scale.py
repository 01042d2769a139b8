"""MoE placement at scale: the local-search baseline, the bound and gap, OPTIMAL proofs,
monotone time limits."""

from __future__ import annotations

import numpy as np

from mapper.passes.moe.baselines import eplb
from mapper.passes.moe.cost import Topology
from mapper.passes.moe.local import local_search, pair_bound
from mapper.passes.moe.metrics import check_placement, device_loads, trace_stats
from mapper.passes.moe.place import (
    PlacementProblem,
    PlaceOptions,
    place_experts,
    weighted_cost,
)
from mapper.passes.moe.synth import SynthSpec, synthesize


def _problem(spec: SynthSpec, g: int, per_node: int, w_inter: int = 10):
    trace = synthesize(spec)
    stats = trace_stats(trace.routes, spec.experts)
    return trace, stats, PlacementProblem(stats, Topology(g, per_node), 10, w_inter)


def test_pair_bound_is_a_lower_bound_on_the_objective_scale():
    rng = np.random.default_rng(0)
    for g, per_node, w_inter in ((4, 4, 10), (8, 4, 90), (4, 2, 40)):
        spec = SynthSpec(layers=5, experts=16, top_k=2, tokens=512, affinity=0.7,
                         seed=int(rng.integers(100)))
        _, stats, problem = _problem(spec, g, per_node, w_inter)
        bound = pair_bound(stats.flows, g, per_node, 10, w_inter)
        weights = problem.weights()
        for _ in range(20):  # random balanced placements are never below it
            placement = np.stack([rng.permutation(np.arange(16) % g) for _ in range(5)])
            assert bound <= weighted_cost(placement, stats, weights)
        result = place_experts(problem, PlaceOptions(time_limit_s=1))
        assert result.bound is not None and 0 <= result.bound <= result.objective
        assert result.gap is not None and 0 <= result.gap <= 1


def test_optimal_with_the_gap_closed_on_a_planted_instance():
    spec = SynthSpec(layers=8, experts=16, top_k=2, tokens=2048, skew=0.3, affinity=0.8,
                     planted_devices=4, seed=2)
    trace, stats, problem = _problem(spec, 4, 4)
    result = place_experts(problem, PlaceOptions(time_limit_s=5))
    planted = weighted_cost(trace.planted, stats, problem.weights())
    assert result.objective <= planted
    assert result.solver_status == "OPTIMAL" and result.gap == 0.0
    assert result.bound == result.objective
    assert "every placement" in result.scope


def test_never_worse_than_the_local_search_baseline():
    for spec, g, per_node, w_inter in (
            (SynthSpec(layers=10, experts=32, top_k=2, tokens=2048, skew=0.5, affinity=0.85,
                       communities=6, seed=3), 4, 4, 10),
            (SynthSpec(layers=8, experts=32, top_k=4, tokens=2048, skew=0.5, affinity=0.8,
                       communities=8, seed=4), 8, 4, 90)):
        _, stats, problem = _problem(spec, g, per_node, w_inter)
        result = place_experts(problem, PlaceOptions(time_limit_s=2))
        check_placement(result.placement, spec.experts, g)
        assert result.baseline is not None and result.baseline_objective is not None
        check_placement(result.baseline, spec.experts, g)
        assert result.baseline_objective == weighted_cost(result.baseline, stats,
                                                          problem.weights())
        assert result.objective <= result.baseline_objective
        assert result.bound is not None and result.bound <= result.objective


def test_local_search_keeps_caps_and_is_deterministic():
    spec = SynthSpec(layers=6, experts=32, top_k=4, tokens=2048, skew=0.8, affinity=0.8,
                     communities=8, seed=5)
    _, stats, problem = _problem(spec, 8, 4, 90)
    witness = eplb(stats.loads, 8)
    caps = np.floor(1.05 * stats.loads.sum(axis=1) / 8).astype(np.int64)
    caps = np.maximum(caps, device_loads(witness, stats, 8).max(axis=1))
    first = local_search(stats, problem.weights(), caps, witness, 4, seed=0)
    second = local_search(stats, problem.weights(), caps, witness, 4, seed=0)
    assert np.array_equal(first, second)
    check_placement(first, 32, 8)
    assert (device_loads(first, stats, 8).max(axis=1) <= caps).all()
    weights = problem.weights()
    assert weighted_cost(first, stats, weights) < weighted_cost(witness, stats, weights)


def test_monotone_at_two_limits_with_baseline_in_the_plan():
    spec = SynthSpec(layers=8, experts=32, top_k=2, tokens=2048, skew=0.5, affinity=0.8,
                     communities=6, seed=6)
    _, _, problem = _problem(spec, 8, 4, 90)
    short, long = (place_experts(problem, PlaceOptions(time_limit_s=limit, seed=0))
                   for limit in (0.5, 2.0))
    assert long.objective <= short.objective <= short.baseline_objective
    assert long.bound == short.bound or long.bound_source == "cp-sat"


def test_two_nodes_reach_the_planted_cost():
    # The node regrouping move: the planted groups' node partition, not only their devices.
    spec = SynthSpec(layers=12, experts=32, top_k=2, tokens=4096, skew=0.5, affinity=0.9,
                     planted_devices=8, seed=0)
    trace, stats, problem = _problem(spec, 8, 4, 90)
    result = place_experts(problem, PlaceOptions(time_limit_s=1))
    assert result.objective <= weighted_cost(trace.planted, stats, problem.weights())


def test_joint_model_proves_a_two_node_instance():
    # Node and within-node symmetry breaking lets CP-SAT close the gap on a small instance.
    spec = SynthSpec(layers=6, experts=8, top_k=2, tokens=1024, affinity=0.8,
                     planted_devices=4, seed=1)
    _, _, problem = _problem(spec, 4, 2, 90)
    result = place_experts(problem, PlaceOptions(time_limit_s=5))
    assert result.method == "joint"
    assert result.solver_status == "OPTIMAL" and result.gap == 0.0
    assert result.bound == result.objective

"""MoE metrics, baselines and cost model against brute-force readings of CONTRACTS.md section 5."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mapper.hwmodels.loader import load_hardware
from mapper.passes.moe.baselines import BASELINES, balanced_packing, contiguous, eplb, round_robin
from mapper.passes.moe.cost import Topology, cost_model, link_weights
from mapper.passes.moe.metrics import check_placement, device_traffic, evaluate, trace_stats


def _brute_force(routes: np.ndarray, placement: np.ndarray, g: int, per_node: int
                 ) -> tuple[float, float, float]:
    """The contract's three metrics, read literally with loops."""
    layers, tokens, k = routes.shape
    ratios = []
    for layer in range(layers):
        loads = [0] * g
        for t in range(tokens):
            for i in range(k):
                loads[placement[layer, routes[layer, t, i]]] += 1
        ratios.append(max(loads) / (sum(loads) / g))
    total = cross_device = cross_node = 0
    for layer in range(layers - 1):
        for t in range(tokens):
            for i, j in itertools.product(range(k), range(k)):
                a = placement[layer, routes[layer, t, i]]
                b = placement[layer + 1, routes[layer + 1, t, j]]
                total += 1
                cross_device += a != b
                cross_node += a // per_node != b // per_node
    return float(np.mean(ratios)), cross_device / total, cross_node / total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_the_contract_definitions(seed):
    rng = np.random.default_rng(seed)
    layers, tokens, k, experts, g, per_node = 4, 37, 3, 8, 4, 2
    routes = np.stack([np.stack([rng.choice(experts, size=k, replace=False)
                                 for _ in range(tokens)]) for _ in range(layers)])
    placement = np.stack([rng.permutation(np.repeat(np.arange(g), experts // g))
                          for _ in range(layers)])
    stats = trace_stats(routes, experts)
    metrics = evaluate(placement, stats, Topology(g, per_node))
    lmm, cdf, cnf = _brute_force(routes, placement, g, per_node)
    assert metrics.load_max_over_mean == pytest.approx(lmm)
    assert metrics.cross_device_fraction == pytest.approx(cdf)
    assert metrics.cross_node_fraction == pytest.approx(cnf)
    assert stats.transitions == (layers - 1) * tokens * k * k
    assert stats.coactivation[0].sum() == tokens * k * (k - 1)


def test_single_layer_trace_has_no_transitions():
    routes = np.array([[[0, 1], [2, 3], [1, 2], [3, 0]]])
    metrics = evaluate(np.array([[0, 0, 1, 1]]), trace_stats(routes, 4), Topology(2, 2))
    assert metrics.cross_device_fraction == 0.0 and metrics.load_max_over_mean == 1.0


def test_baselines_hold_e_over_g_experts_per_device():
    loads = np.random.default_rng(0).integers(1, 100, size=(5, 16))
    for name, build in BASELINES.items():
        placement = build(loads, 4)
        check_placement(placement, 16, 4)
        assert placement.shape == (5, 16), name
    assert contiguous(1, 8, 4).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    assert round_robin(1, 8, 4).tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]


def test_eplb_packs_heaviest_first_onto_the_lightest_open_device():
    placement = balanced_packing(np.array([10, 9, 8, 1]), 2)
    # 10 -> d0; 9 -> d1; 8 -> d1 (9 < 10); 1 -> d0 (d1 full).
    assert placement.tolist() == [0, 1, 1, 0]
    assert eplb(np.array([[10, 9, 8, 1]]), 2).tolist() == [[0, 1, 1, 0]]


def test_check_placement_rejects_uneven_devices():
    with pytest.raises(AssertionError):
        check_placement(np.array([[0, 0, 0, 1]]), 4, 2)


def test_alltoall_counts_the_busiest_link_direction():
    hw = load_hardware("h100")
    topology = Topology(4, 2)
    cost = cost_model(hw, hidden_size=1000, dtype="bf16", element_bytes=2.0,
                      tokens_per_forward=10, trace_tokens=10, expert_flops_per_token=1e6,
                      expert_weight_bytes=1e6, experts_per_device=2)
    traffic = np.zeros((1, 4, 4), dtype=np.int64)
    traffic[0, 0, 1] = 100  # intra-node: 100 tokens x 2000 B
    traffic[0, 0, 2] = 10  # inter-node: 10 tokens x 2000 B
    intra = 100 * 2000 / hw.interconnect.intra_node_bandwidth
    inter = 10 * 2000 / hw.interconnect.inter_node_bandwidth
    assert cost.alltoall_s(traffic, topology) == pytest.approx(max(intra, inter))
    # A trace of 20 tokens priced for a 10-token forward pass halves the bytes.
    halved = cost_model(hw, hidden_size=1000, dtype="bf16", element_bytes=2.0,
                        tokens_per_forward=10, trace_tokens=20, expert_flops_per_token=1e6,
                        expert_weight_bytes=1e6, experts_per_device=2)
    assert halved.alltoall_s(traffic, topology) == pytest.approx(max(intra, inter) / 2)
    # Expert compute waits for the most loaded device.
    loads = np.array([[5, 1, 1, 1]])
    assert cost.expert_s(loads) > cost.expert_s(np.array([[2, 2, 2, 2]]))


def test_link_weights_follow_the_bandwidth_ratio():
    assert link_weights(450e9, 50e9) == (10, 90)
    assert link_weights(100e9, 100e9) == (10, 10)


def test_device_traffic_sums_to_transitions():
    rng = np.random.default_rng(3)
    routes = rng.integers(0, 8, size=(3, 50, 2))
    stats = trace_stats(routes, 8)
    placement = round_robin(3, 8, 4)
    assert device_traffic(placement, stats, 4).sum() == stats.transitions

"""The contract's placement metrics (CONTRACTS.md section 5), computed from trace statistics.

A routing trace is reduced once to its sufficient statistics: per-layer expert loads and the
expert-to-expert transition counts between consecutive layers. Every metric of a placement
is then a few small matrix products, so baselines and solver candidates are cheap to score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mapper.passes.moe.cost import CostModel, Topology


@dataclass(frozen=True, eq=False)
class TraceStats:
    """Loads `[layers, experts]` and transitions `[layers - 1, experts, experts]` of a trace.

    `flows[l, e, f]` counts, over every token, the pairs (i, j) of its k routes with expert
    `e` at layer l and expert `f` at layer l + 1: the contract's transitions.
    `coactivation[l, e, f]` counts the tokens routed to both e and f (e != f) at layer l.
    """

    loads: np.ndarray
    flows: np.ndarray
    coactivation: np.ndarray
    tokens: int
    top_k: int

    @property
    def num_layers(self) -> int:
        """Number of MoE layers."""
        return int(self.loads.shape[0])

    @property
    def num_experts(self) -> int:
        """Experts per layer."""
        return int(self.loads.shape[1])

    @property
    def transitions(self) -> int:
        """Total transitions: (layers - 1) x tokens x k x k."""
        return int(self.flows.sum())


def trace_stats(routes: np.ndarray, num_experts: int) -> TraceStats:
    """Reduce a validated `[layers, tokens, k]` trace to loads and transition counts."""
    layers, tokens, top_k = routes.shape
    routes = routes.astype(np.int64, copy=False)
    loads = np.stack([np.bincount(routes[layer].ravel(), minlength=num_experts)
                      for layer in range(layers)]).astype(np.int64)
    flows = np.zeros((max(layers - 1, 0), num_experts, num_experts), dtype=np.int64)
    for layer in range(layers - 1):
        # Every (i, j) pair of a token's k routes at l and l + 1, as one flat pair index.
        pairs = routes[layer][:, :, None] * num_experts + routes[layer + 1][:, None, :]
        flows[layer] = np.bincount(pairs.ravel(), minlength=num_experts * num_experts
                                   ).reshape(num_experts, num_experts)
    coactivation = np.zeros((layers, num_experts, num_experts), dtype=np.int64)
    if top_k > 1:
        for layer in range(layers):
            pairs = routes[layer][:, :, None] * num_experts + routes[layer][:, None, :]
            counts = np.bincount(pairs.ravel(), minlength=num_experts * num_experts)
            coactivation[layer] = counts.reshape(num_experts, num_experts)
            np.fill_diagonal(coactivation[layer], 0)
    return TraceStats(loads=loads, flows=flows, coactivation=coactivation, tokens=tokens,
                      top_k=top_k)


def one_hot(placement: np.ndarray, num_devices: int) -> np.ndarray:
    """`[layers, experts, devices]` 0/1 of a `[layers, experts]` device placement."""
    return (placement[:, :, None] == np.arange(num_devices)[None, None, :]).astype(np.int64)


def device_loads(placement: np.ndarray, stats: TraceStats, num_devices: int) -> np.ndarray:
    """`[layers, devices]` token-expert assignments each device serves."""
    return (stats.loads[:, None, :] @ one_hot(placement, num_devices))[:, 0, :]


def device_traffic(placement: np.ndarray, stats: TraceStats, num_devices: int) -> np.ndarray:
    """`[layers - 1, devices, devices]` transitions from device d at l to d' at l + 1."""
    hot = one_hot(placement, num_devices)
    # (devices x experts) @ (experts x experts) @ (experts x devices), batched over layers.
    return hot[:-1].transpose(0, 2, 1) @ stats.flows @ hot[1:]


def check_placement(placement: np.ndarray, num_experts: int, num_devices: int) -> None:
    """Raise AssertionError unless every device holds exactly E/G experts of every layer."""
    per = num_experts // num_devices
    if placement.ndim != 2 or placement.shape[1] != num_experts:
        raise AssertionError(f"placement has shape {placement.shape}, expected [L, {num_experts}]")
    if placement.min(initial=0) < 0 or placement.max(initial=0) >= num_devices:
        raise AssertionError("placement names a device out of range")
    counts = np.stack([np.bincount(row, minlength=num_devices) for row in placement])
    if not (counts == per).all():
        raise AssertionError(f"a device does not hold exactly {per} experts of some layer")


def load_max_over_mean(loads: np.ndarray) -> float:
    """Mean over layers of (max device load / mean device load); 1.0 for idle layers."""
    means = loads.mean(axis=1)
    ratios = np.where(means > 0, loads.max(axis=1) / np.where(means > 0, means, 1), 1.0)
    return float(ratios.mean())


@dataclass(frozen=True)
class PlacementMetrics:
    """The contract's metrics of one placement, plus the times of the cost model."""

    load_max_over_mean: float
    cross_device_fraction: float
    cross_node_fraction: float
    alltoall_s: float
    expert_s: float
    cross_device_transitions: int
    cross_node_transitions: int

    def to_dict(self) -> dict[str, Any]:
        """The plan.json form (rounded so plans stay readable and byte-stable)."""
        return {"load_max_over_mean": round(self.load_max_over_mean, 6),
                "cross_device_fraction": round(self.cross_device_fraction, 6),
                "cross_node_fraction": round(self.cross_node_fraction, 6),
                "alltoall_s": float(f"{self.alltoall_s:.6g}"),
                "expert_s": float(f"{self.expert_s:.6g}"),
                "cross_device_transitions": self.cross_device_transitions,
                "cross_node_transitions": self.cross_node_transitions}


def evaluate(placement: np.ndarray, stats: TraceStats, topology: Topology,
             cost: CostModel | None = None) -> PlacementMetrics:
    """Score a `[layers, experts]` placement on a trace (CONTRACTS.md section 5 definitions)."""
    g = topology.num_devices
    loads = device_loads(placement, stats, g)
    traffic = device_traffic(placement, stats, g)
    total = stats.transitions
    same_device = np.eye(g, dtype=bool)
    nodes = topology.node_of()
    same_node = nodes[:, None] == nodes[None, :]
    summed = traffic.sum(axis=0) if traffic.size else np.zeros((g, g), dtype=np.int64)
    cross_device = int(summed[~same_device].sum())
    cross_node = int(summed[~same_node].sum())
    return PlacementMetrics(
        load_max_over_mean=load_max_over_mean(loads),
        cross_device_fraction=cross_device / total if total else 0.0,
        cross_node_fraction=cross_node / total if total else 0.0,
        alltoall_s=cost.alltoall_s(traffic, topology) if cost else 0.0,
        expert_s=cost.expert_s(loads) if cost else 0.0,
        cross_device_transitions=cross_device,
        cross_node_transitions=cross_node)

"""Solve a placement for a trace and write the contract's `moe` object (CONTRACTS.md section 5).

Shared by the compile pass and `mapper moe place`: trace statistics, link weights from the
hardware, the CP-SAT search, the metrics of the placement and of the three baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mapper.hwmodels.schema import Hardware
from mapper.passes.moe.baselines import BASELINES
from mapper.passes.moe.cost import CostModel, Topology, link_weights
from mapper.passes.moe.metrics import (
    TraceStats,
    device_loads,
    device_traffic,
    evaluate,
    trace_stats,
)
from mapper.passes.moe.place import PlacementProblem, PlacementResult, PlaceOptions, place_experts
from mapper.passes.moe.trace import RoutingTrace


@dataclass(frozen=True, eq=False)
class Placed:
    """A solved placement with its section, ready for plan.json or `moe place -o`."""

    section: dict[str, Any]
    result: PlacementResult
    stats: TraceStats


def solve_section(trace: RoutingTrace, *, num_devices: int, devices_per_node: int,
                  hardware: Hardware, cost: CostModel, layer_names: Sequence[str],
                  options: PlaceOptions) -> Placed:
    """Place the experts of `trace` on `num_devices` and describe it as the `moe` object."""
    stats = trace_stats(trace.routes, trace.num_experts)
    topology = Topology(num_devices=num_devices, devices_per_node=devices_per_node)
    link = hardware.interconnect
    w_intra, w_inter = link_weights(link.intra_node_bandwidth, link.inter_node_bandwidth)
    problem = PlacementProblem(stats=stats, topology=topology, w_intra=w_intra, w_inter=w_inter)
    result = place_experts(problem, options)
    metrics = evaluate(result.placement, stats, topology, cost).to_dict()
    metrics["baselines"] = {
        name: evaluate(build(stats.loads, num_devices), stats, topology, cost).to_dict()
        for name, build in BASELINES.items()}
    if result.baseline is not None:
        # The chain-aware construction + swap local search the pass starts from (local.py).
        metrics["baselines"]["local_search"] = {
            **evaluate(result.baseline, stats, topology, cost).to_dict(),
            "objective": result.baseline_objective}
    loads = device_loads(result.placement, stats, num_devices)
    traffic = device_traffic(result.placement, stats, num_devices)
    metrics["device_traffic"] = (traffic.sum(axis=0) if traffic.size else
                                 np.zeros((num_devices, num_devices), dtype=np.int64)).tolist()
    metrics["transitions"] = stats.transitions
    section: dict[str, Any] = {
        "num_devices": num_devices,
        "devices_per_node": devices_per_node,
        "num_experts": trace.num_experts,
        "top_k": trace.top_k,
        "layers": [{"name": name, "placement": [int(d) for d in row],
                    "device_loads": [int(v) for v in load]}
                   for name, row, load in zip(layer_names, result.placement, loads, strict=True)],
        "metrics": metrics,
        "trace": {"source": trace.source, "tokens": trace.tokens, "layers": trace.num_layers},
        "solver": {"method": result.method, "balance": result.balance,
                   "objective": result.objective, "bound": result.bound,
                   "gap": None if result.gap is None else round(result.gap, 6),
                   "bound_source": result.bound_source,
                   "status": result.solver_status, "scope": result.scope,
                   "rungs": result.rungs, "link_weights": [w_intra, w_inter],
                   "stages": [{"stage": name, "objective": value}
                              for name, value in result.stages],
                   "notes": list(result.notes)},
    }
    return Placed(section=section, result=result, stats=stats)

"""Baseline expert placements the solver is measured against (all hold E/G experts per device).

- contiguous: experts [0, E/G) on device 0, the next E/G on device 1, ... (Megatron-LM and
  DeepSpeed expert parallelism).
- round_robin: expert e on device e mod G (vLLM's expert-parallel default).
- eplb: DeepSeek EPLB's `balanced_packing` per layer, by load only: experts in descending load
  order, each onto the least-loaded device that still has a free slot (no replication, so the
  contract's "exactly E/G experts per device" holds).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def contiguous(num_layers: int, num_experts: int, num_devices: int) -> np.ndarray:
    """Blocks of E/G consecutive experts per device, the same for every layer."""
    per = num_experts // num_devices
    return np.tile(np.arange(num_experts) // per, (num_layers, 1))


def round_robin(num_layers: int, num_experts: int, num_devices: int) -> np.ndarray:
    """Expert e on device e mod G, every layer."""
    return np.tile(np.arange(num_experts) % num_devices, (num_layers, 1))


def balanced_packing(weights: np.ndarray, num_devices: int) -> np.ndarray:
    """EPLB's greedy packing of one layer: heaviest first onto the lightest non-full device.

    Ties go to the lower expert index and the lower device index, so it is deterministic.
    """
    num_experts = len(weights)
    per = num_experts // num_devices
    order = sorted(range(num_experts), key=lambda e: (-int(weights[e]), e))
    loads = [0] * num_devices
    counts = [0] * num_devices
    placement = np.zeros(num_experts, dtype=np.int64)
    for expert in order:
        device = min((d for d in range(num_devices) if counts[d] < per),
                     key=lambda d: (loads[d], d))
        placement[expert] = device
        loads[device] += int(weights[expert])
        counts[device] += 1
    return placement


def eplb(loads: np.ndarray, num_devices: int) -> np.ndarray:
    """EPLB balanced packing of every layer from its `[layers, experts]` loads."""
    return np.stack([balanced_packing(row, num_devices) for row in loads])


BASELINES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "contiguous": lambda loads, g: contiguous(loads.shape[0], loads.shape[1], g),
    "round_robin": lambda loads, g: round_robin(loads.shape[0], loads.shape[1], g),
    "eplb": eplb,
}

"""Cost model of an expert placement: all-to-all token transfers and expert compute time.

All-to-all: every cross-device transition of the trace moves one token's hidden state
(`hidden_size x dtype bytes`) from the device of its expert at layer l to the device of its
expert at layer l + 1. Per layer pair, each device sends and receives concurrently on its
intra-node links (NVLink class) and its inter-node link (NIC); the layer's transfer takes as
long as the busiest device direction on the slower of the two fabrics it uses:
`max_d max(send/recv intra bytes / intra bandwidth, send/recv inter bytes / inter bandwidth)`.
Layer times add up (the layers run one after another). The trace's counts are scaled from
its token count to the tokens of one forward pass.

Expert compute: a device runs its experts of a layer on the token-expert assignments it
receives, at the roofline: `max(FLOPs / peak, (expert weights + token activations) / memory
bandwidth)`; the layer waits for its slowest device (the straggler), and layers add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mapper.costs import peak_for
from mapper.hwmodels.schema import Hardware


@dataclass(frozen=True)
class Topology:
    """G devices, `devices_per_node` of them per node (node = device // devices_per_node)."""

    num_devices: int
    devices_per_node: int

    @property
    def num_nodes(self) -> int:
        """Nodes spanned by the devices (the last may be partly used)."""
        return -(-self.num_devices // self.devices_per_node)

    def node_of(self) -> np.ndarray:
        """Node index of every device."""
        return np.arange(self.num_devices) // self.devices_per_node


@dataclass(frozen=True)
class CostModel:
    """What a token and an expert cost on one device class and its interconnect."""

    token_bytes: float  # hidden size x bytes per element of the hidden state
    scale: float  # tokens of one forward pass / tokens in the trace
    intra_node_bandwidth: float  # bytes/s per device, one direction
    inter_node_bandwidth: float  # bytes/s per device, one direction
    expert_flops_per_token: float  # FLOPs of one expert on one token
    expert_weight_bytes: float  # bytes of one expert's weights
    experts_per_device: int
    peak_flops: float  # matrix peak for the expert dtype
    memory_bandwidth: float  # main-memory bytes/s

    def alltoall_s(self, traffic: np.ndarray, topology: Topology) -> float:
        """Seconds of the per-forward token transfers; `traffic` is `[L - 1, G, G]` counts."""
        return float(self.alltoall_per_layer(traffic, topology).sum())

    def alltoall_per_layer(self, traffic: np.ndarray, topology: Topology) -> np.ndarray:
        """Seconds of each layer pair's transfers (`[L - 1]`)."""
        if traffic.size == 0:
            return np.zeros(0)
        nodes = topology.node_of()
        g = traffic.shape[1]
        same_node = nodes[:, None] == nodes[None, :]
        intra = same_node & ~np.eye(g, dtype=bool)
        data = traffic.astype(np.float64) * self.scale * self.token_bytes
        times = []
        for layer in data:
            intra_bytes = np.where(intra, layer, 0.0)
            inter_bytes = np.where(~same_node, layer, 0.0)
            busiest_intra = max(intra_bytes.sum(axis=1).max(), intra_bytes.sum(axis=0).max())
            busiest_inter = max(inter_bytes.sum(axis=1).max(), inter_bytes.sum(axis=0).max())
            times.append(max(busiest_intra / self.intra_node_bandwidth,
                             busiest_inter / self.inter_node_bandwidth))
        return np.asarray(times)

    def expert_s(self, loads: np.ndarray) -> float:
        """Seconds of expert compute per forward, straggler device per layer; loads `[L, G]`."""
        if loads.size == 0:
            return 0.0
        tokens = loads.astype(np.float64) * self.scale
        compute = tokens * self.expert_flops_per_token / self.peak_flops
        moved = (self.experts_per_device * self.expert_weight_bytes
                 + 2.0 * tokens * self.token_bytes)
        per_device = np.maximum(compute, moved / self.memory_bandwidth)
        return float(per_device.max(axis=1).sum())


def cost_model(hardware: Hardware, *, hidden_size: int, dtype: str, element_bytes: float,
               tokens_per_forward: int, trace_tokens: int, expert_flops_per_token: float,
               expert_weight_bytes: float, experts_per_device: int) -> CostModel:
    """The cost model of `hardware` for experts of the given size and dtype."""
    _, main = hardware.main_memory
    peak, _ = peak_for(hardware, dtype, matrix=True)
    link = hardware.interconnect
    return CostModel(
        token_bytes=hidden_size * element_bytes,
        scale=tokens_per_forward / trace_tokens if trace_tokens else 1.0,
        intra_node_bandwidth=link.intra_node_bandwidth,
        inter_node_bandwidth=link.inter_node_bandwidth,
        expert_flops_per_token=expert_flops_per_token,
        expert_weight_bytes=expert_weight_bytes,
        experts_per_device=experts_per_device,
        peak_flops=peak, memory_bandwidth=main.bandwidth)


def link_weights(intra_node_bandwidth: float, inter_node_bandwidth: float) -> tuple[int, int]:
    """Integer solver weights of one intra-node and one inter-node transfer (time ratio).

    A transfer costs its bytes over the link's bandwidth; only the ratio matters to the
    placement, so the intra-node weight is fixed at 10 and the inter-node one scaled by it.
    """
    ratio = intra_node_bandwidth / inter_node_bandwidth
    return 10, max(10, round(10 * ratio))

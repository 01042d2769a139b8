"""Which groups to prune: a saliency per group, and how the sparsity is spread over layers.

Saliency of group S of row n (the output error its removal costs):
- `obs`: the optimal-brain-surgeon error w_Sᵀ [(H⁻¹)_SS]⁻¹ w_S with the other weights of the
  row free to compensate (H = XᵀX of the layer's inputs, damped as GPTQ damps it);
- `wanda`: Σ_S |w|·‖x‖ (Wanda's weight-times-activation-norm), cheap and Hessian-free.

Allocation of a total sparsity s:
- `uniform`: every layer prunes s of its groups;
- `global`: each layer picks its own share, within MAX_DEVIATION of s, so that the pruned
  groups add up to s of all groups, minimizing the summed relative output error (each
  layer's error curve is the running sum of its sorted saliencies over its output energy);
  see `allocate` for why the cheapest groups overall are the exact optimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mapper.passes.gqsa.bqpo import DAMPING

# No layer prunes more than this share of its groups under the global allocation.
MAX_SHARE = 0.9
# ... nor strays further than this from the target sparsity, as OWL (Yin et al., 2024)
# bounds its layerwise sparsities. The per-layer objective does not see what a layer's
# error does downstream: unbounded, it pruned SmolLM2-135M's down_proj at 67% on average
# for a 25% target, and the model collapsed (perplexity 3.1e5 from stage 1).
MAX_DEVIATION = 0.1


def group_saliency(weight: np.ndarray, hessian: np.ndarray, group_size: int, method: str
                   ) -> np.ndarray:
    """[rows, groups] saliency of every group of `weight` [rows, cols]."""
    rows, cols = weight.shape
    groups = -(-cols // group_size)
    w = weight.astype(np.float64)
    if method == "wanda":
        norms = np.sqrt(np.maximum(np.diag(hessian), 0.0))
        score = np.abs(w) * norms[None, :]
        padded = np.zeros((rows, groups * group_size))
        padded[:, :cols] = score
        return padded.reshape(rows, groups, group_size).sum(axis=2)
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMPING * float(np.mean(np.diag(h)))
    inverse = np.linalg.inv(h)
    out = np.zeros((rows, groups))
    for group in range(groups):
        cols_of = slice(group * group_size, min((group + 1) * group_size, cols))
        block = np.linalg.inv(inverse[cols_of, cols_of])
        part = w[:, cols_of]
        out[:, group] = np.einsum("ns,st,nt->n", part, block, part)
    return out


def prune_lowest(saliency: np.ndarray, share: float) -> np.ndarray:
    """bool [rows, groups]: the `share` of groups with the lowest saliency (ties by index)."""
    count = round(share * saliency.size)
    mask = np.zeros(saliency.size, dtype=bool)
    if count:
        order = np.argsort(saliency.ravel(), kind="stable")
        mask[order[:count]] = True
    return mask.reshape(saliency.shape)


@dataclass(frozen=True)
class Allocation:
    """Per-layer pruned groups (masks) and the shares they make."""

    masks: tuple[np.ndarray, ...]
    method: str

    @property
    def shares(self) -> tuple[float, ...]:
        """Each layer's share of pruned groups."""
        return tuple(float(mask.mean()) if mask.size else 0.0 for mask in self.masks)


def allocate(saliencies: Sequence[np.ndarray], energies: Sequence[float], sparsity: float,
             method: str) -> Allocation:
    """Masks pruning `sparsity` of all groups: the same share in every layer (`uniform`), or
    (`global`) the groups of least relative saliency (saliency over the layer's output
    energy) across all layers, every layer's share within MAX_DEVIATION of the target and
    at most MAX_SHARE. The global objective is separable and every layer's cost grows with
    each group it prunes, so each layer's floor of cheapest groups, then the cheapest groups
    overall within the per-layer caps, is the exact optimum of the knapsack over the
    layers' error curves under those bounds."""
    if method == "uniform" or sparsity == 0:
        return Allocation(tuple(prune_lowest(s, sparsity) for s in saliencies), "uniform")
    costs = [s.ravel() / max(e, 1e-30) for s, e in zip(saliencies, energies, strict=True)]
    caps = [int(min(MAX_SHARE, sparsity + MAX_DEVIATION) * c.size) for c in costs]
    floors = [min(cap, int(max(0.0, sparsity - MAX_DEVIATION) * c.size))
              for c, cap in zip(costs, caps, strict=True)]
    need = round(sparsity * sum(c.size for c in costs))
    flat = [np.zeros(c.size, dtype=bool) for c in costs]
    # Every layer first takes its floor of cheapest groups; the rest go cheapest overall.
    for layer, (cost, floor) in enumerate(zip(costs, floors, strict=True)):
        flat[layer][np.argsort(cost, kind="stable")[:floor]] = True
    taken = list(floors)
    need -= sum(floors)
    layer_of = np.concatenate([np.full(c.size, i) for i, c in enumerate(costs)])
    index_of = np.concatenate([np.arange(c.size) for c in costs])
    order = np.argsort(np.concatenate(costs), kind="stable")
    for item in order:
        if need <= 0:
            break
        layer = int(layer_of[item])
        if taken[layer] < caps[layer] and not flat[layer][index_of[item]]:
            flat[layer][index_of[item]] = True
            taken[layer] += 1
            need -= 1
    return Allocation(tuple(f.reshape(s.shape) for f, s in zip(flat, saliencies, strict=True)),
                      "global")

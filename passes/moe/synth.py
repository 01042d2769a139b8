"""Seeded synthetic routing traces: skewed expert popularity and tunable inter-layer affinity.

Latent-community model of expert specialization (tokens of one kind keep meeting the same
group of experts layer after layer, MoETuner's "token routing dependency"): at every layer
the experts are split into communities; a token belongs to one community, keeps it from
one layer to the next with probability `affinity` and otherwise draws a new one by
community popularity (both as exact shares of the tokens, so community sizes carry no
sampling noise), and at each layer draws its k distinct experts within its community by
expert popularity (outside it only when the community has fewer than k experts).
Expert popularity is Zipf with exponent `skew` over a random permutation (0: uniform).

Without a planted placement, community sizes are random, so no placement keeps every token
on its device. With `planted_devices=G`, the communities are the device groups of a planted
placement (popularity packed evenly, device labels shuffled per layer) and every community
gets the same share of the tokens, so the planted placement is exactly balanced, and
the planted placement's metrics are what a solver should reach. Sampling k distinct experts
by weight uses the Gumbel-top-k trick (one vectorized draw per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from mapper.errors import UserError
from mapper.passes.moe.baselines import balanced_packing

# Weight outside a successor set: only drawn when the set has fewer than k experts.
_OUTSIDE = 1e-12


@dataclass(frozen=True)
class SynthSpec:
    """Shape and statistics of a synthetic trace."""

    layers: int
    experts: int
    top_k: int
    tokens: int
    skew: float = 0.5
    affinity: float = 0.8
    communities: int | None = None
    planted_devices: int | None = None
    seed: int = 0

    def check(self) -> None:
        """Raise UserError naming the first impossible setting."""
        if min(self.layers, self.experts, self.top_k, self.tokens) < 1:
            raise UserError("synth: --layers, --experts, --top-k and --tokens must be >= 1")
        if self.top_k > self.experts:
            raise UserError(f"synth: --top-k {self.top_k} exceeds --experts {self.experts}")
        if not 0.0 <= self.affinity <= 1.0:
            raise UserError(f"synth: --affinity must be in [0, 1], got {self.affinity}")
        if self.skew < 0:
            raise UserError(f"synth: --skew must be >= 0, got {self.skew}")
        if self.communities is not None and not 1 <= self.communities <= self.experts:
            raise UserError(f"synth: --communities must be in [1, {self.experts}], got "
                            f"{self.communities}")
        g = self.planted_devices
        if g is not None and (g < 1 or self.experts % g):
            raise UserError(f"synth: --planted-devices {g} must divide --experts {self.experts}")


@dataclass(frozen=True, eq=False)
class SynthTrace:
    """A generated `[layers, tokens, k]` trace and, when planted, its planted placement."""

    routes: np.ndarray
    num_experts: int
    planted: np.ndarray | None


def _popularity(rng: np.random.Generator, experts: int, skew: float) -> np.ndarray:
    ranks = rng.permutation(experts)
    weights = 1.0 / (ranks + 1.0) ** skew
    return weights / weights.sum()


def _draw(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """k distinct columns per row, drawn without replacement by row weights (Gumbel-top-k)."""
    keys = np.log(weights) + rng.gumbel(size=weights.shape)
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    # Order each row's picks by key, so column 0 is the first draw (the primary expert).
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def _planted(rng: np.random.Generator, popularity: np.ndarray, devices: int) -> np.ndarray:
    """A balanced planted placement: EPLB packing of the popularity improved by swaps between
    the heaviest and the lightest device, device labels shuffled."""
    weights = np.round(popularity * 1e9).astype(np.int64)
    packed = balanced_packing(weights, devices)
    for _ in range(4 * len(weights)):
        mass = np.bincount(packed, weights=weights, minlength=devices)
        heavy, light = int(np.argmax(mass)), int(np.argmin(mass))
        gap = mass[heavy] - mass[light]
        a, b = np.nonzero(packed == heavy)[0], np.nonzero(packed == light)[0]
        moved = weights[a][:, None] - weights[b][None, :]  # mass moved heavy -> light
        # A swap helps when it narrows the gap between the two: 0 < moved < gap.
        score = np.where((moved > 0) & (moved < gap), np.abs(gap - 2 * moved), gap + 1)
        i, j = np.unravel_index(int(np.argmin(score)), score.shape)
        if score[i, j] > gap:
            break
        packed[a[i]], packed[b[j]] = light, heavy
    return rng.permutation(devices)[packed]


def _shares(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer shares of `total` proportional to `weights` (largest remainder)."""
    exact = weights / weights.sum() * total
    shares = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[:total - int(shares.sum())]] += 1
    return shares


def _communities(rng: np.random.Generator, experts: int, count: int, least: int
                 ) -> np.ndarray:
    """Random community of every expert: `count` parts of random sizes, each >= `least`."""
    least = min(least, experts // count)
    extra = np.bincount(rng.integers(0, count, size=experts - least * count), minlength=count)
    labels = np.repeat(np.arange(count), least + extra)
    return labels[rng.permutation(experts)]


def synthesize(spec: SynthSpec) -> SynthTrace:
    """Generate the trace described by `spec` (same spec, same arrays)."""
    spec.check()
    rng = np.random.default_rng(spec.seed)
    e, k, tokens = spec.experts, spec.top_k, spec.tokens
    popularity = np.stack([_popularity(rng, e, spec.skew) for _ in range(spec.layers)])
    planted = None
    if spec.planted_devices is not None:
        planted = np.stack([_planted(rng, popularity[layer], spec.planted_devices)
                            for layer in range(spec.layers)])
        membership = planted
        count = spec.planted_devices
    else:
        count = spec.communities or max(1, e // 4)
        membership = np.stack([_communities(rng, e, count, k) for _ in range(spec.layers)])
    routes = np.zeros((spec.layers, tokens, k), dtype=np.int64)
    community = np.zeros(tokens, dtype=np.int64)
    for layer in range(spec.layers):
        mass = np.bincount(membership[layer], weights=popularity[layer], minlength=count)
        if planted is not None:
            # Equal token shares per planted device: the planted placement is exactly
            # balanced whatever the popularity skew inside each device's group.
            mass = np.ones(count)
        # Stratified draws (exact shares instead of independent coin flips), so community
        # sizes follow their popularity without sampling noise piling up over layers.
        keeps = np.zeros(tokens, dtype=bool)
        if layer:
            for label in range(count):
                members = np.nonzero(community == label)[0]
                stay = round(spec.affinity * len(members))
                keeps[rng.choice(members, size=stay, replace=False)] = True
        moving = np.nonzero(~keeps)[0]
        fresh = np.repeat(np.arange(count), _shares(mass, len(moving)))
        community[rng.permutation(moving)] = fresh
        inside = membership[layer][None, :] == community[:, None]
        weights = np.where(inside, 1.0, _OUTSIDE) * popularity[layer][None, :]
        routes[layer] = _draw(rng, weights, k)
    return SynthTrace(routes=routes, num_experts=e, planted=planted)


def save_trace(trace: SynthTrace, path: str | BinaryIO, tokens_first: bool = False) -> None:
    """Write `routes` (and `num_experts`, and `planted` when present) as an .npz."""
    arrays: dict[str, np.ndarray] = {
        "routes": trace.routes.transpose(1, 0, 2) if tokens_first else trace.routes,
        "num_experts": np.asarray(trace.num_experts, dtype=np.int64)}
    if trace.planted is not None:
        arrays["planted"] = trace.planted
    if isinstance(path, str):
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    else:
        np.savez_compressed(path, **arrays)

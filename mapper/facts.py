"""Typed facts passes hand to later passes (plan.json is for users; this is for passes).

A pass returns the facts it establishes on its `PassResult`; the pass manager merges them
into the context of every later pass. A fact that depends on a schedule carries it, so a
reader can tell when a later pass has reordered the graph under it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType


@dataclass(frozen=True)
class KernelTimes:
    """Modeled time of each tiled GEMM-shaped node (tiling)."""

    seconds: Mapping[str, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", MappingProxyType(dict(self.seconds)))


@dataclass(frozen=True)
class OffchipTraffic:
    """Off-chip bytes of each step of `order` under the memory plan, and their total."""

    order: tuple[str, ...]
    per_step: tuple[int, ...]
    total: int
    onchip_level: str

    def for_order(self, order: tuple[str, ...]) -> tuple[int, ...] | None:
        """The per-step bytes when the plan was made for exactly `order`, else None."""
        return self.per_step if order == self.order else None


@dataclass(frozen=True)
class AllToAll:
    """Per-forward token transfer time between consecutive MoE layers (moe)."""

    seconds: float


@dataclass(frozen=True)
class ArenaSize:
    """Bytes of the activation arena (arena)."""

    bytes: int


@dataclass(frozen=True)
class CompressedWeight:
    """One weight a compression pass rewrote: its name in the new model and its error."""

    name: str
    method: str
    rel_error: float


@dataclass(frozen=True)
class CompressionFacts:
    """What a compression pass did: the weights it rewrote and the measured quality."""

    method: str
    weights: tuple[CompressedWeight, ...]
    quality_metric: str
    quality: float


@dataclass(frozen=True)
class Facts:
    """Everything earlier passes established; None where no pass has said it."""

    kernels: KernelTimes | None = None
    traffic: OffchipTraffic | None = None
    alltoall: AllToAll | None = None
    arena: ArenaSize | None = None
    compression: CompressionFacts | None = None
    # Which pass established each fact (for messages, and to keep writers unique).
    sources: Mapping[str, str] = field(default_factory=dict)

    def given(self) -> tuple[str, ...]:
        """Names of the facts this object sets."""
        return tuple(f.name for f in fields(self)
                     if f.name != "sources" and getattr(self, f.name) is not None)

    def merged(self, newer: Facts, by: str) -> Facts:
        """These facts with every fact `newer` sets replaced by it, recorded as from `by`."""
        update = {name: getattr(newer, name) for name in newer.given()}
        sources = {**self.sources, **dict.fromkeys(update, by)}
        return replace(self, **update, sources=sources)

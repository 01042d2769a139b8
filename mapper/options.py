"""Typed options of a compile: the same objects for the CLI and the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Precision = Literal["model", "fp32", "tf32", "fp16", "bf16", "fp8", "int8"]


class EstimateConfig(BaseModel):
    """Configuration of the estimate pass (per-op roofline latency)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    precision: Precision = Field(
        "model", description="dtype the matrix ops are assumed to run in; 'model' uses the "
        "graph's own dtypes (what-if: fp16 deployment of an fp32 export)")


class TilingConfig(BaseModel):
    """Configuration of the tiling pass (kernel tile sizes per GEMM-shaped operator)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    precision: Precision | None = Field(
        None, description="dtype the GEMMs are tiled in; None follows estimate.precision "
        "('model': each node's own dtype)")
    max_split_k: int = Field(16, ge=1, le=16, description="largest split-K factor the GPU "
                             "search may use (1 disables split-K)")
    persistent: bool = Field(True, description="let the GPU search use persistent kernels")
    triton_only: bool = Field(
        False, description="only configs Triton's tutorial matmul kernel runs as they are "
        "(no split-K, not persistent)")
    dtype_fallback: bool = Field(
        True, description="tile a dtype the hardware lacks in the nearest one it has "
        "(recorded per kernel); False: fail with exit 3 instead")
    problem_time_limit_s: float = Field(
        5.0, gt=0, description="wall-clock cap of one problem's CP-SAT solve; the pass as a "
        "whole stays within time_limit_s")
    problem_deterministic_s: float = Field(
        5.0, gt=0, description="CP-SAT deterministic-time limit of one problem's solve (what "
        "keeps plans reproducible; the wall-clock cap only guards against slow machines)")


class MemoryConfig(BaseModel):
    """Configuration of the memory pass (scratchpad schedule, allocation and replacement)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: Literal["offchip", "peak"] = Field(
        "offchip", description="'offchip': minimize off-chip bytes (COSMA); 'peak': the same "
        "traffic, then the lowest scratchpad footprint for it")
    alignment: int = Field(64, ge=1, description="byte alignment of every scratchpad offset")
    window: int = Field(
        1000, ge=10, description="graphs with more steps than this are planned window by "
        "window (divide and conquer) instead of in one CP-SAT model")
    lookahead: int = Field(50, ge=0, description="steps past a window its model also sees")
    search_order: bool = Field(
        True, description="search other operator orders and keep one only if it moves "
        "strictly fewer off-chip bytes")
    order_evaluations: int = Field(
        24, ge=0, description="most candidate orders the order search plans in full")
    relative_gap: float = Field(
        1e-4, ge=0, le=1, description="stop a solve once proven this close to optimal "
        "(relative to the compulsory bytes)")
    span_limit: int = Field(
        32, ge=1, description="a tensor read many times gets candidate residencies spanning "
        "at most this many consecutive uses (plus the one to its last use); optimality is "
        "proven over these candidates, so it is exact for tensors read at most this + 1 times")


class MoeConfig(BaseModel):
    """Configuration of the moe pass (expert placement across devices from routing traces)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: int | None = Field(
        None, ge=1, description="devices to place the experts on (--devices); the pass runs "
        "only for MoE models and N > 1")
    devices_per_node: int | None = Field(
        None, ge=1, description="devices per node (--devices-per-node); default: the "
        "hardware's interconnect.devices_per_node")
    trace: Path | None = Field(
        None, description="routing trace .npz (--trace) with routes[layers, tokens, k]; "
        "default: collect one in onnxruntime on --calib inputs or generated token ids")
    trace_layout: Literal["layers-first", "tokens-first"] = Field(
        "layers-first", description="'tokens-first': the trace is routes[tokens, layers, k], "
        "as serving engines return it")
    samples: int = Field(16, ge=1, description="generated inputs run to collect a trace when "
                         "neither a trace nor --calib is given")
    load_tolerance: float = Field(
        0.05, ge=0, description="a device's token load may reach (1 + this) x the mean when "
        "that buys min_gain less traffic; otherwise balance stays at EPLB's level")
    min_gain: float = Field(
        0.05, ge=0, lt=1, description="share of weighted token transfers that relaxing the "
        "load balance must save to be kept")
    method: Literal["auto", "joint", "staged"] = Field(
        "auto", description="'joint': one CP-SAT model over all layers; 'staged': MoETuner's "
        "two stages plus layer-wise refinement; 'auto': joint when small enough")


class ArenaConfig(BaseModel):
    """Configuration of the arena pass (device-memory offsets for all activations)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["auto", "search", "cp-sat", "greedy"] = Field(
        "auto", description="'auto': greedy-by-size, then the MiniMalloc-class search, then "
        "CP-SAT NoOverlap2D if the search stalls; or one of them alone")
    time_limit_s: float | None = Field(
        None, gt=0, description="budget of the arena pass, seconds; None: the compile's "
        "time_limit_s")


class CompileOptions(BaseModel):
    """Everything `mapper compile` takes besides the model, hardware and output directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_shapes: dict[str, tuple[int, ...]] = Field(
        default_factory=dict, description="static shapes for graph inputs with dynamic dims")
    dims: dict[str, int] = Field(default_factory=dict,
                                 description="values for named dynamic dims (dim_param)")
    hardware_overrides: tuple[str, ...] = Field(
        (), description="PATH=VALUE overrides of hardware fields, applied in order")
    scratchpad: int | None = Field(
        None, gt=0, description="bytes of the managed on-chip level for the memory pass")
    passes: tuple[str, ...] | None = Field(
        None, description="run only these passes (pipeline order is kept)")
    skip: tuple[str, ...] = Field((), description="passes not to run")
    compress: Literal["gqsa", "lqlora"] | None = Field(
        None, description="the lossy compression pass to opt into")
    calib: Path | None = Field(
        None, description="calibration inputs (.npz, one array per input, samples first); "
        "also feed the run that measures shapes ONNX inference cannot know")
    seed: int = Field(0, ge=0, description="seed of every solver and random choice")
    time_limit_s: float = Field(30.0, gt=0, description="solver budget per pass, seconds")
    estimate: EstimateConfig = Field(default_factory=EstimateConfig,
                                     description="estimate pass settings")
    moe: MoeConfig = Field(default_factory=MoeConfig, description="moe pass settings")
    memory: MemoryConfig = Field(default_factory=MemoryConfig,
                                 description="memory pass settings")
    tiling: TilingConfig = Field(default_factory=TilingConfig,
                                 description="tiling pass settings")
    arena: ArenaConfig = Field(default_factory=ArenaConfig, description="arena pass settings")

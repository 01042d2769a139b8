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

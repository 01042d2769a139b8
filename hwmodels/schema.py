"""Typed, frozen hardware model: human units in YAML, plain SI numbers in the object.

Sizes are bytes, bandwidths bytes/s, peaks ops/s, times seconds, clocks Hz. The YAML keys
are the field aliases (`schema`, `clock`, `op_overhead`); `to_plan_dict` writes them back
under the same keys, so a plan's `hardware` block is itself a loadable hardware file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from mapper.errors import UserError
from mapper.units import parse_frequency, parse_rate, parse_size, parse_throughput, parse_time

SCHEMA_VERSION = "mapper.hw/1"
_PLAIN_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")

DType = Literal["fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int16", "int8", "int4", "fp4"]
DTYPES: tuple[str, ...] = get_args(DType)

Kind = Literal["gpu", "tpu", "accelerator", "npu", "cpu"]
Scope = Literal["unit", "device"]


def _parsed(parser: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a mapper.units parser so its UserError becomes a pydantic error with a path."""

    def parse(value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value  # let the field's own type report it ("should be a number")
        if isinstance(value, str) and _PLAIN_NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads `1.5e9` as a string; it is a plain number
        try:
            return parser(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None

    return parse


def _positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be > 0, got {value:g}")
    return value


def _non_negative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be >= 0, got {value:g}")
    return value


# Strict ints: YAML already gives ints, and lax mode would quietly turn `true` into 1.
Count = Annotated[int, Field(strict=True), AfterValidator(_positive)]
Bytes = Annotated[int, BeforeValidator(_parsed(parse_size)), AfterValidator(_positive)]
Rate = Annotated[float, BeforeValidator(_parsed(parse_rate)), AfterValidator(_positive)]
Ops = Annotated[float, BeforeValidator(_parsed(parse_throughput)), AfterValidator(_positive)]
Hertz = Annotated[float, BeforeValidator(_parsed(parse_frequency)), AfterValidator(_positive)]
Seconds = Annotated[float, BeforeValidator(_parsed(parse_time)), AfterValidator(_non_negative)]

_CONFIG = ConfigDict(frozen=True, extra="forbid")


class GroupSparseKernels(BaseModel):
    """Kernels that read group-sparse weights in a block-sparse form (none ship in cuBLAS or
    onnxruntime; a what-if: `--set compute.group_sparse_kernels.efficiency=0.8`)."""

    model_config = _CONFIG

    efficiency: float = Field(
        gt=0, le=1, description="Share of the dense kernel's throughput the kept groups run "
        "at (index decoding and irregular rows cost the rest).")


class CpuCores(BaseModel):
    """A CPU's cores as its vector kernels (onnxruntime's MLAS) use them; the compute units
    are the cores, and fp32 peak <= units x clock x fma_units_per_core x simd lanes x 2
    (the built-in files state that product, a probed host its measured sustained rate)."""

    model_config = _CONFIG

    isa: str = Field(min_length=1, description="Instruction set the kernels use, e.g. "
                     "'x86-64 AVX-512 + VNNI', 'Armv8.4-A NEON + SVE + dot product'.")
    simd_width_bits: Count = Field(
        description="Width of one vector FMA pipe in bits (what one pipe retires per clock: "
        "256 on Zen 4, whose 512-bit AVX-512 ops take two pipes; 128 for a NEON pipe).")
    fma_units_per_core: Count = Field(
        description="Vector FMA pipes per core that can each start one FMA every clock.")


class Compute(BaseModel):
    """The compute units, their clock, dense peaks per dtype and matrix-engine shapes."""

    model_config = _CONFIG

    units: Count = Field(description="Number of compute units (SMs, CUs, TensorCores, PEs, MACs).")
    unit_name: str = Field(min_length=1, description="What one unit is called: SM, CU, PE, ...")
    clock_hz: Hertz = Field(alias="clock", description="Peak (boost) clock in Hz.")
    sustained_clock_hz: Hertz | None = Field(
        default=None, alias="sustained_clock",
        description="Clock the units hold under sustained full matrix load, in Hz: power- "
        "and thermally-limited parts run well below their boost clock (the datasheet peaks "
        "assume the boost clock); null: the boost clock. Matrix kernels are priced at it.")
    peak_ops: dict[DType, Ops] = Field(
        description="Dense peak throughput per dtype in ops/s (one MAC = 2 ops); absent = "
        "not supported natively."
    )
    matrix_shapes: dict[DType, tuple[Count, Count, Count]] = Field(
        default_factory=dict,
        description="Matrix instruction or systolic-array shape (m, n, k) per dtype: tile sizes "
        "must be multiples of it.",
    )
    array: tuple[Count, Count] | None = Field(
        default=None, description="PE / systolic array rows x cols (accelerators and TPUs)."
    )
    dataflow: str | None = Field(
        default=None, description="Dataflow of the array, e.g. row_stationary, weight_stationary."
    )
    op_overhead_s: Seconds = Field(
        alias="op_overhead",
        description="Fixed cost per operator in seconds (kernel launch, dispatch, setup).",
    )
    run_overhead_s: Seconds = Field(
        default=0.0, alias="run_overhead",
        description="Fixed cost of one inference call in seconds, paid once per run on top "
        "of its operators (the runtime binding inputs and outputs); 0: not modelled.")
    cpu: CpuCores | None = Field(
        default=None, description="CPU cores' vector units (kind 'cpu' only; the fp32 peak "
        "must not exceed what they give).")
    group_sparse_kernels: GroupSparseKernels | None = Field(
        default=None, description="Group-sparse weight kernels: with them, a weight with "
        "pruned groups moves only its kept groups (BSR bytes) and computes only on them; "
        "null: pruned groups are stored and read like the others (the built-in devices).")


class MemoryLevel(BaseModel):
    """One level of the memory hierarchy: capacity, bandwidth, sharing scope, management."""

    model_config = _CONFIG

    size: Bytes = Field(description="Capacity in bytes (per unit when scope is 'unit').")
    bandwidth: Rate = Field(
        description="Bandwidth in bytes/s: per unit when scope is 'unit', else for the device."
    )
    scope: Scope = Field(
        default="device", description="'unit': private to each compute unit; 'device': shared."
    )
    managed: bool = Field(
        default=False,
        description="Software-managed level the memory pass plans (scratchpad, L2 set-aside).",
    )
    streaming: bool = Field(
        default=True,
        description="Operators may read and write the next level directly while this one is "
        "planned. False: compute sees only this level, so every input and output of an "
        "operator must be resident while it runs (NPUs whose engines read only their SRAM); "
        "an operator whose inputs and outputs cannot fit at once is then infeasible.",
    )
    holds: tuple[Literal["weights", "activations"], ...] = Field(
        default=(),
        description="What the deployed model keeps in this level for good: 'weights' "
        "(constants, e.g. an MCU's flash), 'activations' (the inputs and the activation "
        "arena, e.g. its SRAM). Whatever no level claims lives in main memory (the last "
        "level); whether the model fits is checked level by level.",
    )


class KernelLimits(BaseModel):
    """Per-kernel resource limits of a GPU, as the tiling pass needs them."""

    model_config = _CONFIG

    warp_size: Count = Field(description="Threads per warp (NVIDIA 32) or wavefront (AMD 64).")
    max_threads_per_block: Count = Field(description="Most threads in one block / workgroup.")
    max_threads_per_unit: Count = Field(description="Most resident threads per SM / CU.")
    max_blocks_per_unit: Count = Field(description="Most resident blocks per SM / CU.")
    max_warps_per_unit: Count = Field(description="Most resident warps / waves per SM / CU.")
    registers_per_unit: Count = Field(description="32-bit registers per SM / CU.")
    max_registers_per_thread: Count = Field(description="Most 32-bit registers one thread may use.")
    register_allocation_unit: Count = Field(
        description="Registers are allocated per warp in multiples of this (256 on NVIDIA)."
    )
    shared_memory_per_block: Bytes = Field(
        description="Most shared memory / LDS one block may use, in bytes (the opt-in maximum)."
    )
    shared_memory_per_unit: Bytes = Field(description="Shared memory / LDS per SM / CU, bytes.")
    vector_load_bytes: Count = Field(description="Widest load per thread in bytes (16 = 128 bit).")
    block_wide_mma: bool = Field(
        default=False,
        description="The matrix instruction is issued once for the whole block (Blackwell's "
        "tcgen05.mma, accumulating in tensor memory): each operand tile is read from shared "
        "memory once per k-step, not once per issuing warp or warpgroup.")


class Interconnect(BaseModel):
    """How devices talk to each other inside a node and across nodes."""

    model_config = _CONFIG

    devices_per_node: Count = Field(description="Devices sharing the fast intra-node fabric.")
    intra_node_bandwidth: Rate = Field(
        description="Bytes/s per device, one direction, to the other devices of its node."
    )
    inter_node_bandwidth: Rate = Field(
        description="Bytes/s per device, one direction, to devices of other nodes."
    )
    link: str = Field(min_length=1, description="What the links are, e.g. 'NVLink 4 + NVSwitch'.")


class Hardware(BaseModel):
    """A complete device model; build it with `mapper.hwmodels.load_hardware`."""

    model_config = _CONFIG

    schema_version: Literal["mapper.hw/1"] = Field(
        alias="schema", description="Format version of the hardware file: mapper.hw/1."
    )
    name: str = Field(min_length=1, description="Canonical name, e.g. a100-80gb.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names that select it.")
    kind: Kind = Field(description="gpu, tpu, accelerator, npu or cpu.")
    vendor: str = Field(description="Who makes it.")
    description: str = Field(description="One line for `mapper hw list`.")
    compute: Compute = Field(description="Compute units, clock, peaks and matrix shapes.")
    memory: dict[str, MemoryLevel] = Field(
        description="Memory levels ordered nearest to farthest; the last is main memory."
    )
    kernel_limits: KernelLimits | None = Field(
        default=None, description="GPU kernel resource limits; null for TPUs, accelerators "
        "and CPUs."
    )
    interconnect: Interconnect = Field(description="Intra- and inter-node links.")

    @property
    def main_memory(self) -> tuple[str, MemoryLevel]:
        """The farthest level (off-chip main memory) as (name, level)."""
        name = next(reversed(self.memory))
        return name, self.memory[name]

    def holders(self) -> dict[str, str]:
        """Which level keeps the weights and which the activations ('weights'/'activations'
        -> level name); main memory keeps whatever no level claims."""
        main_name, _ = self.main_memory
        found = {"weights": main_name, "activations": main_name}
        for name, level in self.memory.items():
            for what in level.holds:
                found[what] = name
        return found

    @property
    def managed_level(self) -> tuple[str, MemoryLevel] | None:
        """The software-managed level the memory pass plans, or None if the device has none."""
        for name, level in self.memory.items():
            if level.managed:
                return name, level
        return None

    def peak(self, dtype: str) -> float | None:
        """Dense peak ops/s for `dtype`, or None when the device has no native support."""
        return self.compute.peak_ops.get(dtype)  # type: ignore[call-overload]

    @property
    def sustained_share(self) -> float:
        """Sustained clock / boost clock: the share of a datasheet matrix peak held under
        load (1 where no sustained clock is stated)."""
        sustained = self.compute.sustained_clock_hz
        return sustained / self.compute.clock_hz if sustained else 1.0

    def to_plan_dict(self) -> dict[str, Any]:
        """The resolved model as JSON-able plain numbers under the YAML keys.

        Keys are sorted, except `memory`, which keeps its nearest-to-farthest order
        because the order is meaningful (the last level is main memory).
        """
        data = self.model_dump(mode="json", by_alias=True)
        memory = data.pop("memory")
        result = _sorted(data)
        result["memory"] = {name: _sorted(level) for name, level in memory.items()}
        return dict(sorted(result.items()))


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value

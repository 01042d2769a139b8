"""The typed shape of plan.json (CONTRACTS.md section 2): every plan mapper writes is checked
against these models before it lands, and `mapper schema plan` publishes them as JSON Schema.

The contract's fields are typed; sections may carry more (`extra` allowed): those are
mapper's own details, and a checker that reads only the contract ignores them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt

PLAN_SCHEMA_ID = "mapper.plan/1"


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Solver(_Section):
    """What a pass's solver said and what it proved."""

    name: str
    status: str = Field(description="OPTIMAL, FEASIBLE, ... as the solver reports it")
    objective: float | None
    bound: float | None = Field(description="best proven bound on the objective's scale")
    seed: int
    scope: str | None = Field(None, description="what status and bound are proven for, e.g. "
                              "'fixed order'")


class PassRecord(_Section):
    """One pass that the pipeline ran or skipped."""

    name: str
    status: Literal["ok", "fallback", "skipped", "failed"]
    seconds: NonNegativeFloat
    solver: Solver | None = None
    notes: list[str] = Field(default_factory=list)


class ModelInfo(_Section):
    """The input model: where it was read and its content hash."""

    path: str
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    input_shapes: dict[str, list[NonNegativeInt]]
    inputs_as_declared: list[str] = Field(
        default_factory=list, description="graph inputs that OUT/model.onnx declares with the "
        "source file's dims (symbolic or rank-less), because onnxruntime rejects the model with "
        "them static; the plan still holds for input_shapes")


class Schedule(_Section):
    """The execution order: every node of OUT/model.onnx once, topologically."""

    order: list[str]


class Residency(_Section):
    """A tensor kept at [offset, offset + size) of the managed level during steps start..end."""

    tensor: str
    start: NonNegativeInt
    end: NonNegativeInt
    offset: NonNegativeInt


class TrafficBaselines(_Section):
    """The same traffic rules applied to no residency (stream_all) and to Belady's plan."""

    stream_all: NonNegativeInt
    belady: NonNegativeInt


class Traffic(_Section):
    """Off-chip bytes of the plan, split into compulsory and the rest."""

    total: NonNegativeInt
    compulsory: NonNegativeInt
    non_compulsory: NonNegativeInt
    baselines: TrafficBaselines


class MemorySection(_Section):
    """CONTRACTS.md section 3: the managed on-chip level's schedule and allocation."""

    level: str
    capacity: NonNegativeInt
    alignment: int = Field(ge=1)
    tensors: dict[str, NonNegativeInt]
    residency: list[Residency]
    traffic: Traffic


class ArenaBuffer(_Section):
    """One activation's offset in the device arena."""

    tensor: str
    offset: NonNegativeInt


class ArenaSection(_Section):
    """CONTRACTS.md section 4: device-memory offsets for every activation."""

    size: NonNegativeInt
    lower_bound: NonNegativeInt
    greedy_by_size: NonNegativeInt
    buffers: list[ArenaBuffer]


class MoeLayer(_Section):
    """One MoE layer's placement: the device of each expert."""

    name: str
    placement: list[NonNegativeInt]


class MoeMetrics(_Section):
    """Load balance and transition shares of a placement (and of the baselines)."""

    load_max_over_mean: NonNegativeFloat
    cross_device_fraction: NonNegativeFloat
    cross_node_fraction: NonNegativeFloat
    alltoall_s: NonNegativeFloat
    baselines: dict[str, dict[str, Any]]


class MoeSection(_Section):
    """CONTRACTS.md section 5: expert placement."""

    num_devices: int = Field(ge=1)
    devices_per_node: int = Field(ge=1)
    num_experts: int = Field(ge=1)
    top_k: int = Field(ge=1)
    layers: list[MoeLayer]
    metrics: MoeMetrics


class Kernel(_Section):
    """CONTRACTS.md section 6: one GEMM-shaped operator's tile configuration."""

    node: str
    op: str
    dtype: str
    problem: dict[str, NonNegativeInt]
    tile: dict[str, Any]
    smem_bytes: NonNegativeInt | None = None
    regs_per_thread: NonNegativeInt | None = None
    blocks_per_unit: NonNegativeInt | None = None
    est_time_s: NonNegativeFloat
    bound: Literal["compute", "memory"]
    solve_s: NonNegativeFloat


class CompressedWeight(_Section):
    """One rewritten weight and what it stores per original weight."""

    name: str
    shape: list[NonNegativeInt]
    method: Literal["rtn", "gqsa", "lqlora"]
    format: Literal["matmulnbits", "qdq", "bnb4", "lut"]
    bits: float | None = None
    group_size: NonNegativeInt | None = None
    sparsity: NonNegativeFloat | None = None
    rank: NonNegativeInt | None = None
    bits_per_weight: NonNegativeFloat
    rel_error: NonNegativeFloat | None = None


class Quality(_Section):
    """The compressed model's quality against the original on held-out inputs."""

    metric: Literal["cosine", "perplexity", "top1"]
    mean: float | None
    min: float | None
    reference: float | None
    inputs: str
    eval_samples: NonNegativeInt


class CompressionSection(_Section):
    """CONTRACTS.md section 7: quantization, sparsity and low rank."""

    method: Literal["rtn", "gqsa", "lqlora"]
    weights: list[CompressedWeight]
    bits_per_weight: NonNegativeFloat
    quality: Quality | None = None
    artifacts: list[str] = Field(default_factory=list)


class MemoryFit(_Section):
    """Whether what one memory level holds fits it."""

    memory: str
    holds: list[Literal["weights", "activations"]]
    bytes: NonNegativeInt
    capacity: NonNegativeInt
    fits: bool


class Estimate(_Section):
    """The model's latency and memory on the device."""

    latency_s: NonNegativeFloat
    offchip_bytes: NonNegativeInt
    peak_device_bytes: NonNegativeInt
    device_memory_bytes: NonNegativeInt
    fits: bool
    memory_fit: list[MemoryFit] = Field(default_factory=list)


class BudgetVerdict(_Section):
    """One `--budget`: its limit, the plan's value and whether it holds."""

    metric: str
    limit: float | None
    value: float | None
    ok: bool


class Plan(_Section):
    """plan.json, CONTRACTS.md section 2."""

    schema_id: Literal["mapper.plan/1"] = Field(alias="schema")
    mapper_version: str
    model: ModelInfo
    hardware: dict[str, Any] = Field(description="the fully resolved hardware model "
                                     "(`mapper schema hardware`), overrides applied")
    passes: list[PassRecord]
    schedule: Schedule
    simplify: dict[str, Any] | None = Field(
        None, description="the simplify pass: op counts before and after (`before`, `after`, "
        "`nodes_before`, `nodes_after`) and nodes removed or rewrites applied per step "
        "(`rules`)")
    memory: MemorySection | None = None
    arena: ArenaSection | None = None
    moe: MoeSection | None = None
    kernels: list[Kernel] = Field(default_factory=list)
    compression: CompressionSection | None = None
    estimate: Estimate | None = None
    budgets: list[BudgetVerdict] = Field(default_factory=list)


def plan_json_schema() -> dict[str, Any]:
    """The published JSON Schema of plan.json (draft 2020-12)."""
    schema = Plan.model_json_schema(by_alias=True, mode="validation")
    schema["title"] = PLAN_SCHEMA_ID
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def check_plan(plan: dict[str, Any]) -> None:
    """Raise ValueError naming the first fields where `plan` breaks the published schema."""
    from pydantic import ValidationError

    try:
        Plan.model_validate(plan)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
                             for item in error.errors()[:5])
        raise ValueError(f"plan.json breaks its schema: {problems}") from None

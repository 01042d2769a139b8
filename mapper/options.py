"""Typed options of a compile: the same objects for the CLI, the Python API and config files.

Every setting lives in exactly one config field; fields annotated with a `Flag` are also
command-line flags (mapper.flags builds them), and a pass's settings live in its own config,
so a setting given for a pass that does not run is an error that names the pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mapper.budgets import Budget, parse_budget, parse_budgets
from mapper.flags import Flag, as_dict, flag_name, parse_dim, parse_names, parse_shape
from mapper.units import parse_size

Precision = Literal["model", "fp32", "tf32", "fp16", "bf16", "fp8", "int8"]
CompressMethod = Literal["rtn", "gqsa", "lqlora"]
_FROZEN = ConfigDict(frozen=True, extra="forbid")
# Budgets on these need a compression pass to measure them.
_COMPRESSION_METRICS = ("bits_per_weight", "quality", "quality_min")


class TilingConfig(BaseModel):
    """Configuration of the tiling pass (kernel tile sizes per GEMM-shaped operator)."""

    model_config = _FROZEN

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
        5.0, gt=0, description="wall-clock cap of one problem's CP-SAT solve (at least 0.5 s "
        "however small time_limit_s is, so a tiny --time-limit may be exceeded slightly)")
    problem_deterministic_s: float = Field(
        5.0, gt=0, description="CP-SAT deterministic-time limit of one problem's solve (what "
        "keeps plans reproducible; the wall-clock cap only guards against slow machines)")


class MemoryConfig(BaseModel):
    """Configuration of the memory pass (scratchpad schedule, allocation and replacement)."""

    model_config = _FROZEN
    objective: Annotated[Literal["offchip", "peak"], Flag("--memory-objective")] = Field(
        "offchip", description="'offchip': minimize off-chip bytes (COSMA); 'peak': the same "
        "traffic, then the lowest scratchpad footprint for it")
    alignment: int = Field(64, ge=1, description="byte alignment of every scratchpad offset")
    window: int = Field(
        1000, ge=10, description="graphs with more steps than this are planned window by "
        "window (divide and conquer) instead of in one CP-SAT model")
    lookahead: int = Field(50, ge=0, description="steps past a window its model also sees")
    search_order: Annotated[bool, Flag(
        "--no-order-search", invert=True,
        help="Memory pass: keep the incoming operator order (no order search).")] = Field(
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

    model_config = _FROZEN
    devices: Annotated[int | None, Flag("--devices", metavar="N")] = Field(
        None, ge=1, description="devices to place the experts on; the pass runs only for MoE "
        "models and N > 1")
    devices_per_node: Annotated[int | None, Flag("--devices-per-node", metavar="N")] = Field(
        None, ge=1, description="devices per node; default: the hardware's "
        "interconnect.devices_per_node")
    trace: Annotated[Path | None, Flag("--trace", metavar="FILE.npz")] = Field(
        None, description="routing trace .npz with routes[layers, tokens, k]; "
        "default: collect one in onnxruntime on --calib inputs or generated token ids")
    trace_layout: Annotated[Literal["layers-first", "tokens-first"],
                            Flag("--trace-layout")] = Field(
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
    method: Annotated[Literal["auto", "joint", "staged"], Flag("--moe-method")] = Field(
        "auto", description="'joint': one CP-SAT model over all layers; 'staged': MoETuner's "
        "two stages plus layer-wise refinement; 'auto': joint when small enough")


class ArenaConfig(BaseModel):
    """Configuration of the arena pass (device-memory offsets for all activations)."""

    model_config = _FROZEN

    method: Annotated[Literal["auto", "search", "cp-sat", "greedy"],
                      Flag("--arena-method")] = Field(
        "auto", description="'auto': greedy-by-size, then the MiniMalloc-class search, then "
        "CP-SAT NoOverlap2D if the search stalls; or one of them alone")
    time_limit_s: float | None = Field(
        None, gt=0, description="budget of the arena pass, seconds; None: the compile's "
        "time_limit_s")


class Degradation(BaseModel):
    """A quality gate: the largest drop of `metric` below the original model's value."""

    model_config = _FROZEN

    metric: Literal["cosine", "perplexity", "top1"] = Field(
        "cosine", description="cosine: mean output cosine to the original; perplexity: rise "
        "in next-token perplexity (relative); top1: drop in next-token top-1 agreement")
    limit: float = Field(ge=0, description="the largest allowed degradation")


def parse_degradation(text: str) -> Degradation:
    """`0.01` (cosine) or `METRIC=X` -> Degradation."""
    from mapper.errors import UserError

    metric, sep, value = text.rpartition("=") if "=" in text else ("cosine", "", text)
    del sep
    try:
        return Degradation(metric=metric.strip() or "cosine", limit=float(value))  # type: ignore[arg-type]
    except Exception:
        raise UserError(f"--max-degradation {text!r}: expected a number (cosine drop, e.g. "
                        "0.01) or METRIC=X with METRIC one of cosine, perplexity, top1"
                        ) from None


def _bits(text: str) -> float | str:
    from mapper.errors import UserError

    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UserError(f"--bits {text!r}: expected a number of bits (2, 3, 4, 8; LQ-LoRA takes "
                        "an average such as 2.75) or 'auto'") from None


class CompressionConfig(BaseModel):
    """Settings every weight-rewriting pass (rtn, gqsa, lqlora) shares; `method` picks one."""

    model_config = _FROZEN
    method: Annotated[CompressMethod | None, Flag("--compress")] = Field(
        None, description="the lossy weight-rewriting pass to opt into: rtn (round to "
        "nearest), gqsa (group quantization + group sparsity), lqlora (low rank + quantized)")
    bits: Annotated[float | Literal["auto"] | None,
                    Flag("--bits", metavar="B", parse=_bits)] = Field(
        None, description="bits per weight code (rtn/gqsa: 2, 3, 4 or 8; lqlora: the average "
        "budget, e.g. 2.75, or 'auto' to fit the device); default: the pass's own")
    group_size: Annotated[int | None, Flag("--group-size", metavar="G")] = Field(
        None, ge=1, description="weights per scale along the reduction dim (a power of two, "
        "16 to 256); default: the pass's own")
    symmetric: Annotated[bool, Flag("--symmetric")] = Field(
        False, description="symmetric codes (no zero points) instead of asymmetric")
    format: Annotated[Literal["matmulnbits", "qdq", "lut", "bnb4"] | None,
                      Flag("--format")] = Field(
        None, description="how the quantized weights are emitted: com.microsoft.MatMulNBits "
        "(2/4/8 bits), blocked DequantizeLinear + MatMul (qdq: 4/8 bits), bit-packed codes "
        "and a level table in standard ONNX (lut: 1-8 bits), or com.microsoft.MatMulBnb4 "
        "for lqlora's NF4 MatMul weights (bnb4; other widths as lut); default: the first "
        "that holds --bits")
    exclude: Annotated[tuple[str, ...], Flag("--exclude", metavar="NAME_OR_GLOB",
                                             multiple=True)] = Field(
        (), description="weights or nodes (names or shell globs) to leave dense; repeatable")
    only: Annotated[tuple[str, ...], Flag("--only", metavar="NAME_OR_GLOB",
                                          multiple=True)] = Field(
        (), description="rewrite only these weights or nodes (names or shell globs); "
        "repeatable; default: every MatMul/Gemm weight (and embedding table, see "
        "--embeddings)")
    embeddings: Annotated[Literal["auto", "on", "off"], Flag("--embeddings")] = Field(
        "auto", description="quantize Gather embedding tables too: auto does so when the table "
        "is at least a tenth of the weights")
    max_degradation: Annotated[Degradation | None, Flag(
        "--max-degradation", metavar="X|METRIC=X", parse=parse_degradation)] = Field(
        None, description="fail (exit 4, nothing written) when quality drops more than this "
        "below the original: a cosine drop, or METRIC=X")
    calib_samples: int = Field(32, ge=1, description="calibration inputs used to fit the "
                               "weights (the first ones of --calib, or generated)")
    eval_samples: int = Field(16, ge=1, description="held-out inputs the quality is measured "
                              "on, disjoint from the calibration ones")

    @model_validator(mode="after")
    def _group_power_of_two(self) -> CompressionConfig:
        if self.group_size is not None and (self.group_size & (self.group_size - 1)):
            raise ValueError(f"--group-size {self.group_size} is not a power of two")
        return self


class GqsaConfig(BaseModel):
    """Configuration of the gqsa pass (group quantization with structured group sparsity)."""

    model_config = _FROZEN

    sparsity: Annotated[float, Flag("--sparsity", metavar="S")] = Field(
        0.0, ge=0, lt=1, description="share of weight groups pruned, in [0, 1)")
    sparsity_allocation: Annotated[Literal["uniform", "global"],
                                   Flag("--sparsity-allocation")] = Field(
        "uniform", description="uniform: the same share in every layer; global: the "
        "groups of least relative saliency over all layers (the exact optimum of the "
        "per-layer error curves), no layer above 90%")
    saliency: Annotated[Literal["obs", "wanda"], Flag("--saliency")] = Field(
        "obs", description="group saliency: obs (optimal-brain-surgeon error from H = XᵀX) "
        "or wanda (|W| times the input norms)")
    stage2: Annotated[Literal["refit", "e2e", "refit+e2e", "none"],
                      Flag("--stage2")] = Field(
        "refit", description="stage 2 with codes and masks frozen: refit (every layer's "
        "scales by least squares to the original model's activations, on inputs through "
        "the compressed prefix), e2e (every scale tuned by gradients against the model's "
        "outputs, in torch: mapper[compress]), refit+e2e (both, in that order), or none "
        "(stage 1 alone)")


class LqloraConfig(BaseModel):
    """Configuration of the lqlora pass (low-rank plus quantized decomposition)."""

    model_config = _FROZEN

    rank: Annotated[int | None, Flag("--rank", metavar="R")] = Field(
        None, ge=0, description="rank of each weight's low-rank part; 0: quantization only "
        "(the ILP still picks the configs); default: 64 scaled to the matrix (64 at "
        "4096 wide, at least 8)")
    grid: Annotated[Literal["nf", "int", "mixed"], Flag("--grid")] = Field(
        "nf", description="configs the ILP chooses from: nf (NormalFloat 2/3/4/8 bits with "
        "double-quantized block scales, the paper's 432), int (what MatMulNBits holds: "
        "2/4/8-bit groups of 16-128) or mixed (both; each weight takes either)")
    weighting: Annotated[Literal["rms", "xtx", "none"], Flag("--error-weighting")] = Field(
        "rms", description="how each input channel weights a weight's reconstruction error: "
        "rms (the channel's root-mean-square input on the calibration samples), xtx (the "
        "diagonal of XᵀX, the paper's data-aware proxy; measured worse on MiniLM-L6) or "
        "none (plain Frobenius); errors are relative to each weight's own")
    budget_includes_lora: Annotated[bool, Flag("--budget-includes-lora")] = Field(
        False, description="count the low-rank factors in the --bits budget too; the ILP may "
        "then drop a matrix's factors (rank 0) where they do not pay for their bits")
    compensation: Annotated[Literal["gptq", "none"], Flag("--compensation")] = Field(
        "gptq", description="gptq: once the configs are chosen, re-pick each Q's codes "
        "(its scales and bits unchanged) with GPTQ's error compensation on the calibration "
        "inputs, so Q + L1·L2 matches the layer's outputs; none: round to nearest, as the "
        "paper does")


class CompileOptions(BaseModel):
    """Everything `mapper compile` takes besides the model, hardware and output directory."""

    model_config = _FROZEN

    input_shapes: Annotated[dict[str, tuple[int, ...]], Flag(
        "--input-shape", metavar="NAME=1x3x224x224", parse=parse_shape, multiple=True,
        collect=as_dict, help="Static shape of an input with dynamic dims, NAME=1x3x224x224 "
        "or NAME:1,3,224,224 (repeatable)")] = Field(
        default_factory=dict, description="static shapes for graph inputs with dynamic dims")
    dims: Annotated[dict[str, int], Flag(
        "--dim", metavar="NAME=VALUE", parse=parse_dim, multiple=True, collect=as_dict,
        help="Value of a named dynamic dim (repeatable)")] = Field(
        default_factory=dict, description="values for named dynamic dims (dim_param)")
    hardware_overrides: Annotated[tuple[str, ...], Flag(
        "--set", metavar="PATH=VALUE", multiple=True,
        help="Override a hardware field, e.g. memory.l2.size=80MiB (repeatable)")] = Field(
        (), description="PATH=VALUE overrides of hardware fields, applied in order")
    scratchpad: Annotated[int | None, Flag("--scratchpad", metavar="SIZE", parse=parse_size)] = \
        Field(None, gt=0, description="capacity of the managed on-chip level for the memory "
              "pass (512KiB, 2MiB)")
    passes: Annotated[tuple[str, ...] | None, Flag("--passes", metavar="A,B",
                                                   parse=parse_names)] = Field(
        None, description="run only these lossless passes (pipeline order is kept)")
    skip: Annotated[tuple[str, ...], Flag("--skip", metavar="A,B", parse=parse_names)] = Field(
        (), description="passes not to run")
    precision: Annotated[Precision, Flag("--precision")] = Field(
        "model", description="deployment precision: float weights and activations are stored, "
        "moved and computed in this dtype everywhere (memory, arena, tiling, estimate); "
        "'model' keeps the graph's own dtypes")
    calib: Annotated[Path | None, Flag("--calib", metavar="FILE.npz")] = Field(
        None, description="calibration inputs (.npz, one array per graph input, samples "
        "first): compression passes fit on them, MoE traces come from them, and they feed the "
        "run that measures shapes ONNX inference cannot know")
    seed: Annotated[int, Flag("--seed")] = Field(0, ge=0, description="seed of every solver "
                                                 "and random choice")
    time_limit_s: Annotated[float, Flag("--time-limit", metavar="S")] = Field(
        30.0, gt=0, description="solver budget per pass, seconds")
    compression: CompressionConfig = Field(default_factory=CompressionConfig,
                                           description="weight-rewriting pass settings")
    gqsa: GqsaConfig = Field(default_factory=GqsaConfig, description="gqsa pass settings")
    lqlora: LqloraConfig = Field(default_factory=LqloraConfig,
                                 description="lqlora pass settings")
    moe: MoeConfig = Field(default_factory=MoeConfig, description="moe pass settings")
    memory: MemoryConfig = Field(default_factory=MemoryConfig,
                                 description="memory pass settings")
    tiling: TilingConfig = Field(default_factory=TilingConfig,
                                 description="tiling pass settings")
    arena: ArenaConfig = Field(default_factory=ArenaConfig, description="arena pass settings")
    budgets: Annotated[tuple[Budget, ...], Flag(
        "--budget", metavar="METRIC=LIMIT", parse=parse_budget, multiple=True,
        help="A limit the plan must meet, e.g. latency=5ms, device_memory=fit, offchip=300MB, "
        "quality=0.99 (any plan.estimate or compression metric; repeatable); a violated "
        "budget exits 4 after writing the output. device_memory=SIZE is also the memory "
        "lqlora's --bits auto fits into")] = Field(
        (), description="limits on plan metrics (METRIC=LIMIT strings, or a mapping of "
        "metric to limit in a config file)")

    @field_validator("budgets", mode="before")
    @classmethod
    def _read_budgets(cls, value: Any) -> tuple[Budget, ...]:
        return parse_budgets(value)

    @model_validator(mode="after")
    def _budgets_measurable(self) -> CompileOptions:
        for budget in self.budgets:
            if budget.metric in _COMPRESSION_METRICS and self.compression.method is None:
                raise ValueError(f"--budget {budget.metric}={budget.given} limits a compression "
                                 "metric, and no compression pass runs: add --compress METHOD")
        return self

    @property
    def compress(self) -> CompressMethod | None:
        """The lossy pass opted into, if any."""
        return self.compression.method

    def flag_for(self, path: str) -> str:
        """The command-line flag of the dotted setting `path` (the path itself if none)."""
        return flag_name(CompileOptions, path)

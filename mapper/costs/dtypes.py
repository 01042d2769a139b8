"""Dtypes as the cost model sees them: storage bits, the deployment precision, and fallbacks."""

from __future__ import annotations

from onnx import TensorProto

from mapper.onnx_utils import dtype_name, element_size

# Storage bits per element of each dtype the hardware schema knows (tf32 is stored as fp32).
DTYPE_BITS: dict[str, int] = {
    "fp64": 64, "fp32": 32, "tf32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int16": 16,
    "int8": 8, "int4": 4, "fp4": 4,
}
# The nearest dtype to run (and price) a matrix op in when the hardware lacks the one asked
# for: a format that holds the values (upcast first), then a same-width one, integer last
# (an int-only NPU needs the model quantized). fp8 data never runs as int8: its values are
# not integers. One chain for the tiling pass and the estimate alike.
FALLBACK_CHAIN: dict[str, tuple[str, ...]] = {
    "fp64": ("fp64", "fp32", "tf32", "bf16", "fp16"),
    "fp32": ("fp32", "tf32", "bf16", "fp16", "int16", "int8"),
    "tf32": ("tf32", "fp32", "bf16", "fp16", "int16", "int8"),
    "fp16": ("fp16", "bf16", "fp32", "tf32", "int16", "int8"),
    "bf16": ("bf16", "fp16", "fp32", "tf32", "int16", "int8"),
    "fp8": ("fp8", "bf16", "fp16", "fp32", "int8"),
    "int16": ("int16", "fp16", "bf16", "fp32", "int8"),
    "int8": ("int8", "int16", "fp16", "bf16", "fp32"),
    "int4": ("int4", "int8", "int16", "fp16", "bf16"),
    "fp4": ("fp4", "fp8", "bf16", "fp16", "fp32"),
}
# dtypes the vector units run element-wise work in (the fp32 rate first on GPUs).
VECTOR_DTYPES = ("fp32", "fp16", "bf16", "int16", "int8")
_FLOAT_ELEM_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                     TensorProto.DOUBLE}


def stored_dtype(elem_type: int, precision: str) -> str:
    """The dtype a tensor of ONNX `elem_type` is stored in when deployed at `precision`:
    float tensors take the precision ('model' keeps them), everything else keeps its own."""
    if precision != "model" and elem_type in _FLOAT_ELEM_TYPES:
        return precision
    return dtype_name(elem_type)


def stored_bits(elem_type: int, precision: str) -> float:
    """Bits per element of a tensor of `elem_type` deployed at `precision`."""
    if precision != "model" and elem_type in _FLOAT_ELEM_TYPES:
        return float(DTYPE_BITS[precision])
    return 8.0 * element_size(elem_type)

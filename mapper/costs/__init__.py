"""The one cost model every pass prices with: per-op work, dtypes and their fallbacks, peaks,
roofline time, and what decoding a packed weight format costs.

- `work`: FLOPs and the roofline family of each operator, from static shapes;
- `dtypes`: storage bits of each dtype, the deployment precision's sizing, and the one
  fallback chain to the nearest dtype a device runs;
- `roofline`: peak per dtype, per-op roofline time, dequantization work of a format, and
  which inputs of a matrix op are A and B.
"""

from mapper.costs.dtypes import (
    DTYPE_BITS,
    FALLBACK_CHAIN,
    stored_bits,
    stored_dtype,
)
from mapper.costs.roofline import (
    MATRIX_CATEGORIES,
    OpTime,
    dequant_ops,
    matrix_operands,
    op_time,
    peak_for,
)
from mapper.costs.work import OpWork, Shape, ShapeOf, attributes, numel, op_work

__all__ = [
    "DTYPE_BITS",
    "FALLBACK_CHAIN",
    "MATRIX_CATEGORIES",
    "OpTime",
    "OpWork",
    "Shape",
    "ShapeOf",
    "attributes",
    "dequant_ops",
    "matrix_operands",
    "numel",
    "op_time",
    "op_work",
    "peak_for",
    "stored_bits",
    "stored_dtype",
]

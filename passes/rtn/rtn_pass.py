"""RTN pass: round-to-nearest weight-only group quantization (the baseline of every lossy pass).

Each MatMul/Gemm weight (and each embedding table where that pays) gets per-group scales and
zero points from its own range and codes by rounding, exactly as onnxruntime's
MatMulNBitsQuantizer computes them; no calibration data is needed, and quality is still
measured on held-out inputs.
"""

from __future__ import annotations

from mapper.compression.base import CompressionJob, Encoded, Encoding, WeightRewritePass
from mapper.compression.sites import site_matrix
from mapper.passes.rtn.quantize import round_to_nearest


class RtnPass(WeightRewritePass):
    """Round-to-nearest group quantization to `--bits` (2, 3, 4, 8) in groups of
    `--group-size`."""

    name = "rtn"
    bits_allowed = frozenset({2, 3, 4, 8})
    description = "round-to-nearest weight-only group quantization (MatMulNBits / QDQ)"

    def encode(self, job: CompressionJob) -> Encoding:
        """Quantize every site from its own range."""
        settings = job.settings
        return Encoding([Encoded(site, round_to_nearest(site_matrix(job.model, site),
                                                        settings.bits, settings.group_size,
                                                        settings.symmetric))
                         for site in job.sites])

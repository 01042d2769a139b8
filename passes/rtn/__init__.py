"""RTN pass: round-to-nearest group quantization (`rtn_pass`), the MLAS-exact math
(`quantize`)."""

from mapper.passes.rtn.rtn_pass import RtnPass

__all__ = ["RtnPass"]

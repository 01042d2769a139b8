"""LQ-LoRA pass: low-rank plus quantized weight decomposition under a bits budget.

Modules: `nf` (NormalFloat codes, double-quantized scales), `grid` (the nf and int config
grids, exact stored bits), `decompose` (the Q + L1·L2 alternation, cheap error estimates),
`budget` (the CP-SAT ILP), `search` (frontier pruning and exact refinement), `emit`
(Q as MatMulNBits or standard-ONNX NF decode, factors as MatMuls), `adapters`
(adapters.safetensors with PEFT keys), `lqlora_pass` (`LqloraPass`).
"""

from mapper.passes.lqlora.lqlora_pass import LqloraPass

__all__ = ["LqloraPass"]

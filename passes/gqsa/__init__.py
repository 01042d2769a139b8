"""GQSA pass: group quantization with structured group sparsity.

Modules: `saliency` (group saliency, sparsity allocation), `bqpo` (stage 1: compensated
codes around pruned groups), `refit` (least-squares scale refits: stage 1's refinement and
stage 2), `artifact` (the BSR weights.gqsa.safetensors and its reader), `gqsa_pass`
(`GqsaPass`).
"""

from mapper.passes.gqsa.gqsa_pass import GqsaPass

__all__ = ["GqsaPass"]

"""MoE expert placement (MoETuner): detection, routing traces, CP-SAT placement, metrics.

Modules: detect (MoE layers in ONNX graphs), trace (load or collect routing traces),
metrics (the contract's metrics), baselines (contiguous, round-robin, EPLB), cluster and
place (the CP-SAT search), cpsat (its models and work budget), cost (all-to-all and expert
compute time), synth (synthetic traces), section (the plan's `moe` object), report (the
report section), cli (`mapper moe ...`), moe_pass (the pipeline pass).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MoePass"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI imports mapper.passes.moe.cli at start-up, which must not pull in
    # onnxruntime and OR-Tools for commands that never place experts.
    if name == "MoePass":
        from mapper.passes.moe.moe_pass import MoePass

        return MoePass
    raise AttributeError(name)

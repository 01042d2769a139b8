"""Memory pass: COSMA-style scratchpad schedule, allocation and tensor replacement (CP-SAT).

Modules: `problem` (what each step reads and writes), `traffic` (the contract's validity and
traffic rules), `belady` (the baselines), `candidates` + `cosma` + `alloc` (the CP-SAT model),
`planner` (one order end to end), `decompose` (windows for big graphs), `order` (order
search), `memory_pass` (`MemoryPass`), `report` (the report section).
"""

from mapper.passes.memory.memory_pass import MemoryPass

__all__ = ["MemoryPass"]

"""The scratchpad problem of one schedule: per step what a node reads and writes, per tensor
its size, producing step and use steps (CONTRACTS.md section 3 counts traffic on exactly these).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mapper.graph import GraphView


@dataclass(frozen=True)
class TensorUse:
    """One tensor as the scratchpad sees it in a given order."""

    name: str
    size: int
    # Step of the node that writes it; None for initializers and graph inputs.
    producer: int | None
    # Distinct steps whose node reads it, ascending.
    uses: tuple[int, ...]
    is_output: bool

    @property
    def produced(self) -> bool:
        """True for a tensor written by a node (an intermediate or a graph output)."""
        return self.producer is not None

    def next_use(self, step: int) -> int | None:
        """The first use strictly after `step`, or None."""
        index = bisect.bisect_right(self.uses, step)
        return self.uses[index] if index < len(self.uses) else None

    def last_need(self) -> int:
        """The last step that touches the tensor (its last use, else its producing step)."""
        if self.uses:
            return self.uses[-1]
        return self.producer if self.producer is not None else 0


@dataclass(frozen=True)
class Problem:
    """Reads and writes of every step of `order`, and the tensors they touch."""

    order: tuple[str, ...]
    tensors: Mapping[str, TensorUse]
    # Per step: the distinct tensors the node reads / writes, in the node's own order.
    reads: tuple[tuple[str, ...], ...]
    writes: tuple[tuple[str, ...], ...]
    # Graph outputs as the contract counts them for `compulsory` (produced or not).
    graph_outputs: tuple[str, ...]
    graph_output_bytes: int
    # The level cannot be bypassed: every operand of every step must be resident at it.
    resident_operands: bool = False

    @property
    def steps(self) -> int:
        """Number of steps (nodes) in the order."""
        return len(self.order)

    def compulsory(self) -> int:
        """Used initializers and graph inputs, plus graph outputs (CONTRACTS.md section 3)
        that a node writes: an output that is a graph input or initializer passed through is
        already off-chip and moves nothing (counting it made non_compulsory negative)."""
        return self.floor()

    def floor(self) -> int:
        """Bytes every plan moves: each used input/weight read once, each produced graph
        output written once (a lower bound on the traffic; `compulsory` unless a graph
        output is not produced by any node)."""
        return sum(t.size for t in self.tensors.values()
                   if (not t.produced and t.uses) or (t.produced and t.is_output))

    def required(self) -> tuple[tuple[str, int], ...]:
        """(tensor, step) pairs that must be resident: every non-empty operand of every step
        when `resident_operands`, else none."""
        if not self.resident_operands:
            return ()
        return tuple((name, step) for step in range(self.steps)
                     for name in dict.fromkeys((*self.reads[step], *self.writes[step]))
                     if self.tensors[name].size > 0)

    def operand_bytes(self, step: int, alignment: int) -> int:
        """Bytes the step's distinct non-empty operands take at once, each aligned."""
        names = dict.fromkeys((*self.reads[step], *self.writes[step]))
        return sum(-(-self.tensors[n].size // alignment) * alignment for n in names
                   if self.tensors[n].size > 0)

    def sizes(self) -> dict[str, int]:
        """`memory.tensors`: byte size of every tensor a step touches, sorted by name.

        Zero-byte values (empty tensors, and non-tensor values such as ZipMap's sequence of
        maps, which have no static tensor shape) are left out: they never move a byte and
        never get a residency."""
        return {name: self.tensors[name].size for name in sorted(self.tensors)
                if self.tensors[name].size > 0}


def build_problem(view: GraphView, order: Sequence[str], resident_operands: bool = False
                  ) -> Problem:
    """The problem of `view` executed in `order` (a topological order of all its nodes);
    `resident_operands` for a level operators cannot bypass."""
    reads: list[tuple[str, ...]] = []
    writes: list[tuple[str, ...]] = []
    uses: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for step, name in enumerate(order):
        node = view.nodes[name]
        # A node reading one tensor twice (Mul(x, x)) reads it once from wherever it is.
        node_reads = tuple(dict.fromkeys(node.inputs))
        node_writes = tuple(dict.fromkeys(node.outputs))
        reads.append(node_reads)
        writes.append(node_writes)
        for tensor in node_reads:
            uses.setdefault(tensor, []).append(step)
        for tensor in node_writes:
            producer[tensor] = step
    outputs = set(view.graph_outputs)
    tensors: dict[str, TensorUse] = {}
    for name in sorted(set(uses) | set(producer)):
        tensor = view.tensors[name]
        tensors[name] = TensorUse(
            name=name, size=tensor.size, producer=producer.get(name),
            uses=tuple(sorted(set(uses.get(name, ())))), is_output=name in outputs)
    graph_outputs = tuple(name for name in view.graph_outputs if name in view.tensors)
    return Problem(order=tuple(order), tensors=tensors, reads=tuple(reads),
                   writes=tuple(writes), graph_outputs=graph_outputs,
                   graph_output_bytes=sum(view.tensors[n].size for n in set(graph_outputs)),
                   resident_operands=resident_operands)


def problem_from_lists(order: Sequence[str], reads: Sequence[Sequence[str]],
                       writes: Sequence[Sequence[str]], sizes: Mapping[str, int],
                       outputs: Sequence[str] = (), resident_operands: bool = False
                       ) -> Problem:
    """A problem from plain per-step lists (synthetic graphs in tests and benchmarks)."""
    uses: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for step, (step_reads, step_writes) in enumerate(zip(reads, writes, strict=True)):
        for tensor in dict.fromkeys(step_reads):
            uses.setdefault(tensor, []).append(step)
        for tensor in step_writes:
            producer[tensor] = step
    tensors = {name: TensorUse(name=name, size=sizes[name], producer=producer.get(name),
                               uses=tuple(sorted(set(uses.get(name, ())))),
                               is_output=name in outputs)
               for name in sorted(set(uses) | set(producer))}
    return Problem(order=tuple(order), tensors=tensors,
                   reads=tuple(tuple(dict.fromkeys(r)) for r in reads),
                   writes=tuple(tuple(dict.fromkeys(w)) for w in writes),
                   graph_outputs=tuple(outputs),
                   graph_output_bytes=sum(sizes[n] for n in set(outputs)),
                   resident_operands=resident_operands)


def repeated(problem: Problem, times: int) -> Problem:
    """`times` copies of a graph one after another, nodes and tensors renamed per copy (how
    tests and benchmarks make 2,000-node problems from real ones)."""
    order: list[str] = []
    reads: list[list[str]] = []
    writes: list[list[str]] = []
    sizes: dict[str, int] = {}
    outputs: list[str] = []
    for copy in range(times):
        order += [f"{copy}/{name}" for name in problem.order]
        reads += [[f"{copy}/{t}" for t in step] for step in problem.reads]
        writes += [[f"{copy}/{t}" for t in step] for step in problem.writes]
        sizes.update({f"{copy}/{name}": t.size for name, t in problem.tensors.items()})
        outputs += [f"{copy}/{name}" for name in problem.graph_outputs]
    return problem_from_lists(order, reads, writes, sizes, outputs,
                              resident_operands=problem.resident_operands)


def reorder(problem: Problem, order: Sequence[str]) -> Problem:
    """The same graph executed in another (topological) order."""
    index = {name: step for step, name in enumerate(problem.order)}
    reads = [problem.reads[index[name]] for name in order]
    writes = [problem.writes[index[name]] for name in order]
    uses: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for step, (step_reads, step_writes) in enumerate(zip(reads, writes, strict=True)):
        for tensor in step_reads:
            uses.setdefault(tensor, []).append(step)
        for tensor in step_writes:
            producer[tensor] = step
    tensors = {name: TensorUse(name=name, size=t.size, producer=producer.get(name),
                               uses=tuple(uses.get(name, ())), is_output=t.is_output)
               for name, t in problem.tensors.items()}
    return Problem(order=tuple(order), tensors=tensors, reads=tuple(reads), writes=tuple(writes),
                   graph_outputs=problem.graph_outputs,
                   graph_output_bytes=problem.graph_output_bytes,
                   resident_operands=problem.resident_operands)


def predecessors(problem: Problem) -> dict[str, set[str]]:
    """Node -> the nodes that write a tensor it reads."""
    writer = {t: problem.order[s] for s, outs in enumerate(problem.writes) for t in outs}
    return {name: {writer[t] for t in problem.reads[s] if t in writer} - {name}
            for s, name in enumerate(problem.order)}


def largest_operator_bytes(problem: Problem, alignment: int = 1) -> int:
    """COSMA's M_R: the most bytes one operator reads and writes (inputs + outputs), each
    rounded up to `alignment`."""
    return max((problem.operand_bytes(step, alignment) for step in range(problem.steps)),
               default=0)


def zero_traffic_peak(problem: Problem) -> int:
    """COSMA's M_P for this order: the most bytes live at once when nothing is ever evicted.

    Produced tensors from their step to their last use, and inputs/weights read more than
    once from their first to their last use (one read is compulsory either way); tensors
    read once stream at no extra cost. No plan has zero non-compulsory traffic with less.
    """
    delta = [0] * (problem.steps + 1)
    for tensor in problem.tensors.values():
        if tensor.produced:
            if not tensor.uses and tensor.is_output:
                continue
            first, last = tensor.producer, tensor.last_need()
        elif len(tensor.uses) >= 2:
            first, last = tensor.uses[0], tensor.uses[-1]
        else:
            continue
        assert first is not None
        delta[first] += tensor.size
        delta[last + 1] -= tensor.size
    running = peak = 0
    for change in delta[:-1]:
        running += change
        peak = max(peak, running)
    return peak

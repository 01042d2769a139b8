"""Graph outputs written through a copy: `Identity(x)` or a `Cast(x)` to x's own type.

The onnxscript rewriter leaves a copy that writes a graph output alone (removing it would
rename the output), and it cannot load graphs with map or sequence values at all (the
ai.onnx.ml classifiers' ZipMap outputs). Here, on the proto, the producer of x writes the
output under its name instead; x must have no other reader, in subgraphs either.
"""

from __future__ import annotations

from collections import Counter

from onnx import GraphProto, ModelProto

from mapper.onnx_utils import iter_subgraphs

_COPIES = frozenset({"Identity", "Cast"})


def _elem_types(graph: GraphProto) -> dict[str, int]:
    return {info.name: info.type.tensor_type.elem_type
            for info in (*graph.input, *graph.value_info, *graph.output)
            if info.type.WhichOneof("value") == "tensor_type"}


def _is_copy(node, types: dict[str, int]) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in _COPIES \
            or len(node.input) != 1 or len(node.output) != 1:
        return False
    if node.op_type == "Identity":
        return True
    to = next((attr.i for attr in node.attribute if attr.name == "to"), None)
    return to is not None and types.get(node.input[0], 0) == to


def bypass_output_copies(model: ModelProto) -> int:
    """Remove, in place, the main graph's copies that write a graph output; how many."""
    graph = model.graph
    types = _elem_types(graph)
    outputs = Counter(out.name for out in graph.output)
    kept_names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    readers = Counter(name for node in graph.node for name in node.input)
    readers.update(name for sub in iter_subgraphs(graph) for node in sub.node
                   for name in node.input)
    removed = 0
    for node in list(graph.node):
        if not _is_copy(node, types):
            continue
        source, target = node.input[0], node.output[0]
        if outputs[target] != 1 or outputs[source] or source in kept_names \
                or source not in producers or readers[source] != 1:
            continue
        producer = producers.pop(source)
        producer.output[list(producer.output).index(source)] = target
        producers[target] = producer
        graph.node.remove(node)
        stale = [info for info in graph.value_info if info.name == source]
        for info in stale:
            graph.value_info.remove(info)
        removed += 1
    return removed

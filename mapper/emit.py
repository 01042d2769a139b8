"""Saving the optimized model (external data past the protobuf limit); where and when it may
be written is mapper.outputs' rule."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import ModelProto

from mapper.onnx_utils import element_size

_PROTOBUF_LIMIT = 2**31 - 1
_GRAPH_MARGIN = 256 * 2**20


def _weight_bytes(model: ModelProto) -> int:
    """Bytes of the main graph's initializers, from their dims (reading no data)."""
    total = 0
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        total += int(count * max(element_size(tensor.data_type), 1))
    return total


def save_model(model: ModelProto, path: Path) -> None:
    """Save a model, with external data next to it when it exceeds the protobuf limit."""
    # ModelProto.ByteSize() costs as much as serializing (seconds on a 500 MB model), so
    # decide from the weights' own sizes and serialize once; the margin covers the graph.
    if _weight_bytes(model) < _PROTOBUF_LIMIT - _GRAPH_MARGIN:
        path.write_bytes(model.SerializeToString())
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)

"""Writing a compile's outputs atomically: everything goes to a temporary directory beside
OUT, is checked, then renamed into place, so OUT never holds half a result."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import ModelProto

from mapper.errors import UserError
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


def write_atomically(out_dir: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_dir)`, then move tmp_dir to `out_dir` (replacing an earlier result)."""
    out_dir = out_dir.absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {str(out_dir)!r} exists and is not a directory")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output directory's parent {str(parent)!r}: "
                        f"{error.strerror}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        write(tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            old.rmdir()
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_file_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it, so no half file is left."""
    path = path.absolute()
    if path.is_dir():
        raise UserError(f"output path {str(path)!r} is a directory; name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.tmp-",
                                         delete=False) as handle:
            handle.write(text)
        Path(handle.name).replace(path)
    except OSError as error:
        raise UserError(f"cannot write {str(path)!r}: {error.strerror}") from None

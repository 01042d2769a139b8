"""`weights.gqsa.safetensors`: the group-sparse weights in BSR form, and its reader.

Per weight `w` (rows = output channels, groups along the reduction dim):
- `w.row_ptr` uint16 (int32 past 65535 kept groups) [rows + 1]: row r's kept groups are
  entries row_ptr[r]..row_ptr[r+1];
- `w.group_index` uint8 (uint16 past 256 groups per row) [kept]: each kept group's index;
- `w.codes` uint8 [kept, ceil(group_size * bits / 8)]: its codes, bit-packed low first;
- `w.scales` float16 [kept]; `w.zero_points` uint8 [ceil(kept * bits / 8)], bit-packed
  (asymmetric only).
The header's metadata holds each weight's shape, bits, group size and symmetry. `read`
rebuilds the dense weights bit-exactly as the ONNX model decodes them (its scales are
these fp16 values, widened), and `stored_bits` counts what the file holds per weight.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mapper.compression.codes import GroupCodes, pack_bits, unpack_bits

ARTIFACT = "weights.gqsa.safetensors"
_META_KEY = "mapper.gqsa"


def _index_dtype(groups: int) -> type[np.unsignedinteger]:
    return np.uint8 if groups <= 256 else np.uint16


def bsr_arrays(name: str, codes: GroupCodes) -> dict[str, np.ndarray]:
    """The BSR arrays of one weight."""
    kept = codes.scales != 0
    counts = np.concatenate([[0], np.cumsum(kept.sum(axis=1))])
    row_ptr = counts.astype(np.uint16 if counts[-1] <= 0xFFFF else np.int32)
    rows, groups = np.nonzero(kept)
    padded = np.zeros((codes.rows, codes.groups * codes.group_size), dtype=np.uint8)
    padded[:, :codes.cols] = codes.codes
    blocks = padded.reshape(codes.rows, codes.groups, codes.group_size)[rows, groups]
    arrays = {f"{name}.row_ptr": row_ptr,
              f"{name}.group_index": groups.astype(_index_dtype(codes.groups)),
              f"{name}.codes": pack_bits(blocks, codes.bits),
              f"{name}.scales": codes.scales[rows, groups].astype(np.float16)}
    if codes.zero_points is not None:
        arrays[f"{name}.zero_points"] = pack_bits(codes.zero_points[rows, groups], codes.bits)
    return arrays


def write(path: Path, weights: Mapping[str, GroupCodes]) -> dict[str, int]:
    """Write every weight's BSR arrays; returns the bytes each weight takes in the file."""
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    meta: dict[str, dict[str, object]] = {}
    sizes: dict[str, int] = {}
    for name, codes in weights.items():
        arrays = bsr_arrays(name, codes)
        tensors.update(arrays)
        sizes[name] = sum(a.nbytes for a in arrays.values())
        meta[name] = {"rows": codes.rows, "cols": codes.cols, "bits": codes.bits,
                      "group_size": codes.group_size, "symmetric": codes.symmetric}
    save_file(tensors, str(path), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    return sizes


def read(path: Path) -> dict[str, np.ndarray]:
    """Every weight of the artifact as dense float32 [rows, cols] (row layout)."""
    return {name: codes.dequantize() for name, codes in read_codes(path).items()}


def read_codes(path: Path) -> dict[str, GroupCodes]:
    """Every weight of the artifact as GroupCodes (pruned groups: scale 0)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        meta = json.loads((handle.metadata() or {})[_META_KEY])
        arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    found = {}
    for name, info in meta.items():
        rows, cols, bits = int(info["rows"]), int(info["cols"]), int(info["bits"])
        group = int(info["group_size"])
        groups = -(-cols // group)
        row_ptr = arrays[f"{name}.row_ptr"].astype(np.int64)
        index = arrays[f"{name}.group_index"].astype(np.int64)
        kept = index.size
        row_of = np.repeat(np.arange(rows), np.diff(row_ptr))
        blocks = unpack_bits(arrays[f"{name}.codes"], bits, group)
        padded = np.zeros((rows, groups, group), dtype=np.uint8)
        scales = np.zeros((rows, groups), dtype=np.float32)
        zero_points = None
        if not info["symmetric"]:
            zero_points = np.full((rows, groups), 1 << (bits - 1), dtype=np.uint8)
            zero_points[row_of, index] = unpack_bits(arrays[f"{name}.zero_points"][None, :],
                                                     bits, kept)[0]
        padded[row_of, index] = blocks
        scales[row_of, index] = arrays[f"{name}.scales"].astype(np.float32)
        found[name] = GroupCodes(codes=padded.reshape(rows, -1)[:, :cols], scales=scales,
                                 zero_points=zero_points, bits=bits, group_size=group)
    return found


def stored_bytes(path: Path) -> dict[str, int]:
    """Bytes of each weight's arrays in the artifact (what bits_per_weight counts)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        meta = json.loads((handle.metadata() or {})[_META_KEY])
        sizes = {name: 0 for name in meta}
        for key in handle.keys():  # noqa: SIM118
            owner = key.rsplit(".", 1)[0]
            if owner in sizes:
                sizes[owner] += handle.get_tensor(key).nbytes
    return sizes

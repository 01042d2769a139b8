"""Y = X·deq(Q) + (X·L1)·L2 in a model onnxruntime runs.

- Int grid: Q as com.microsoft.MatMulNBits (mapper.compression.emit).
- NF grid: Q as bit-packed NF codes, decoded in standard ONNX: the level table is gathered
  and multiplied by the block scales, and the block scales themselves are decoded in-graph
  from their b0-bit codes, the per-group steps (second-level scale / (2**b0 - 1), float32
  holding a value of the config's scale dtype) and the fp32 offset: b + b0/B0 + 32/(B0·B1)
  bits per weight plus small constant tables, counted exactly by grid.storage_bits;
  onnxruntime folds the decode once, at load.
- The low-rank part: `<weight>.lora_A` [in, r] and `<weight>.lora_B` [r, out] as named
  float32 initializers, two MatMuls and an Add after the quantized op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from mapper.compression.codes import GroupCodes
from mapper.compression.emit import (
    _tensor,
    feed_decoded,
    float_type_of,
    lut_decode,
    rewrite,
)
from mapper.compression.sites import WeightSite
from mapper.passes.lqlora.nf import NfWeight, nf_levels


@dataclass(frozen=True, eq=False)
class Emitted:
    """One site's decomposition as emission takes it (row layout: L1 [out, r], L2 [r, in])."""

    site: WeightSite
    q: NfWeight | GroupCodes
    l1: np.ndarray
    l2: np.ndarray
    bnb4: bool = False  # an NF4 Q as com.microsoft.MatMulBnb4


def lora_names(weight: str) -> tuple[str, str]:
    """The initializer names of a weight's factors."""
    return f"{weight}.lora_A", f"{weight}.lora_B"


def _absmax_chain(w: str, q: NfWeight, float_type: int
                  ) -> tuple[list[NodeProto], list[TensorProto], str]:
    """Nodes decoding q's double-quantized block scales into `<w>.absmax` [rows, groups, 1]."""
    config = q.config
    steps = (q.scale_scales / np.float32((1 << config.scale_bits) - 1)).astype(np.float32)
    scale_codes = GroupCodes(
        codes=q.scale_codes[None, :], scales=steps[None, :], zero_points=None,
        bits=config.scale_bits, group_size=config.scale_block,
        levels=np.arange(1 << config.scale_bits, dtype=np.float32))
    prefix = f"{w}.absmax_codes"
    # The steps (second-level scale, a value of the config's scale dtype, over 2**b0 - 1)
    # are stored in float32: a half-precision constant would need a Cast on constants
    # alone, which the decode-chain rule of plans does not fuse into the weight.
    nodes, inits, decoded = lut_decode(prefix, scale_codes, float_type)
    offset = f"{w}.absmax_offset"
    shape = f"{w}.absmax_shape"
    inits += [numpy_helper.from_array(np.asarray([q.offset], np.float32), offset),
              numpy_helper.from_array(np.asarray([q.rows, q.cols // config.block, 1],
                                                 np.int64), shape)]
    nodes += [helper.make_node("Add", [decoded, offset], [f"{w}.absmax_flat"],
                               name=f"{w}.absmax_offset"),
              helper.make_node("Reshape", [f"{w}.absmax_flat", shape], [f"{w}.absmax"],
                               name=f"{w}.absmax")]
    return nodes, inits, f"{w}.absmax"


def _nf_site(site: WeightSite, q: NfWeight, original: NodeProto, model: ModelProto
             ) -> tuple[list[NodeProto], list[TensorProto]]:
    float_type = float_type_of(model, site.output)
    absmax_nodes, absmax_inits, absmax = _absmax_chain(site.weight, q, float_type)
    codes = GroupCodes(codes=q.codes, scales=q.block_scales(), zero_points=None,
                       bits=q.config.bits, group_size=q.config.block,
                       levels=nf_levels(q.config.bits))
    nodes, inits, rows_tensor = lut_decode(site.weight, codes, float_type, scales=absmax)
    return absmax_nodes + nodes + feed_decoded(site, rows_tensor, original), \
        absmax_inits + inits


def _bnb4_site(site: WeightSite, q: NfWeight) -> tuple[list[NodeProto], list[TensorProto]]:
    """An NF4 MatMul weight as MatMulBnb4: W [out, in] row-major, two codes a byte (the
    first in the high nibble, as bitsandbytes packs), one float32 absmax per block: the
    double-quantized scales decoded at emission, so the values are exactly Q's."""
    flat = q.codes.ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = ((flat[0::2] << 4) | flat[1::2]).astype(np.uint8)
    absmax = q.block_scales().ravel().astype(np.float32)
    inits = [numpy_helper.from_array(packed, site.weight),
             numpy_helper.from_array(absmax, f"{site.weight}.absmax")]
    node = helper.make_node("MatMulBnb4", [site.activation, site.weight, f"{site.weight}.absmax"],
                            [site.output], name=site.node, domain="com.microsoft",
                            K=site.cols, N=site.rows, block_size=q.config.block, quant_type=1)
    return [node], inits


def emit(model: ModelProto, items: Sequence[Emitted]) -> ModelProto:
    """A copy of `model` with every item's Q in its grid's format and its factors added."""
    ints = [(i.site, i.q) for i in items if isinstance(i.q, GroupCodes)]
    result = rewrite(model, ints, "matmulnbits") if ints else _copy(model)
    nf_items = {i.site.node: i for i in items if isinstance(i.q, NfWeight)}
    if nf_items:
        result = _nf_rewrite(result, nf_items)
        if any(i.bnb4 for i in nf_items.values()) and not any(
                e.domain == "com.microsoft" for e in result.opset_import):
            result.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _add_factors(result, [i for i in items if i.l1.shape[1] > 0])
    return result


def _copy(model: ModelProto) -> ModelProto:
    copy = ModelProto()
    copy.CopyFrom(model)
    return copy


def _nf_rewrite(model: ModelProto, items: dict[str, Emitted]) -> ModelProto:
    from mapper.compression.emit import _upgrade_for_lut

    result = _upgrade_for_lut(model)
    graph = result.graph
    replaced = {i.site.weight for i in items.values()}
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []
    for node in graph.node:
        item = items.get(node.name)
        if item is None:
            nodes.append(node)
            continue
        assert isinstance(item.q, NfWeight)
        if item.bnb4:
            made, made_inits = _bnb4_site(item.site, item.q)
        else:
            made, made_inits = _nf_site(item.site, item.q, node, result)
        nodes += made
        inits += made_inits
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + inits)
    del graph.node[:]
    graph.node.extend(nodes)
    return result


def _add_factors(model: ModelProto, items: Sequence[Emitted]) -> None:
    """After each item's op: out = base + (X·lora_A)·lora_B."""
    graph = model.graph
    by_output = {i.site.output: i for i in items}
    nodes: list[NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        for index, out in enumerate(node.output):
            item = by_output.get(out)
            if item is None or node.name != item.site.node:
                continue
            site = item.site
            a_name, b_name = lora_names(site.weight)
            float_type = float_type_of(model, site.output)
            graph.initializer.extend([
                _tensor(np.ascontiguousarray(item.l2.T), a_name, float_type),
                _tensor(np.ascontiguousarray(item.l1.T), b_name, float_type)])
            base = f"{out}.quantized"
            node.output[index] = base
            nodes += [
                helper.make_node("MatMul", [site.activation, a_name], [f"{out}.lora_down"],
                                 name=f"{site.node}.lora_A"),
                helper.make_node("MatMul", [f"{out}.lora_down", b_name], [f"{out}.lora_up"],
                                 name=f"{site.node}.lora_B"),
                helper.make_node("Add", [base, f"{out}.lora_up"], [out],
                                 name=f"{site.node}.lora_add")]
    del graph.node[:]
    graph.node.extend(nodes)

"""MoE layer detection across the graph shapes torch (dynamo and TorchScript) and hand-written
exporters produce: dense gated, sparse index dispatch, SwiGLU, batched experts, Switch top-1,
Gemm routers; and TopK nodes that are not MoE gates."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from mapper.graph import GraphView
from mapper.loader import ShapeSpec, load_model
from mapper.passes.moe.detect import detect_moe_layers


def _detect(path):
    loaded = load_model(path, ShapeSpec({}, {}), None)
    return detect_moe_layers(loaded.model, GraphView.from_model(loaded.model))


def _gemm_moe(tokens=12, hidden=8, experts=4, k=1, ffn=16) -> onnx.ModelProto:
    """Hand-built dense MoE on flattened tokens: Gemm router and Gemm experts (transB=1)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((experts, hidden)).astype(np.float32),
                                     "router_w"),
             numpy_helper.from_array(np.array([k], np.int64), "k"),
             numpy_helper.from_array(np.zeros((tokens, experts), np.float32), "zeros"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([-1], np.int64), "axis_last")]
    nodes = [helper.make_node("Gemm", ["x", "router_w"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
             helper.make_node("TopK", ["probs", "k"], ["vals", "idx"], axis=-1),
             helper.make_node("ScatterElements", ["zeros", "idx", "vals"], ["gates"], axis=1)]
    outs = []
    for e in range(experts):
        inits += [numpy_helper.from_array(rng.standard_normal((ffn, hidden)).astype(np.float32),
                                          f"experts.{e}.w1"),
                  numpy_helper.from_array(rng.standard_normal((hidden, ffn)).astype(np.float32),
                                          f"experts.{e}.w2")]
        nodes += [helper.make_node("Gemm", ["x", f"experts.{e}.w1"], [f"h{e}"], transB=1),
                  helper.make_node("Relu", [f"h{e}"], [f"r{e}"]),
                  helper.make_node("Gemm", [f"r{e}", f"experts.{e}.w2"], [f"o{e}"], transB=1),
                  helper.make_node("Unsqueeze", [f"o{e}", "axis1"], [f"u{e}"])]
        outs.append(f"u{e}")
    nodes += [helper.make_node("Concat", outs, ["stack"], axis=1),
              helper.make_node("Unsqueeze", ["gates", "axis_last"], ["g3"]),
              helper.make_node("Mul", ["stack", "g3"], ["weighted"]),
              helper.make_node("ReduceSum", ["weighted", "axis1"], ["moe"], keepdims=0),
              helper.make_node("Add", ["x", "moe"], ["y"])]
    graph = helper.make_graph(
        nodes, "gemm_moe", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          [tokens, hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, hidden])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _classifier_topk() -> onnx.ModelProto:
    """A classifier head with top-5: MatMul -> Softmax -> TopK, but no experts after it."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
         helper.make_node("TopK", ["probs", "k"], ["scores", "classes"], axis=-1)],
        "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("classes", TensorProto.INT64, [1, 5])],
        initializer=[numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32),
                                             "w"),
                     numpy_helper.from_array(np.array([5], np.int64), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_reference_moe_transformer():
    meta = models.metadata("moe_transformer")["moe"]
    detection = _detect(models.build("moe_transformer"))
    assert [layer.topk for layer in detection.layers] == [m["topk_node"] for m in meta["layers"]]
    assert [layer.indices for layer in detection.layers] == \
        [m["topk_indices"] for m in meta["layers"]]
    for layer, expected in zip(detection.layers, meta["layers"], strict=True):
        assert layer.num_experts == meta["num_experts"] and layer.top_k == meta["top_k"]
        assert layer.router == expected["router_node"]
        assert layer.tokens == meta["tokens_per_layer"] and layer.hidden_size == 128
        assert len(layer.experts) == 8 and not layer.batched
        assert layer.expert_weight_bytes == 2 * 128 * 512 * 4  # fc1 + fc2, fp32
        assert layer.expert_flops_per_token == 2 * 2 * 128 * 512
    assert [layer.name for layer in detection.layers] == ["blocks.0.moe", "blocks.1.moe"]


def test_gemm_router_and_experts(tmp_path):
    path = tmp_path / "gemm.onnx"
    onnx.save(_gemm_moe(), str(path))
    detection = _detect(path)
    assert len(detection.layers) == 1
    layer = detection.layers[0]
    assert (layer.num_experts, layer.top_k, layer.tokens, layer.hidden_size) == (4, 1, 12, 8)
    assert layer.name == "layer0.moe" and layer.expert_weight_bytes == 2 * 8 * 16 * 4


def test_topk_without_experts_is_not_moe(tmp_path):
    path = tmp_path / "cls.onnx"
    onnx.save(_classifier_topk(), str(path))
    detection = _detect(path)
    assert detection.layers == ()
    assert detection.rejected and "not 10 expert subgraphs" in detection.rejected[0]


def test_dense_transformer_has_no_moe():
    assert _detect(models.build("resnet_small")).layers == ()


# --- torch exports of other MoE shapes ---------------------------------------------------------


def _torch_forms():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from models.moe import MoEFFN

    class SwiGLU(nn.Module):
        def __init__(self, d, h):
            super().__init__()
            self.w1 = nn.Linear(d, h, bias=False)
            self.w3 = nn.Linear(d, h, bias=False)
            self.w2 = nn.Linear(h, d, bias=False)

        def forward(self, x):
            return self.w2(F.silu(self.w1(x)) * self.w3(x))

    class Sparse(nn.Module):
        """Mixtral-style: softmax, top-k, per-expert NonZero/gather/index_add dispatch."""

        def __init__(self, d=32, h=64, e=4, k=2):
            super().__init__()
            self.k = k
            self.gate = nn.Linear(d, e, bias=False)
            self.experts = nn.ModuleList(SwiGLU(d, h) for _ in range(e))

        def forward(self, x):
            b, t, d = x.shape
            x = x.reshape(-1, d)
            w, idx = torch.topk(torch.softmax(self.gate(x), dim=-1), self.k, dim=-1)
            w = w / w.sum(-1, keepdim=True)
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                tok, slot = torch.where(idx == e)
                out = out.index_add(0, tok, expert(x[tok]) * w[tok, slot].unsqueeze(-1))
            return out.reshape(b, t, d)

    class Batched(nn.Module):
        """Stacked expert weights [E, d, h] applied with bmm."""

        def __init__(self, d=32, h=64, e=4, k=2):
            super().__init__()
            self.k, self.e = k, e
            self.router = nn.Linear(d, e, bias=False)
            self.w1 = nn.Parameter(torch.randn(e, d, h) * 0.1)
            self.w2 = nn.Parameter(torch.randn(e, h, d) * 0.1)

        def forward(self, x):
            b, t, d = x.shape
            x = x.reshape(-1, d)
            probs = torch.softmax(self.router(x), -1)
            w, idx = torch.topk(probs, self.k, -1)
            gates = torch.zeros_like(probs).scatter(-1, idx, w)
            y = torch.bmm(F.gelu(torch.bmm(x.unsqueeze(0).expand(self.e, -1, -1), self.w1)),
                          self.w2)
            return (y * gates.t().unsqueeze(-1)).sum(0).reshape(b, t, d)

    class Switch(nn.Module):
        """Top-1 over router logits (Switch Transformer), sigmoid of the kept logit."""

        def __init__(self, d=32, h=64, e=4):
            super().__init__()
            self.router = nn.Linear(d, e)
            self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.ReLU(),
                                                       nn.Linear(h, d)) for _ in range(e))

        def forward(self, x):
            logits = self.router(x)
            v, idx = torch.topk(logits, 1, -1)
            gates = torch.zeros_like(logits).scatter(-1, idx, torch.sigmoid(v))
            return (gates.unsqueeze(-1) * torch.stack([m(x) for m in self.experts], -2)).sum(-2)

    class Block(nn.Module):
        def __init__(self, moe, d=32):
            super().__init__()
            self.ln = nn.LayerNorm(d)
            self.moe = moe
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            x = x + self.proj(x)
            return x + self.moe(self.ln(x))

    class Net(nn.Module):
        def __init__(self, make, d=32):
            super().__init__()
            self.emb = nn.Embedding(100, d)
            self.blocks = nn.Sequential(Block(make(), d), Block(make(), d))
            self.head = nn.Linear(d, 100)

        def forward(self, ids):
            return self.head(self.blocks(self.emb(ids)))

    return {"dense": (lambda: MoEFFN(32, 64, 4, 2), 2, 2), "sparse_swiglu": (Sparse, 2, 3),
            "batched": (Batched, 2, 2), "switch": (Switch, 1, 2)}, Net


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_torch_export_shapes(tmp_path, dynamo):
    import contextlib
    import io
    import warnings

    import torch

    forms, net = _torch_forms()
    for name, (make, k, matmuls) in forms.items():
        torch.manual_seed(0)
        model = net(make).eval()
        path = tmp_path / f"{name}.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randint(0, 100, (1, 16)),), str(path),
                              dynamo=dynamo, input_names=["ids"], output_names=["logits"],
                              **({} if dynamo else {"opset_version": 17}))
        detection = _detect(path)
        assert len(detection.layers) == 2, (name, detection.rejected)
        for layer in detection.layers:
            assert (layer.num_experts, layer.top_k, layer.tokens) == (4, k, 16), name
            assert layer.hidden_size == 32
            if name == "batched":
                assert layer.batched and len(layer.experts) == 1
            else:
                assert len(layer.experts) == 4
                assert all(len(piece) == matmuls for piece in layer.experts), name
            assert layer.expert_weight_bytes == matmuls * 32 * 64 * 4, name

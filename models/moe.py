"""A small Mixtral-style MoE transformer: router MatMul -> Softmax -> TopK(k=2) -> 8 expert MLPs."""

from __future__ import annotations

from typing import Any

import onnx
import torch
from torch import nn

from models.gpt import CausalSelfAttention, randomize_layernorms

VOCAB = 1000
D_MODEL = 128
N_HEADS = 4
N_LAYERS = 2
SEQ = 32
N_EXPERTS = 8
TOP_K = 2
EXPERT_HIDDEN = 4 * D_MODEL


class Expert(nn.Module):
    """One expert: Linear -> GELU -> Linear."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the expert MLP to [B, T, C] tokens."""
        return self.fc2(self.act(self.fc1(x)))


class MoEFFN(nn.Module):
    """Top-k gated mixture of experts, in the dense form that exports to a static graph.

    Every expert runs on every token and its output is weighted by a [tokens, experts] gate
    matrix that is zero outside each token's top-k; the gate matrix is built by scattering the
    renormalized TopK values at the TopK indices, so the router's TopK indices stay an ordinary
    graph tensor that a tracer can capture (no NonZero / data-dependent shapes).
    """

    def __init__(self, d_model: int, hidden: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(d_model, hidden) for _ in range(n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Route [B, T, C] tokens and combine the expert outputs with the gate weights."""
        # Everything stays [B, T, ...] so the router and the experts export as MatMul(+Add),
        # like the attention projections, rather than as Gemm on flattened tokens.
        probs = torch.softmax(self.router(x), dim=-1)  # [B, T, E]
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)  # [B, T, k]
        # Mixtral renormalizes the kept probabilities so each token's gates sum to 1.
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_w)  # [B, T, E]
        outs = torch.stack([expert(x) for expert in self.experts], dim=2)  # [B, T, E, C]
        return (gates.unsqueeze(-1) * outs).sum(dim=2)


class MoEBlock(nn.Module):
    """Pre-LayerNorm block with causal self-attention and an MoE feed-forward."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.attn = CausalSelfAttention(D_MODEL, N_HEADS, SEQ)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.moe = MoEFFN(D_MODEL, EXPERT_HIDDEN, N_EXPERTS, TOP_K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        x = x + self.attn(self.ln1(x))
        return x + self.moe(self.ln2(x))


class MoETransformer(nn.Module):
    """Token + position embeddings, two MoE blocks, final LayerNorm, LM head."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB, D_MODEL)
        self.pos_emb = nn.Embedding(SEQ, D_MODEL)
        self.blocks = nn.Sequential(*(MoEBlock() for _ in range(N_LAYERS)))
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.lm_head = nn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return logits [B, T, vocab] for token ids [B, T]."""
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        return self.lm_head(self.ln_f(self.blocks(x)))


def moe_transformer() -> nn.Module:
    """The `moe_transformer` reference model in eval mode (caller seeds torch)."""
    model = MoETransformer()
    randomize_layernorms(model)
    return model.eval()


def annotate(model: onnx.ModelProto) -> dict[str, Any]:
    """Locate each MoE layer's router TopK and expert weights in the exported graph.

    The MoE pass captures routes from the TopK indices output, so the metadata names it.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {t.name for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type != "TopK":
            continue
        softmax = producers.get(node.input[0])
        router = producers.get(softmax.input[0]) if softmax is not None else None
        if softmax is None or softmax.op_type != "Softmax" or router is None:
            raise RuntimeError(f"TopK {node.name} is not fed by a router Softmax")
        if router.op_type not in ("MatMul", "Gemm"):
            raise RuntimeError(f"TopK {node.name}: router is {router.op_type}, not MatMul/Gemm")
        scatter = next(
            (c for c in consumers.get(node.output[1], []) if c.op_type == "ScatterElements"),
            None,
        )
        layer = len(layers)
        prefix = f"blocks.{layer}.moe.experts."
        experts = [
            {
                "fc1": _weight(initializers, f"{prefix}{e}.fc1.weight"),
                "fc2": _weight(initializers, f"{prefix}{e}.fc2.weight"),
            }
            for e in range(N_EXPERTS)
        ]
        layers.append(
            {
                "layer": layer,
                "router_node": router.name,
                "router_weight": next((i for i in router.input if i in initializers), None),
                "softmax_node": softmax.name,
                "topk_node": node.name,
                "topk_values": node.output[0],
                "topk_indices": node.output[1],
                "gate_scatter_node": scatter.name if scatter is not None else None,
                "experts": experts,
            }
        )
    if len(layers) != N_LAYERS:
        raise RuntimeError(f"found {len(layers)} router TopK nodes, expected {N_LAYERS}")
    return {
        "moe": {
            "num_experts": N_EXPERTS,
            "top_k": TOP_K,
            "tokens_per_layer": SEQ,
            "pattern": (
                "router MatMul(ln2(x), router.weight.T) -> Softmax(axis=-1) -> "
                "TopK(K=2, axis=-1): values -> ReduceSum + Div (renormalize); "
                "indices [1, 32, 2] int64 -> ScatterElements(zeros [1, 32, 8], indices, "
                "values, axis=-1) = gates; every expert is MatMul+Add -> Gelu -> MatMul+Add "
                "on all tokens, Unsqueeze+Concat -> [1, 32, 8, 128], Mul by the gates, "
                "ReduceSum over experts"
            ),
            "layers": layers,
        }
    }


def _weight(initializers: set[str], param: str) -> str:
    # Dynamo names the folded transpose "<param>.T"; the legacy exporter keeps the name.
    for name in (f"{param}.T", param):
        if name in initializers:
            return name
    raise RuntimeError(f"expert weight {param} not found in the exported graph")

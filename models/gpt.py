"""A GPT-style decoder with attention written out as MatMul/Softmax and an explicit causal mask."""

from __future__ import annotations

import math

import torch
from torch import nn

VOCAB = 1000
D_MODEL = 256
N_HEADS = 4
N_LAYERS = 4
MAX_SEQ = 64


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; the mask is a buffer sliced to the (dynamic) length."""

    def __init__(self, d_model: int, n_heads: int, max_seq: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        # A boolean lower-triangular buffer rather than F.scaled_dot_product_attention: the
        # exported graph then shows MatMul -> Where(mask) -> Softmax -> MatMul, which is what
        # the memory and tiling passes should see.
        mask = torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool))
        self.register_buffer("causal_mask", mask.view(1, 1, max_seq, max_seq), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over [B, T, C] with each position seeing itself and the past."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        mask = self.causal_mask[:, :, :t, :t]
        scores = scores.masked_fill(~mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, c)
        return self.proj(y)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, max_seq: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, max_seq)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPTDecoder(nn.Module):
    """Token + learned position embeddings, N blocks, final LayerNorm, untied LM head."""

    def __init__(
        self,
        vocab: int = VOCAB,
        d_model: int = D_MODEL,
        n_heads: int = N_HEADS,
        n_layers: int = N_LAYERS,
        max_seq: int = MAX_SEQ,
    ) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Embedding(max_seq, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, n_heads, max_seq) for _ in range(n_layers)))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return next-token logits [B, T, vocab] for token ids [B, T]."""
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        return self.lm_head(self.ln_f(self.blocks(x)))


def randomize_layernorms(model: nn.Module) -> None:
    """Give every LayerNorm a non-trivial affine, as a trained model has.

    Fresh LayerNorms are all ones/zeros; the ONNX optimizer would then merge their identical
    initializers, so different layers would share (and be reported under) one weight name.
    """
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            with torch.no_grad():
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.02)


def gpt_decoder() -> nn.Module:
    """The `gpt_decoder` reference model in eval mode (caller seeds torch)."""
    model = GPTDecoder()
    randomize_layernorms(model)
    return model.eval()

"""How close a rewritten model stays to the original, on held-out inputs, in onnxruntime.

Per output: cosine (mean and worst over the samples), max abs and max relative error. An
output that holds next-token logits (rank 3, `[batch, tokens, vocab]`, vocab matching a
token-id input's embedding) also gets perplexity on the input's own next tokens and top-1
agreement with the original. The headline metric is perplexity where there are logits,
else the mean cosine over outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import ModelProto

from mapper.calibration import Feed, Session, vocab_sizes
from mapper.errors import QualityGateError
from mapper.options import Degradation


@dataclass(frozen=True)
class OutputQuality:
    """One output compared over every evaluation sample."""

    name: str
    cosine_mean: float
    cosine_min: float
    max_abs: float
    max_rel: float
    perplexity: float | None = None
    reference_perplexity: float | None = None
    top1: float | None = None


@dataclass(frozen=True)
class Quality:
    """The comparison of a rewritten model with its original."""

    outputs: tuple[OutputQuality, ...]
    inputs: str
    samples: int

    @property
    def metric(self) -> str:
        """perplexity where an output is next-token logits, else cosine."""
        return "perplexity" if self._lm() is not None else "cosine"

    def _lm(self) -> OutputQuality | None:
        return next((o for o in self.outputs if o.perplexity is not None), None)

    def degradation(self, metric: str) -> float | None:
        """How far the rewritten model is below the original on `metric` (None: not
        measured here): cosine 1 - mean cosine; perplexity its relative rise; top1 the
        share of next tokens that changed."""
        lm = self._lm()
        if metric == "cosine":
            return 1.0 - min(o.cosine_mean for o in self.outputs)
        if lm is None:
            return None
        if metric == "perplexity":
            assert lm.perplexity is not None and lm.reference_perplexity is not None
            return lm.perplexity / lm.reference_perplexity - 1.0
        return 1.0 - (lm.top1 or 0.0)

    def to_section(self) -> dict[str, Any]:
        """The contract's `compression.quality` object (plus every output's figures)."""
        lm = self._lm()
        if lm is not None:
            head = {"metric": "perplexity", "mean": lm.perplexity,
                    "min": lm.top1, "reference": lm.reference_perplexity}
        else:
            head = {"metric": "cosine",
                    "mean": float(np.mean([o.cosine_mean for o in self.outputs])),
                    "min": min(o.cosine_min for o in self.outputs), "reference": 1.0}
        return {**head, "inputs": self.inputs, "eval_samples": self.samples,
                "outputs": [{"name": o.name, "cosine_mean": o.cosine_mean,
                             "cosine_min": o.cosine_min, "max_abs": o.max_abs,
                             "max_rel": o.max_rel, "perplexity": o.perplexity,
                             "reference_perplexity": o.reference_perplexity, "top1": o.top1}
                            for o in self.outputs]}

    def table(self) -> str:
        """The figures as a plain-text table (what the quality gate prints)."""
        lines = [f"{'output':<28} {'cosine mean':>12} {'cosine min':>11} {'max abs':>10} "
                 f"{'perplexity':>11} {'reference':>10} {'top-1':>7}"]
        for o in self.outputs:
            def num(value: float | None, width: int, spec: str) -> str:
                return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"
            lines.append(f"{o.name[:28]:<28} {o.cosine_mean:>12.6f} {o.cosine_min:>11.6f} "
                         f"{o.max_abs:>10.3e} {num(o.perplexity, 11, '.3f')} "
                         f"{num(o.reference_perplexity, 10, '.3f')} {num(o.top1, 7, '.4f')}")
        return "\n".join(lines)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norm)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _next_token_nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Summed negative log-likelihood of each next token, and how many were scored."""
    logits = logits.reshape(-1, logits.shape[-2], logits.shape[-1])
    ids = ids.reshape(logits.shape[0], -1)
    log_probs = _log_softmax(logits[:, :-1])
    targets = ids[:, 1:]
    picked = np.take_along_axis(log_probs, targets[..., None].astype(np.int64), axis=-1)
    return float(-picked.sum()), int(targets.size)


def _token_input(model: ModelProto, vocab: int) -> str | None:
    for name, size in vocab_sizes(model).items():
        if size == vocab:
            return name
    return None


def measure(original: ModelProto, rewritten: ModelProto, feeds: Sequence[Feed],
            inputs: str) -> Quality:
    """Compare `rewritten` with `original` on `feeds` (held out from any calibration)."""
    reference = Session(original).run_all(feeds)
    candidate = Session(rewritten).run_all(feeds)
    names = [out.name for out in original.graph.output]
    results = []
    for name in names:
        cosines, max_abs, max_rel = [], 0.0, 0.0
        nll_ref = nll_new = 0.0
        tokens = agree = 0
        token_input: str | None = None
        first = reference[0][name]
        if first.ndim == 3 and first.shape[-1] >= 100:
            token_input = _token_input(original, int(first.shape[-1]))
        for feed, ref_out, new_out in zip(feeds, reference, candidate, strict=True):
            a, b = ref_out[name], new_out[name]
            if not np.issubdtype(a.dtype, np.floating):
                cosines.append(1.0 if np.array_equal(a, b) else 0.0)
                continue
            cosines.append(_cosine(a, b))
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            scale = np.abs(a.astype(np.float64)).max(initial=0.0)
            max_rel = max(max_rel, float(diff.max(initial=0.0) / scale) if scale else 0.0)
            if token_input is not None:
                ids = np.asarray(feed[token_input])
                ref_nll, count = _next_token_nll(a, ids)
                new_nll, _ = _next_token_nll(b, ids)
                nll_ref += ref_nll
                nll_new += new_nll
                tokens += count
                agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        lm = token_input is not None and tokens > 0
        results.append(OutputQuality(
            name=name, cosine_mean=float(np.mean(cosines)), cosine_min=float(np.min(cosines)),
            max_abs=max_abs, max_rel=max_rel,
            perplexity=float(np.exp(nll_new / tokens)) if lm else None,
            reference_perplexity=float(np.exp(nll_ref / tokens)) if lm else None,
            top1=agree / sum(int(np.prod(r[name].shape[:-1])) for r in reference)
            if lm else None))
    return Quality(outputs=tuple(results), inputs=inputs, samples=len(feeds))


def gate(quality: Quality, limit: Degradation | None, method: str) -> None:
    """Exit 4 (QualityGateError, with the figures) when quality drops past `limit`."""
    if limit is None:
        return
    measured = quality.degradation(limit.metric)
    if measured is None:
        raise QualityGateError(
            f"--max-degradation {limit.metric}={limit.limit:g}: the model has no next-token "
            f"logits to measure {limit.metric} on; use cosine instead\n{quality.table()}")
    if measured > limit.limit:
        raise QualityGateError(
            f"--compress {method}: {limit.metric} degraded by {measured:.6g}, more than "
            f"--max-degradation {limit.limit:g}; nothing was written\n{quality.table()}")


def summary_line(quality: Quality) -> str:
    """One line for the pass's notes."""
    section = quality.to_section()
    if section["metric"] == "perplexity":
        return (f"perplexity {section['mean']:.3f} (original {section['reference']:.3f}), "
                f"top-1 agreement {section['min']:.4f} on {quality.samples} held-out "
                f"{quality.inputs} inputs")
    return (f"output cosine {section['mean']:.6f} (worst {section['min']:.6f}) on "
            f"{quality.samples} held-out {quality.inputs} inputs")


def as_mapping(quality: Quality) -> Mapping[str, Any]:
    """The quality figures as the plan section holds them."""
    return quality.to_section()

"""The `compression` plan section (CONTRACTS.md section 7) and its report section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from mapper.formats import WeightFormat
from mapper.report_parts import html_table
from mapper.units import format_size


def weight_entry(name: str, node: str, method: str, fmt: str, stored: WeightFormat,
                 shape: Sequence[int], rel_error: float, dense_bytes: int) -> dict[str, Any]:
    """One `compression.weights` entry; bits per weight come from the stored initializers."""
    return {"name": name, "node": node, "shape": list(shape), "method": method,
            "format": fmt, "bits": stored.bits, "group_size": stored.group_size,
            "symmetric": stored.symmetric, "sparsity": round(stored.sparsity, 6),
            "rank": stored.rank, "bits_per_weight": round(stored.bits_per_weight, 6),
            "rel_error": rel_error, "stored_bytes": stored.stored_bytes + stored.factor_bytes,
            "dense_bytes": dense_bytes, "parts": list(stored.parts),
            "factors": list(stored.factors)}


def compression_section(method: str, weights: Sequence[dict[str, Any]],
                        quality: Mapping[str, Any], artifacts: Sequence[str],
                        settings: Mapping[str, Any], skipped: Sequence[str],
                        weight_bytes_before: int, weight_bytes_after: int) -> dict[str, Any]:
    """The whole section: contract fields first, then the totals the report shows."""
    elements = sum(_elements(w) for w in weights)
    bits = sum(w["bits_per_weight"] * _elements(w) for w in weights)
    return {"method": method, "weights": list(weights),
            "bits_per_weight": round(bits / elements, 6) if elements else 0.0,
            "quality": dict(quality), "artifacts": list(artifacts),
            "settings": dict(settings), "skipped": list(skipped),
            "weight_bytes_before": weight_bytes_before,
            "weight_bytes_after": weight_bytes_after}


def _elements(weight: Mapping[str, Any]) -> int:
    count = 1
    for dim in weight["shape"]:
        count *= int(dim)
    return count


def report_section(plan: Mapping[str, Any]) -> str:
    """The report's compression section: totals, quality, and a row per weight."""
    section = plan.get("compression")
    if not section:
        return ""
    quality = section.get("quality") or {}
    before, after = section["weight_bytes_before"], section["weight_bytes_after"]
    cards = [("method", section["method"]),
             ("bits per weight", f"{section['bits_per_weight']:.3f}"),
             ("weights stored", f"{format_size(after)} (dense {format_size(before)}, "
                                f"{after / before:.1%})" if before else format_size(after))]
    if quality.get("metric") == "perplexity":
        cards.append(("perplexity", f"{quality['mean']:.3f} (original "
                                    f"{quality['reference']:.3f})"))
        cards.append(("top-1 agreement", f"{quality['min']:.4f}"))
    elif quality:
        cards.append(("output cosine", f"{quality['mean']:.6f} (worst {quality['min']:.6f})"))
    html = ["<h2>Compression</h2><div class='cards'>"]
    html += [f"<div class='card'>{escape(label)}<b>{escape(str(value))}</b></div>"
             for label, value in cards]
    html.append("</div>")
    html.append(f"<p class='muted'>Quality measured on {quality.get('eval_samples', 0)} "
                f"held-out {escape(str(quality.get('inputs', '')))} inputs, disjoint from the "
                "calibration inputs. Every later pass and the estimate price the stored "
                "bytes below: memory traffic, arena, kernel B-operand bytes and per-op "
                "time.</p>")
    outputs = quality.get("outputs") or []
    if outputs:
        html.append(html_table(
            ["output", "cosine mean", "cosine min", "max abs", "perplexity", "original",
             "top-1"],
            [[o["name"], f"{o['cosine_mean']:.6f}", f"{o['cosine_min']:.6f}",
              f"{o['max_abs']:.3e}", _opt(o.get("perplexity")),
              _opt(o.get("reference_perplexity")), _opt(o.get("top1"), ".4f")]
             for o in outputs], numeric={1, 2, 3, 4, 5, 6}))
    rows = [[w["name"], w["format"], w["bits"], w["group_size"],
             f"{w['sparsity']:.2f}", w["rank"], f"{w['bits_per_weight']:.3f}",
             f"{w['rel_error']:.4f}", format_size(w["dense_bytes"]),
             format_size(w["stored_bytes"])] for w in section["weights"]]
    html.append("<h3>Weights</h3>")
    html.append(html_table(["weight", "format", "bits", "group", "sparsity", "rank",
                            "bits/weight", "rel. error", "dense", "stored"], rows,
                           numeric={2, 3, 4, 5, 6, 7, 8, 9}))
    if section.get("lqlora"):
        html.append(_lqlora_html(section))
    if section.get("skipped"):
        items = "".join(f"<li>{escape(note)}</li>" for note in section["skipped"][:50])
        html.append(f"<p class='muted'>Left dense:</p><ul class='muted'>{items}</ul>")
    return "".join(html)


def _lqlora_html(section: Mapping[str, Any]) -> str:
    """LQ-LoRA's part: the budget and the ILP, then per weight its config and errors."""
    details = section["lqlora"]
    ilp = details["ilp"]
    uniform = ilp.get("best_uniform") or {}
    table = details["table"]
    lines = [
        "<h3>LQ-LoRA</h3><p>",
        f"Budget {details['budget_bits_per_weight']:.3f} bits per weight"
        f"{' (factors included)' if details['budget_includes_lora'] else ''}: Q stores "
        f"{details['bits_per_weight_q']:.3f}, the factors "
        f"{details['bits_per_weight_factors']:.3f}, total "
        f"{details['bits_per_weight_total']:.3f}. ILP {escape(ilp['status'])}: objective "
        f"{ilp['objective']:.6g}, bound {ilp['bound']:.6g}"
        + (f"; the best uniform config ({escape(str(uniform.get('config')))}) scores "
           f"{uniform['objective']:.6g}" if uniform else "")
        + f". Error table: {table['options']} options, {table['frontier']} on the "
        f"frontier, {table['decomposed']} decomposed exactly.",
        f" {escape(details.get('budget_note') or '')}</p>"]
    errors = {w["name"]: w for w in section["weights"]}
    rows = [[w["name"], w["config"], w["rank"],
             f"{errors[w['name']].get('rel_error_quantized_only', float('nan')):.4f}",
             f"{errors[w['name']]['rel_error']:.4f}", f"{w['bits_q']:.3f}",
             f"{w['bits_factors']:.3f}"] for w in details["weights"]]
    lines.append(html_table(["weight", "config", "rank", "rel. error (Q alone)",
                             "rel. error (Q + L1·L2)", "bits Q", "bits factors"], rows,
                            numeric={2, 3, 4, 5, 6}))
    return "".join(lines)


def _opt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)

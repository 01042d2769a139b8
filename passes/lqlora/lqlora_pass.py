"""LQ-LoRA pass: every selected weight becomes W ≈ Q + L1·L2 under a bits budget.

After "LQ-LoRA: Low-rank Plus Quantized Matrix Decomposition for Efficient Language Model
Finetuning" (Guo, Greengard, Xing, Kim; ICLR 2024). Q is quantized and frozen; L1·L2 is a
float32 low-rank part a fine-tune updates (written to adapters.safetensors, PEFT keys).
1. Each MatMul/Gemm weight's reconstruction error is weighted per input channel by the
   calibration inputs' RMS (`--error-weighting rms`; `xtx` is the diagonal of XᵀX, the
   proxy ONNX gives for the paper's Fisher weights, measured worse), relative to the
   weight's own weighted energy.
2. Per weight, every config of the grid (`--grid nf`: the paper's 432 NormalFloat configs
   with double-quantized scales; `--grid int`: MatMulNBits' integer groups) gets an error
   estimate; dominated configs are dropped and only the frontier near the ILP's picks is
   decomposed exactly (search.py).
3. A CP-SAT ILP picks one config per weight: least summed error with the average stored
   bits within `--bits` (the factors too with `--budget-includes-lora`, when the ILP may
   also drop a weight's factors), or, with `--bits auto`, within what the device holds.
4. With the configs chosen, each Q's codes are re-picked with GPTQ's error compensation
   on the calibration inputs, block by block through the already-compressed prefix (as
   GQSA's stage 1 does), its scales (so its config and bits) unchanged
   (compensate.py; `--compensation none` keeps the paper's round-to-nearest Q). Measured on
   MiniLM-L6 at 2.5 bits: cosine 0.508 -> 0.833 (0.800 with the original model's inputs
   instead of inputs through the compressed prefix).
5. Emission: Y = X·deq(Q) + (X·lora_A)·lora_B (emit.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mapper.calibration import Session, split_samples
from mapper.compression.activations import (
    ActivationTaps,
    blocks_in_order,
    decoded_initializer,
    gram,
)
from mapper.compression.base import (
    CompressionJob,
    Encoded,
    Encoding,
    Rewritten,
    Settings,
    WeightRewritePass,
    _keep_known_shapes,
    relative_error,
)
from mapper.compression.codes import GroupCodes
from mapper.compression.quality import gate, measure, summary_line
from mapper.compression.sites import WeightSite, find_sites, site_matrix
from mapper.errors import InfeasibleError, UserError
from mapper.formats import declare_format
from mapper.graph import GraphView
from mapper.options import CompileOptions
from mapper.passes.lqlora import adapters, search
from mapper.passes.lqlora.compensate import compensate
from mapper.passes.lqlora.decompose import default_rank
from mapper.passes.lqlora.emit import Emitted, emit, lora_names
from mapper.passes.lqlora.grid import Config, fits, grid, quantize_config, uses_bnb4
from mapper.passes.lqlora.nf import NfConfig, NfWeight, nf_levels
from mapper.pipeline import PassContext

# `--bits auto` leaves this share of the device's memory free (runtime, fragmentation).
AUTO_MARGIN = 0.10
# The formats each grid's NF codes may take; integer configs are always MatMulNBits.
_FORMATS = {"nf": ("lut", "bnb4"), "int": ("matmulnbits",), "mixed": ("lut", "bnb4")}


def _as_codes(q: NfWeight | GroupCodes) -> GroupCodes:
    """Q as group codes (an NF weight: its levels and decoded block scales)."""
    if isinstance(q, GroupCodes):
        return q
    return GroupCodes(codes=q.codes, scales=q.block_scales(), zero_points=None,
                      bits=q.config.bits, group_size=q.config.block,
                      levels=nf_levels(q.config.bits))


class LqloraPass(WeightRewritePass):
    """Low-rank plus quantized decomposition with a CP-SAT budget ILP over the configs."""

    name = "lqlora"
    config_field = "lqlora"
    description = ("low-rank plus quantized decomposition (LQ-LoRA): per-weight NF/int "
                   "configs chosen by a CP-SAT ILP under a bits budget, LoRA factors")

    def skip_reason(self, context: PassContext) -> str | None:
        """Skipped when no MatMul/Gemm weight is there to decompose."""
        sites, _ = find_sites(context.model, context.options.compression)
        if not any(s.kind != "gather" for s in sites):
            return "no MatMul/Gemm weight to decompose (or all excluded)"
        return None

    def settings(self, options: CompileOptions, sites: Sequence[WeightSite]) -> Settings:
        """The emission format, checked against the grid (the budget is checked later)."""
        config, lq = options.compression, options.lqlora
        allowed = _FORMATS[lq.grid]
        fmt = config.format or allowed[0]
        if fmt not in allowed:
            other = next((g for g, held in _FORMATS.items() if fmt in held), None)
            raise UserError(f"--format {fmt} cannot hold --grid {lq.grid} codes: they are "
                            f"emitted as {' or '.join(allowed)}; use --format {allowed[0]}"
                            + (f", or --grid {other}" if other else ""))
        if config.group_size is not None:
            raise UserError("--group-size does not apply to --compress lqlora: the ILP picks "
                            "each weight's block size from the grid (--grid nf|int|mixed)")
        return Settings(bits=0, group_size=16, symmetric=False, format=fmt)

    def encode(self, job: CompressionJob) -> Encoding:
        """Unused: `apply` runs the search and emission itself."""
        raise NotImplementedError

    def apply(self, context: PassContext) -> Rewritten:
        """Importance, search, ILP, emission, quality, gate, section."""
        options = context.options
        config, lq = options.compression, options.lqlora
        sites, skipped = find_sites(context.model, config)
        settings = self.settings(options, sites)
        configs = grid(lq.grid)
        matrices_sites = []
        for site in sites:
            if site.kind == "gather":
                skipped.append(f"{site.weight}: embedding table left dense (LQ-LoRA "
                               "decomposes MatMul/Gemm weights)")
            elif not any(fits(c, site.cols) for c in configs):
                skipped.append(f"{site.weight}: {site.cols} input channels fit no "
                               f"{lq.grid} block, left dense")
            else:
                matrices_sites.append(site)
        if not matrices_sites:
            raise UserError(f"--compress lqlora: no weight fits a {lq.grid} config; "
                            "every block size needs at least 16 input channels")
        for site in matrices_sites:
            if lq.rank is not None and lq.rank > min(site.rows, site.cols):
                raise UserError(f"--rank {lq.rank} exceeds min(rows, cols) = "
                                f"{min(site.rows, site.cols)} of weight {site.weight!r} "
                                f"({site.cols}x{site.rows}); choose at most "
                                f"{min(min(s.rows, s.cols) for s in matrices_sites)}")
        samples = split_samples(context.model, options.calib, config.calib_samples,
                                config.eval_samples, options.seed)
        importance = _channel_weights(context.model, matrices_sites, samples.calibration,
                                      lq.weighting)
        include = lq.budget_includes_lora or config.bits == "auto"
        matrices = []
        for site in matrices_sites:
            rank = lq.rank if lq.rank is not None else default_rank(site.rows, site.cols)
            ranks = (rank,) if not include or rank == 0 else (0, rank)
            weight = site_matrix(context.model, site)
            matrices.append(search.Matrix(site.weight, weight,
                                          _relative(weight, importance[site.activation]),
                                          ranks,
                                          bnb4=settings.format == "bnb4"
                                          and site.kind == "matmul"))
        elements = sum(m.elements for m in matrices)
        budget_bits, budget_note = self._budget(context, matrices_sites, matrices, configs,
                                                include, elements)
        try:
            found = search.search(matrices, configs, budget_bits, include,
                                  options.time_limit_s, options.seed)
        except ValueError:
            raise AssertionError("the budget was checked against the cheapest options") \
                from None
        emitted_q, compensation = self._compensate(context, matrices_sites, found, samples)
        items = [Emitted(site, emitted_q[site.weight], choice.decomposition.l1,
                         choice.decomposition.l2,
                         bnb4=choice.matrix.bnb4 and uses_bnb4(choice.option.config, "bnb4"))
                 for site, choice in zip(matrices_sites, found.choices, strict=True)]
        job = CompressionJob(model=context.model, view=context.view,
                             sites=tuple(matrices_sites), settings=settings, samples=samples,
                             options=options, hardware=context.hardware)
        model = self._emit(job, items, found)
        quality = measure(context.model, model, samples.evaluation, samples.label)
        gate(quality, config.max_degradation, self.name)
        encoded = [Encoded(item.site, _as_codes(item.q)) for item in items]
        artifact = adapters.adapters_bytes(items)
        artifacts = {adapters.ARTIFACT: artifact} if artifact is not None else {}
        encoding = Encoding(encoded, artifacts={}, details={})
        section = self.section(job, encoding, model, quality, skipped)
        section["artifacts"] = list(artifacts)
        by_name = {c.matrix.name: c for c in found.choices}
        for entry in section["weights"]:
            choice = by_name[entry["name"]]
            dense = (emitted_q[entry["name"]].dequantize()
                     + choice.decomposition.l1 @ choice.decomposition.l2)
            entry["rel_error"] = relative_error(choice.matrix.weight, dense)
            quant_only = quantize_config(choice.matrix.weight, choice.option.config)
            entry["rel_error_quantized_only"] = relative_error(choice.matrix.weight,
                                                               quant_only.dequantize())
        section["settings"] = {"bits": config.bits, "grid": lq.grid, "rank": lq.rank,
                               "budget_includes_lora": lq.budget_includes_lora,
                               "format": settings.format}
        section["lqlora"] = _details(found, budget_bits, elements, include, budget_note)
        section["lqlora"]["compensation"] = compensation
        bits_q = section["lqlora"]["bits_per_weight_q"]
        notes = (f"{len(items)} weights to Q at {bits_q:.3f} bits per weight "
                 f"({section['bits_per_weight']:.3f} with the factors; budget "
                 f"{budget_bits / elements:.3f}, {lq.grid} grid); ILP "
                 f"{found.assignment.status}; {summary_line(quality)}",
                 budget_note, *skipped[:20])
        return Rewritten(model=model, section=section, quality=quality,
                         notes=tuple(n for n in notes if n), artifacts=artifacts)

    def _compensate(self, context: PassContext, sites: Sequence[WeightSite],
                    found: search.SearchResult, samples) -> tuple[
                        dict[str, NfWeight | GroupCodes], dict[str, Any]]:
        """Each chosen Q with GPTQ-compensated codes where that lowers its layer's output
        error on the calibration inputs (--compensation gptq), and what it did."""
        chosen = {c.matrix.name: c.decomposition.q for c in found.choices}
        method = context.options.lqlora.compensation
        if method == "none":
            return chosen, {"method": "none"}
        # Block by block, each layer's inputs come through the model with every earlier
        # block already compressed, so later layers also absorb what earlier ones lost.
        taps = ActivationTaps(context.model, sites)
        feeds = list(samples.calibration)
        choices = {c.matrix.name: c for c in found.choices}
        decoded: dict[str, np.ndarray] = {}
        total_before = total_after = 0.0
        improved = 0
        for block in blocks_in_order(sites):
            inputs = taps.collect(feeds, sorted({s.activation for s in block}), decoded)
            for site in block:
                d = choices[site.weight].decomposition
                target = choices[site.weight].matrix.weight.astype(np.float32) - d.l1 @ d.l2
                q, before, after = compensate(d.q, target, gram(inputs[site.activation]))
                chosen[site.weight] = q
                total_before += before
                total_after += after
                improved += after < before
            for site in block:
                d = choices[site.weight].decomposition
                decoded[site.weight] = decoded_initializer(
                    site, chosen[site.weight].dequantize() + d.l1 @ d.l2)
        return chosen, {"method": method, "weights_improved": improved,
                        "output_error_before": total_before,
                        "output_error_after": total_after}

    def _budget(self, context: PassContext, sites: Sequence[WeightSite],
                matrices: Sequence[search.Matrix], configs: Sequence[Config], include: bool,
                elements: int) -> tuple[int, str]:
        """The budget in bits, and a note saying where it came from."""
        bits_value = context.options.compression.bits
        options = [search.options_bits_floor(m, configs, include) for m in matrices]
        minimum, maximum = sum(o[0] for o in options), sum(o[1] for o in options)
        if bits_value is None:
            raise UserError("--compress lqlora needs --bits: an average budget such as 2.75, "
                            "or auto (the best that fits the device)")
        if bits_value != "auto":
            budget = math.floor(float(bits_value) * elements)
            if budget < minimum:
                raise UserError(f"--bits {float(bits_value):g} is below the smallest config: "
                                f"the minimum is {minimum / elements:.3f} bits per weight "
                                f"on these weights{' with their factors' if include else ''}")
            return min(budget, maximum), ""
        from mapper.budgets import limit_of
        from mapper.passes.estimate import peak_device_bytes

        view = context.view
        holding, level = context.hardware.main_memory
        given = limit_of(context.options.budgets, "peak_device_bytes")
        sized = given is not None and given.limit is not None
        memory = int(given.limit) if sized else level.size
        source = f"--budget device_memory={given.given}" if sized else f"the {holding} of " \
            f"{context.hardware.name}"
        dense = sum(view.tensors[s.weight].size for s in sites)
        others = peak_device_bytes(view, view.model_order) - dense
        available = math.floor(memory * (1 - AUTO_MARGIN)) - others
        if available * 8 < minimum:
            raise InfeasibleError(
                f"--bits auto: even the smallest configs need {minimum / 8:.0f} B for these "
                f"weights, and {source} ({memory} B, less a {AUTO_MARGIN:.0%} margin and "
                f"{others} B of other weights and peak activations) leaves {available} B")
        budget = min(available * 8, maximum)
        note = (f"--bits auto: {budget / elements:.3f} bits per weight, factors included; "
                f"weights + peak activations fit {source} ({memory} B) with a "
                f"{AUTO_MARGIN:.0%} margin")
        return budget, note

    def _emit(self, job: CompressionJob, items: Sequence[Emitted],
              found: search.SearchResult):
        """The model with Q and the factors written, formats declared, normalized."""
        from mapper.loader import normalize

        model = emit(job.model, items)
        _keep_known_shapes(model, job.model)
        view = GraphView.from_model(model, job.view.precision)
        keys = {}
        for stored in view.formats.values():
            if stored.parts:
                keys[stored.parts[0]] = stored.name
        for item, choice in zip(items, found.choices, strict=True):
            key = keys.get(item.site.weight, item.site.weight)
            rank = int(item.l1.shape[1])
            config = choice.option.config
            fields: dict[str, Any] = {
                "scheme": "nf" if isinstance(config, NfConfig) else "int",
                "bits": config.bits, "group_size": config.block, "rank": rank,
                "symmetric": isinstance(config, NfConfig)}
            if rank:
                fields["factors"] = list(lora_names(item.site.weight))
            declare_format(model, key, fields)
        shapes = {inp.name: [d.dim_value for d in inp.type.tensor_type.shape.dim]
                  for inp in model.graph.input}
        return normalize(model, shapes, [], job.samples.calibration[0]
                         if job.samples.calibration else None)


def _relative(weight: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """Column weights scaled so that the weight's own weighted energy Σ w² · importance is 1:
    errors become relative to each layer's output, so the ILP trades bits between layers
    by how much of each layer's output they keep, not by raw activation magnitude (raw
    sums let the widest activations take every bit: measured on MiniLM-L6, 0.75 cosine at
    3.25 bits against 0.85 relative)."""
    energy = float((weight.astype(np.float64) ** 2 @ importance).sum())
    return importance / energy if energy > 0 else importance


def _channel_weights(model, sites: Sequence[WeightSite], feeds, weighting: str
                     ) -> dict[str, np.ndarray]:
    """Per input channel of every site's input, the weight of its reconstruction error.
    rms is the default: on MiniLM-L6 at 3.25 / 3.5 bits it gave 0.880 / 0.919 cosine where
    xtx gave 0.852 / 0.891 and none 0.871 / 0.917 (diag XᵀX lets a few outlier channels
    decide the allocation)."""
    energy = _column_energy(model, sites, feeds)
    if weighting == "xtx":
        return energy
    if weighting == "rms":
        return {tap: np.sqrt(value) for tap, value in energy.items()}
    return {tap: np.ones_like(value) for tap, value in energy.items()}


def _column_energy(model, sites: Sequence[WeightSite], feeds) -> dict[str, np.ndarray]:
    """Mean of x² per input channel of every site's input over the calibration samples
    (the diagonal of XᵀX / tokens), accumulated feed by feed."""
    taps = tuple(dict.fromkeys(s.activation for s in sites))
    session = Session(model, taps=taps)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(taps, 0)
    for feed in feeds:
        outputs = session.run(feed)
        for tap in taps:
            rows = outputs[tap].reshape(-1, outputs[tap].shape[-1]).astype(np.float64)
            sums[tap] = sums.get(tap, 0) + (rows * rows).sum(axis=0)
            counts[tap] += rows.shape[0]
    energy = {}
    for tap in taps:
        mean = sums[tap] / max(counts[tap], 1)
        # A channel never active still has weights worth keeping: floor it at a small share.
        floor = 1e-3 * float(mean.mean()) if mean.size and mean.mean() > 0 else 1.0
        energy[tap] = np.maximum(mean, floor)
    return energy


def _details(found: search.SearchResult, budget_bits: int, elements: int, include: bool,
             budget_note: str) -> dict[str, Any]:
    """The plan's `compression.lqlora`: the ILP, the table's cost, and per weight."""
    q_bits = sum(c.option.q_bits for c in found.choices)
    factor_bits = sum(c.option.factor_bits if c.decomposition.rank else 0
                      for c in found.choices)
    uniform = None
    if found.uniform is not None:
        option, error = found.uniform
        uniform = {"config": option.config.label(), "rank": option.rank, "objective": error}
    return {
        "budget_bits_per_weight": budget_bits / elements,
        "budget_includes_lora": include,
        "bits_per_weight_q": q_bits / elements,
        "bits_per_weight_factors": factor_bits / elements,
        "bits_per_weight_total": (q_bits + factor_bits) / elements,
        "ilp": {**found.assignment.to_dict(),
                "estimated_objective": found.estimated.objective,
                "best_uniform": uniform},
        "table": {"options": found.options, "frontier": found.frontier,
                  "decomposed": found.decomposed},
        "budget_note": budget_note,
        "weights": [{"name": c.matrix.name, "config": c.option.config.label(),
                     "config_bits_per_weight": (c.option.config.bits_per_weight()),
                     "rank": c.decomposition.rank,
                     "bits_q": c.option.q_bits / c.matrix.elements,
                     "bits_factors": (c.option.factor_bits / c.matrix.elements
                                      if c.decomposition.rank else 0.0),
                     "weighted_error": c.decomposition.error,
                     "iterations": c.decomposition.iterations}
                    for c in found.choices],
    }


__all__ = ["LqloraPass"]

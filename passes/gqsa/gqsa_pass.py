"""GQSA pass: group quantization with structured group sparsity, in two stages.

After "GQSA: Group Quantization and Sparsity for Accelerating LLM Inference" (Zeng et al.,
2024). A group is `--group-size` consecutive weights along the reduction dim of one output
channel; it is both the quantization group (one scale, one zero point) and the pruning
unit. The pass:
1. taps every layer's inputs on the calibration samples through the original model, and
   picks the pruned groups (`--sparsity`) by saliency (saliency.py), uniformly or with the
   exact global allocation;
2. stage 1 (BQPO), block by block (transformer blocks recognised from the weight names):
   the block's inputs come from the model with every earlier block already compressed;
   each weight's codes are chosen with GPTQ/SparseGPT error compensation around its pruned
   groups (bqpo.py), then its scales are refit to the layer's full-precision outputs on
   those inputs (refit.py; a row keeps its refit only where fitting on either half of the
   samples also helps on the other half);
3. stage 2 (E2E-OQP, closed form): codes and masks frozen, every layer's scales refit by
   least squares to the original model's activations at that layer, on inputs through the
   whole compressed prefix, gated the same way, and a block's refit kept only where the
   model's outputs on the held-out samples get closer to the original's (`--stage2 none`
   skips it);
4. emits MatMulNBits (pruned groups have scale 0, so they decode to exactly 0) or QDQ/lut,
   and `weights.gqsa.safetensors` (BSR: per row its kept groups' indices, codes, fp16
   scales and zero points), from which bits per weight are counted.
Embedding tables, if selected, are quantized the same way without pruning (H = I).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mapper.compression.activations import (
    ActivationTaps,
    blocks_in_order,
    decoded_initializer,
    gram,
    output_error,
)
from mapper.compression.base import (
    CompressionJob,
    Encoded,
    Encoding,
    Settings,
    WeightRewritePass,
)
from mapper.compression.codes import GroupCodes
from mapper.compression.sites import WeightSite, site_matrix
from mapper.errors import UserError
from mapper.options import CompileOptions
from mapper.passes.gqsa import artifact
from mapper.passes.gqsa.bqpo import quantize_pruned, to_codes
from mapper.passes.gqsa.e2e import require_torch, tune_scales
from mapper.passes.gqsa.refit import validated_refit
from mapper.passes.gqsa.saliency import allocate, group_saliency


class GqsaPass(WeightRewritePass):
    """Group quantization plus structured group sparsity (GQSA): BQPO, then E2E refit."""

    name = "gqsa"
    config_field = "gqsa"
    description = ("group quantization with structured group sparsity: saliency-pruned "
                   "groups, GPTQ-style compensated codes, least-squares scale refits")
    bits_allowed = frozenset({2, 3, 4, 8})
    default_group_size = 128

    def settings(self, options: CompileOptions, sites: list[WeightSite]) -> Settings:
        """The shared settings, plus the sparsity's own check."""
        resolved = super().settings(options, sites)
        if not 0 <= options.gqsa.sparsity < 1:
            raise UserError(f"--sparsity {options.gqsa.sparsity}: a share in [0, 1)")
        if "e2e" in options.gqsa.stage2:
            require_torch()  # before any work, not after stage 1
        return resolved

    def encode(self, job: CompressionJob) -> Encoding:
        """Masks, stage 1 per block, stage 2 per layer; the BSR artifact."""
        config = job.options.gqsa
        settings = job.settings
        bits, group, symmetric = settings.bits, settings.group_size, settings.symmetric
        feeds = list(job.samples.calibration)
        matrices = [s for s in job.sites if s.kind != "gather"]
        tables = [s for s in job.sites if s.kind == "gather"]
        taps = ActivationTaps(job.model, matrices)
        original = taps.collect(feeds, taps.taps)
        weights = {site.weight: site_matrix(job.model, site) for site in job.sites}
        saliencies, energies = [], []
        for site in matrices:
            w = weights[site.weight]
            if config.sparsity == 0:  # nothing to prune: no saliency needed
                saliencies.append(np.zeros((site.rows, -(-site.cols // group))))
                energies.append(1.0)
                continue
            hessian = gram(original[site.activation])
            saliencies.append(group_saliency(w, hessian, group, config.saliency))
            energies.append(float(((w @ hessian) * w).sum()))
        allocation = allocate(saliencies, energies, config.sparsity,
                              config.sparsity_allocation)
        masks = dict(zip((s.weight for s in matrices), allocation.masks, strict=True))
        codes: dict[str, GroupCodes] = {}
        decoded: dict[str, np.ndarray] = {}
        for block in blocks_in_order(matrices):
            inputs = (original if not decoded else
                      taps.collect(feeds, sorted({s.activation for s in block}), decoded))
            for site in block:
                x = inputs[site.activation]
                hessian = gram(x)
                w = weights[site.weight]
                stage1 = to_codes(quantize_pruned(w, hessian, masks[site.weight], bits,
                                                  group, symmetric), bits, group)
                codes[site.weight] = validated_refit(stage1, w, x, x)
            # The block is done: later blocks see it compressed.
            for site in block:
                decoded[site.weight] = decoded_initializer(site,
                                                           codes[site.weight].dequantize())
        notes = [f"stage 1 (BQPO): {len(blocks_in_order(matrices))} blocks, sparsity "
                 f"{config.sparsity:g} ({allocation.method}, {config.saliency} saliency)"]
        if config.stage2 in ("refit", "refit+e2e") and matrices:
            notes.append(_stage2_refit(taps, matrices, weights, original, codes, decoded,
                                       feeds, list(job.samples.evaluation)))
        tuning = None
        if config.stage2 in ("e2e", "refit+e2e") and matrices:
            codes, tuning = tune_scales(job.model, matrices, codes, feeds)
            notes.append(
                "stage 2 (E2E-OQP, gradients): scales tuned against the model's outputs, "
                f"held-out loss {tuning.heldout_before:.3g} -> {tuning.heldout_after:.3g} "
                f"in {tuning.epochs} epochs" if tuning.applied else
                f"stage 2 (E2E-OQP, gradients) left the scales as they were: {tuning.reason}")
        for site in tables:
            w = weights[site.weight]
            identity = np.eye(site.cols)
            no_prune = np.zeros((site.rows, -(-site.cols // group)), dtype=bool)
            codes[site.weight] = to_codes(quantize_pruned(w, identity, no_prune, bits, group,
                                                          symmetric), bits, group)
        with tempfile.TemporaryDirectory(prefix="mapper-gqsa-") as tmp:
            path = Path(tmp) / artifact.ARTIFACT
            sizes = artifact.write(path, codes)
            data = path.read_bytes()
        encoded = [Encoded(site, codes[site.weight],
                           declared={"sparsity": float((codes[site.weight].scales == 0).mean())},
                           artifact_bytes=sizes[site.weight]) for site in job.sites]
        shares = dict(zip((s.weight for s in matrices), allocation.shares, strict=True))
        details = {"gqsa": {"sparsity": config.sparsity,
                            "allocation": allocation.method, "saliency": config.saliency,
                            "stage2": config.stage2, "layer_sparsity": shares,
                            **({"e2e": {"applied": tuning.applied,
                                        "heldout_loss_before": tuning.heldout_before,
                                        "heldout_loss_after": tuning.heldout_after,
                                        "epochs": tuning.epochs}} if tuning else {})}}
        return Encoding(encoded, artifacts={artifact.ARTIFACT: data}, notes=tuple(notes),
                        details=details)


def _stage2_refit(taps: ActivationTaps, matrices: list[WeightSite],
                  weights: dict[str, np.ndarray], original: dict[str, np.ndarray],
                  codes: dict[str, GroupCodes], decoded: dict[str, np.ndarray],
                  feeds: list, heldout: list) -> str:
    """Stage 2, closed form: block by block, every layer's scales refit to the original
    model's activations on inputs through the compressed prefix (`codes` and `decoded`
    updated in place). A block's refit is kept only where it brings the model's outputs on
    the held-out samples closer to the original's: each layer's own check cannot see a
    prefix whose refits fit the calibration tokens and diverge elsewhere (measured on
    SmolLM2-135M at 25% sparsity: perplexity 3.1e5 before an unchecked refit, 1.3e17
    after). Returns the note saying what it kept."""
    reference = taps.outputs(heldout) if heldout else []
    current = output_error(taps.outputs(heldout, decoded), reference) if heldout else 0.0
    start, kept, blocks = current, 0, blocks_in_order(matrices)
    for block in blocks:
        inputs = taps.collect(feeds, sorted({s.activation for s in block}), decoded)
        trial_codes = {site.weight: validated_refit(
            codes[site.weight], weights[site.weight], inputs[site.activation],
            original[site.activation]) for site in block}
        trial = {**decoded, **{site.weight: decoded_initializer(
            site, trial_codes[site.weight].dequantize()) for site in block}}
        error = output_error(taps.outputs(heldout, trial), reference) if heldout else 0.0
        if not heldout or error < current:
            codes.update(trial_codes)
            decoded.update(trial)
            current, kept = error, kept + 1
    checked = (f"; held-out output error {start:.3g} -> {current:.3g}" if heldout
               else " (no held-out samples to check it on)")
    return (f"stage 2 (E2E-OQP, closed form): scales refit to the original model's "
            f"activations on inputs through the compressed prefix, kept on {kept} of "
            f"{len(blocks)} blocks{checked}")

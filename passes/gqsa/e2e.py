"""Stage 2 (E2E-OQP) by gradients: codes and masks frozen, every kept group's scale tuned
against the original model's outputs on the calibration samples.

The model runs in torch (mapper.compression.torch_graph) with each compressed weight
rebuilt from its frozen codes and its scales, so the loss (each float output's squared
error relative to the original model's) reaches every scale through the whole network,
as the paper's end-to-end stage does. Scales move multiplicatively (s·exp(θ), θ from 0),
which keeps their signs and keeps pruned groups at exactly 0. A quarter of the samples is
held out: the scales are kept from the epoch of least held-out loss, and only if that
beats where the stage started once they are rounded to the fp16 they are stored in.
Needs torch (`pip install 'mapper[compress]'`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import ModelProto, TensorProto, numpy_helper

from mapper.calibration import Feed
from mapper.compression.codes import GroupCodes
from mapper.compression.sites import WeightSite
from mapper.compression.torch_graph import TorchGraph, Unsupported
from mapper.errors import UserError
from mapper.passes.gqsa.bqpo import fp16
from mapper.passes.gqsa.refit import centred

EPOCHS = 12
LEARNING_RATE = 1e-3
PATIENCE = 3
BATCH = 4  # samples per optimizer step


@dataclass(frozen=True)
class Tuning:
    """What the end-to-end stage did: held-out loss before and after, epochs run."""

    applied: bool
    reason: str
    heldout_before: float
    heldout_after: float
    epochs: int


def require_torch():
    """The torch module, or a user error naming the extra that installs it."""
    try:
        import torch
    except ImportError:
        raise UserError("--stage2 e2e tunes scales with gradients and needs torch: install "
                        "it with pip install 'mapper[compress]', or use --stage2 refit "
                        "(the closed form)") from None
    return torch


def _float_outputs(model: ModelProto) -> list[str]:
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    return [o.name for o in model.graph.output if o.type.tensor_type.elem_type in floats]


class _Tuner:
    """The torch model with every site's weight rebuilt from codes and tuned scales."""

    def __init__(self, model: ModelProto, sites: Sequence[WeightSite],
                 codes: dict[str, GroupCodes]) -> None:
        self.torch = torch = require_torch()
        self.names = [site.weight for site in sites]
        self.graph = TorchGraph(model, fed=self.names)
        self.outputs = _float_outputs(model)
        initializers = {init.name: init for init in model.graph.initializer}
        self.original = {name: torch.from_numpy(numpy_helper.to_array(initializers[name])
                                                .copy()) for name in self.names}
        self.codes = codes
        self.sites = {site.weight: site for site in sites}
        self.centred = {name: torch.from_numpy(centred(codes[name]).astype(np.float32))
                        for name in self.names}
        self.scales = {name: torch.from_numpy(codes[name].scales.astype(np.float32))
                       for name in self.names}
        self.thetas = {name: torch.zeros(codes[name].scales.shape, requires_grad=True)
                       for name in self.names}

    def weights(self, scale_of: Callable[[str], Any]) -> dict[str, Any]:
        """Every site's decoded weight, in its initializer's layout, from `scale_of`."""
        out = {}
        for name in self.names:
            rows, cols = self.codes[name].rows, self.codes[name].cols
            dense = (self.centred[name] * scale_of(name)[..., None]).reshape(rows, -1)[:, :cols]
            site = self.sites[name]
            laid = dense.T if site.kind == "matmul" or (site.kind == "gemm"
                                                        and not site.transposed) else dense
            out[name] = laid.to(self.original[name].dtype)
        return out

    def tuned(self, name: str) -> Any:
        """A site's scales as they are being tuned."""
        return self.scales[name] * self.torch.exp(self.thetas[name])

    def run(self, feed: Feed, weights: dict[str, Any]) -> dict[str, Any]:
        """The float graph outputs for one calibration sample."""
        return self.graph.run({**feed, **weights}, self.outputs)

    def loss(self, produced: dict[str, Any], reference: dict[str, Any]) -> Any:
        """Sum over the float outputs of their squared error relative to the reference's
        mean square."""
        total = 0.0
        for name in self.outputs:
            ref = reference[name].float()
            total = total + ((produced[name].float() - ref) ** 2).mean() / \
                ((ref ** 2).mean() + 1e-12)
        return total


def tune_scales(model: ModelProto, sites: Sequence[WeightSite],
                codes: dict[str, GroupCodes], feeds: Sequence[Feed]) -> tuple[
                    dict[str, GroupCodes], Tuning]:
    """`codes` with the matrices' scales tuned end to end, and what was done; they come
    back unchanged where tuning does not lower the loss on held-out samples."""
    require_torch()
    if len(feeds) < 2 or not sites:
        return codes, Tuning(False, "fewer than 2 calibration samples", 0.0, 0.0, 0)
    try:
        tuner = _Tuner(model, sites, codes)
    except Unsupported as error:
        return codes, Tuning(False, f"the model is not evaluable in torch ({error})",
                             0.0, 0.0, 0)
    torch = tuner.torch
    held = max(1, len(feeds) // 4)
    train, check = list(feeds[:-held]), list(feeds[-held:])
    with torch.no_grad():
        train_refs = [tuner.run(feed, tuner.original) for feed in train]
        check_refs = [tuner.run(feed, tuner.original) for feed in check]
    steps = [range(first, min(first + BATCH, len(train)))
             for first in range(0, len(train), BATCH)]

    def heldout(scale_of: Callable[[str], Any]) -> float:
        with torch.no_grad():
            weights = tuner.weights(scale_of)
            return sum(float(tuner.loss(tuner.run(feed, weights), ref))
                       for feed, ref in zip(check, check_refs, strict=True)) / len(check)

    start = heldout(lambda name: tuner.scales[name])
    best, best_thetas, stale, epochs = start, None, 0, 0
    optimizer = torch.optim.Adam(list(tuner.thetas.values()), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS * len(steps))
    for epochs in range(1, EPOCHS + 1):  # noqa: B007 - the count is reported
        for step in steps:
            optimizer.zero_grad()
            # The weights are rebuilt once per step: the samples of a step share them.
            weights = tuner.weights(tuner.tuned)
            total = sum(tuner.loss(tuner.run(train[i], weights), train_refs[i]) for i in step)
            total.backward()
            optimizer.step()
            schedule.step()
        score = heldout(tuner.tuned)
        if score < best:
            best, stale = score, 0
            best_thetas = {n: theta.detach().numpy().copy() for n, theta in tuner.thetas.items()}
        else:
            stale += 1
            if stale >= PATIENCE:
                break
    if best_thetas is None:
        return codes, Tuning(False, "no epoch lowered the held-out loss", start, start, epochs)
    result = dict(codes)
    for name in tuner.names:
        old = codes[name].scales
        new = fp16((old * np.exp(best_thetas[name].astype(np.float64))).astype(np.float32))
        # A scale rounded to 0 would read as a pruned group: keep the old one there.
        new = np.where((old != 0) & (new != 0), new, old).astype(np.float32)
        result[name] = GroupCodes(codes=codes[name].codes, scales=new,
                                  zero_points=codes[name].zero_points, bits=codes[name].bits,
                                  group_size=codes[name].group_size)
    stored = {name: torch.from_numpy(result[name].scales.astype(np.float32))
              for name in tuner.names}
    after = heldout(lambda name: stored[name])
    if after >= start:
        return codes, Tuning(False, "the fp16-rounded scales do not lower the held-out loss",
                             start, after, epochs)
    return result, Tuning(True, "", start, after, epochs)

"""How good can a model with GQSA's group-sparse masks get, whatever its codes?

The GQSA benchmark's W4S50 rows lose to W2 and 2:4 on MiniLM-L6 and SmolLM2-135M. This
bounds what better quantization could buy: it takes the masks a GQSA compile chose, and
trains every kept weight in fp32, end to end, against the original model's outputs on the
calibration samples (Adam; masks fixed; the loss GQSA's own stage 2 uses). That is more
freedom than the paper's two stages allow (BQPO moves weights block by block, E2E-OQP only
the quantization parameters), so the evaluation quality it reaches is a ceiling for any
quantization of those masks. Needs torch (`mapper[compress]`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mapper.calibration import Feed
from mapper.compression.sites import WeightSite
from mapper.passes.gqsa import artifact
from mapper.passes.gqsa.e2e import _Tuner

BATCH = 4


@dataclass(frozen=True)
class Ceiling:
    """Evaluation cosine before training, after its best epoch and after the last one."""

    start: float
    best: float
    best_epoch: int
    last: float


def finetuned_ceiling(model: onnx.ModelProto, sites: Sequence[WeightSite], compiled: Path,
                      calibration: Sequence[Feed], evaluation: Sequence[Feed],
                      reference: Sequence[np.ndarray], output: str, epochs: int = 30,
                      learning_rate: float = 3e-4,
                      on_epoch: Callable[[int, float], None] | None = None) -> Ceiling:
    """Train the kept weights of `compiled` (a GQSA compile's output directory) end to end;
    the evaluation cosine of `output` to `reference` at each epoch. The best epoch is
    picked on the evaluation set itself, which flatters the ceiling (on purpose: it is an
    upper bound). `on_epoch` sees each epoch's cosine, to follow the curve."""
    import torch

    codes = artifact.read_codes(compiled / artifact.ARTIFACT)
    chosen = [site for site in sites if site.kind != "gather" and site.weight in codes]
    tuner = _Tuner(model, chosen, {site.weight: codes[site.weight] for site in chosen})
    start = tuner.weights(lambda name: tuner.scales[name])
    params = {name: w.detach().clone().requires_grad_(True) for name, w in start.items()}
    masks = {name: (w != 0).to(w.dtype) for name, w in start.items()}
    with torch.no_grad():
        targets = [tuner.run(feed, tuner.original) for feed in calibration]
    optimizer = torch.optim.Adam(list(params.values()), lr=learning_rate)

    def cosine() -> float:
        with torch.no_grad():
            weights = {name: p * masks[name] for name, p in params.items()}
            values = []
            for feed, ref in zip(evaluation, reference, strict=True):
                out = tuner.graph.run({**feed, **weights}, [output])[output]
                a, b = out.double().numpy().ravel(), ref.astype(np.float64).ravel()
                values.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            return float(np.mean(values))

    first = best = last = cosine()
    best_epoch = 0
    for epoch in range(1, epochs + 1):
        for begin in range(0, len(calibration), BATCH):
            optimizer.zero_grad()
            weights = {name: p * masks[name] for name, p in params.items()}
            loss = sum(tuner.loss(tuner.run(calibration[i], weights), targets[i])
                       for i in range(begin, min(begin + BATCH, len(calibration))))
            loss.backward()
            optimizer.step()
        last = cosine()
        if on_epoch is not None:
            on_epoch(epoch, last)
        if last > best:
            best, best_epoch = last, epoch
    return Ceiling(first, best, best_epoch, last)

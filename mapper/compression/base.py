"""The base of every weight-rewriting pass: subclasses say how they encode the weights they
are given; the base owns everything else.

A pass (rtn, gqsa, lqlora) implements `encode(job) -> [Encoded]`. The base:
- resolves and checks the settings (bits, group size, format) and picks the weights
  (mapper.compression.sites);
- splits the inputs into calibration and held-out evaluation samples (`--calib`, or seeded
  stand-ins) and, for passes that fit on data, runs the calibration runtime;
- writes the codes into the model (mapper.compression.emit), re-normalizes it through the
  loader's own `normalize`, and the pass manager checks the result;
- measures the quality against the original on the held-out samples, applies the
  `--max-degradation` gate (exit 4, nothing written), and writes the `compression` section.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from onnx import ModelProto

from mapper.calibration import SampleSplit, split_samples
from mapper.compression.codes import GroupCodes
from mapper.compression.emit import FORMAT_BITS, check_format, rewrite
from mapper.compression.quality import Quality, gate, measure, summary_line
from mapper.compression.section import compression_section, weight_entry
from mapper.compression.sites import WeightSite, find_sites, site_matrix
from mapper.errors import UserError
from mapper.facts import CompressedWeight, CompressionFacts, Facts
from mapper.formats import WeightFormat
from mapper.graph import GraphView
from mapper.hwmodels.schema import Hardware
from mapper.onnx_utils import drop_initializer_value_info
from mapper.options import CompileOptions
from mapper.pipeline import Pass, PassContext, PassResult


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one compile's weight rewriting."""

    bits: int
    group_size: int
    symmetric: bool
    format: str

    def to_dict(self) -> dict[str, Any]:
        """The plan's `compression.settings`."""
        return {"bits": self.bits, "group_size": self.group_size,
                "symmetric": self.symmetric, "format": self.format}


@dataclass(frozen=True)
class CompressionJob:
    """Everything an encoder may use: the model and its weights, settings, samples."""

    model: ModelProto
    view: GraphView
    sites: tuple[WeightSite, ...]
    settings: Settings
    samples: SampleSplit
    options: CompileOptions
    hardware: Hardware


@dataclass(frozen=True, eq=False)
class Encoded:
    """One weight as a pass encoded it. `declared`: what the graph cannot show of its
    format (metadata_props); `artifact_bytes`: what an artifact stores for it, when its
    bits per weight are counted from there."""

    site: WeightSite
    codes: GroupCodes
    declared: Mapping[str, Any] = field(default_factory=dict)
    artifact_bytes: int | None = None


@dataclass(frozen=True, eq=False)
class Encoding:
    """Everything `encode` made: the weights, files for the output directory, notes, and
    pass-specific figures for the plan section."""

    weights: list[Encoded]
    artifacts: Mapping[str, bytes] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rewritten:
    """What `WeightRewritePass.apply` made: the new model and how it compares."""

    model: ModelProto
    section: dict[str, Any]
    quality: Quality
    notes: tuple[str, ...]
    artifacts: Mapping[str, bytes] = field(default_factory=dict)


def relative_error(original: np.ndarray, approximation: np.ndarray) -> float:
    """||W - W'||_F / ||W||_F."""
    norm = float(np.linalg.norm(original))
    return float(np.linalg.norm(original - approximation)) / norm if norm else 0.0


class WeightRewritePass(Pass):
    """Base of the lossy passes that replace weights with quantized, sparse or low-rank ones."""

    lossy = True
    writes = ("compression",)
    provides = ("compression",)
    # The shared CompressionConfig is checked by the pass manager for every lossy pass;
    # a pass's own settings name their config here.
    config_field = None
    default_bits: ClassVar[int] = 4
    default_group_size: ClassVar[int] = 128
    bits_allowed: ClassVar[frozenset[int]] = frozenset({2, 4, 8})
    formats: ClassVar[Mapping[str, frozenset[int]]] = FORMAT_BITS

    def skip_reason(self, context: PassContext) -> str | None:
        """Skipped when no MatMul/Gemm weight or embedding table is there to rewrite."""
        sites, _ = find_sites(context.model, context.options.compression)
        if not sites:
            return "no MatMul/Gemm weight or embedding table to rewrite (or all excluded)"
        return None

    def settings(self, options: CompileOptions, sites: Sequence[WeightSite]) -> Settings:
        """The compile's settings for this pass, checked: a user error names the flag."""
        config = options.compression
        bits_value = config.bits if config.bits is not None else self.default_bits
        if bits_value == "auto" or float(bits_value) != int(float(bits_value)) \
                or int(float(bits_value)) not in self.bits_allowed:
            allowed = ", ".join(map(str, sorted(self.bits_allowed)))
            shown = (int(bits_value) if isinstance(bits_value, float) and bits_value.is_integer()
                     else bits_value)
            raise UserError(f"--bits {shown}: --compress {self.name} takes {allowed}")
        bits = int(float(bits_value))
        group = config.group_size or self.default_group_size
        if group & (group - 1) or not 16 <= group <= 256:
            raise UserError(f"--group-size {group}: a power of two from 16 to 256")
        widest = max(site.cols for site in sites)
        if group > widest:
            raise UserError(f"--group-size {group} exceeds the reduction dim of every weight "
                            f"(the largest is {widest}): choose at most {widest}")
        fmt = config.format or next(
            (name for name, held in self.formats.items() if bits in held), "matmulnbits")
        check_format(fmt, bits, self.formats)
        return Settings(bits=bits, group_size=group, symmetric=config.symmetric, format=fmt)

    @abstractmethod
    def encode(self, job: CompressionJob) -> Encoding:
        """Encode every site of `job` (the pass's own method)."""

    def run(self, context: PassContext) -> PassResult:
        """Pick, encode, emit, re-normalize, measure, gate, and record."""
        rewritten = self.apply(context)
        facts = Facts(compression=CompressionFacts(
            method=self.name,
            weights=tuple(CompressedWeight(w["name"], self.name, w["rel_error"])
                          for w in rewritten.section["weights"]),
            quality_metric=rewritten.quality.metric,
            quality=float(rewritten.section["quality"]["mean"])))
        return PassResult(model=rewritten.model, sections={"compression": rewritten.section},
                          notes=rewritten.notes, facts=facts, artifacts=rewritten.artifacts)

    def apply(self, context: PassContext) -> Rewritten:
        """Everything `run` does but the result wrapping (benchmarks call it directly)."""
        options = context.options
        config = options.compression
        sites, skipped = find_sites(context.model, config)
        settings = self.settings(options, sites)
        usable = [s for s in sites if s.cols >= settings.group_size or s.kind == "gather"]
        skipped += [f"{s.weight}: reduction dim {s.cols} is below --group-size "
                    f"{settings.group_size}, left dense" for s in sites if s not in usable]
        samples = split_samples(context.model, options.calib, config.calib_samples,
                                config.eval_samples, options.seed)
        job = CompressionJob(model=context.model, view=context.view, sites=tuple(usable),
                             settings=settings, samples=samples, options=options,
                             hardware=context.hardware)
        encoding = self.encode(job)
        encoded = encoding.weights
        model = self.emit(job, encoded)
        quality = measure(context.model, model, samples.evaluation, samples.label)
        gate(quality, config.max_degradation, self.name)
        section = self.section(job, encoding, model, quality, skipped)
        notes = (f"{len(encoded)} weights to {section['bits_per_weight']:.3f} bits per weight "
                 f"({settings.format}); {summary_line(quality)}",
                 *encoding.notes, *skipped[:20])
        return Rewritten(model=model, section=section, quality=quality, notes=notes,
                         artifacts=encoding.artifacts)

    def emit(self, job: CompressionJob, encoded: Sequence[Encoded]) -> ModelProto:
        """The model with every encoded weight written in the chosen format, normalized."""
        from mapper.formats import declare_format
        from mapper.loader import normalize

        model = rewrite(job.model, [(e.site, e.codes) for e in encoded], job.settings.format)
        for item in encoded:
            if item.declared:
                declare_format(model, item.site.weight, item.declared)
        drop_initializer_value_info(model.graph)
        _keep_known_shapes(model, job.model)
        shapes = {inp.name: [d.dim_value for d in inp.type.tensor_type.shape.dim]
                  for inp in model.graph.input}
        return normalize(model, shapes, [], job.samples.calibration[0]
                         if job.samples.calibration else None)

    def section(self, job: CompressionJob, encoding: Encoding, model: ModelProto,
                quality: Quality, skipped: Sequence[str]) -> dict[str, Any]:
        """The plan's compression section, sized from the rewritten model's stored bytes
        (or, where a pass says so, from its artifact)."""
        view = GraphView.from_model(model, job.view.precision)
        entries = []
        artifact = next(iter(encoding.artifacts), None)
        for item in encoding.weights:
            site = item.site
            stored = _stored_format(view, site.weight)
            original = job.view.tensors[site.weight]
            entry = weight_entry(
                site.weight, site.node, self.name, job.settings.format, stored, site.shape,
                relative_error(site_matrix(job.model, site), item.codes.dequantize()),
                original.size)
            if item.artifact_bytes is not None and artifact is not None:
                entry["artifact"] = artifact
                entry["artifact_bytes"] = item.artifact_bytes
                entry["bits_per_weight"] = round(8.0 * item.artifact_bytes
                                                 / (site.rows * site.cols), 6)
            entries.append(entry)
        section = compression_section(self.name, entries, quality.to_section(),
                                      list(encoding.artifacts), job.settings.to_dict(),
                                      skipped, job.view.weight_bytes(), view.weight_bytes())
        section.update(encoding.details)
        return section


def _stored_format(view: GraphView, weight: str) -> WeightFormat:
    """The stored format whose codes are the initializer `weight` (a fused decode chain keys
    its format by the decoded tensor it feeds)."""
    if weight in view.formats:
        return view.formats[weight]
    for stored in view.formats.values():
        if stored.parts and stored.parts[0] == weight:
            return stored
    raise AssertionError(f"the rewritten model holds no stored format for {weight!r}")


def _keep_known_shapes(model: ModelProto, original: ModelProto) -> None:
    """Carry the original's static types of tensors that still exist: ONNX inference does not
    know the contrib ops, and their outputs keep the shapes of the ops they replace."""
    produced = {out for node in model.graph.node for out in node.output}
    known = {info.name for info in model.graph.value_info}
    for info in original.graph.value_info:
        if info.name in produced and info.name not in known:
            model.graph.value_info.append(info)

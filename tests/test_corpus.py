"""The real-world model corpus: every entry fetches, checks (or fails the checker for its
documented reason) and runs in onnxruntime with its sample inputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import version_converter

from models.corpus import (
    CATEGORIES,
    CORPUS,
    CorpusEntry,
    CorpusUnavailableError,
    PackageFile,
    fetch,
    names,
    sample_inputs,
)

# Entries whose onnxruntime run takes more than a couple of seconds on a 2-core machine
# (VGG's ConstantOfShape weights are materialized: 550-570 MB).
SLOW = {"vgg16", "zoo_light_vgg19"}


def _params() -> list[object]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CORPUS]


def _session(model: str | bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the zoo files trip "unused initializer" warnings
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _is_static(vi: onnx.ValueInfoProto) -> bool:
    dims = vi.type.tensor_type.shape.dim
    return all(d.HasField("dim_value") and d.dim_value > 0 for d in dims)


def _default_opset(model: onnx.ModelProto) -> int:
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return versions.get("ai.onnx", versions.get("ai.onnx.ml", -1))


# --------------------------------------------------------------------------- the registry


def test_registry_covers_every_category() -> None:
    for category in CATEGORIES:
        assert names(category), category
    assert len(names("dynamic-dims")) >= 2
    assert {"control-flow", "state-inputs"} <= CORPUS["silero_vad"].categories
    packaged = [e for e in CORPUS.values() if e.packaged]
    assert len({e.package.distribution for e in packaged if e.package}) >= 3
    built = {"resnet50", "inception_v1", "densenet121", "squeezenet1_1", "vgg16", "tiny_yolov3"}
    assert built <= set(CORPUS)


def test_entry_validation() -> None:
    with pytest.raises(ValueError, match="unknown categories"):
        CorpusEntry("x", "", "", frozenset({"nope"}), None, 9, 3, builder=lambda: onnx.ModelProto())
    with pytest.raises(ValueError, match="exactly one"):
        CorpusEntry("x", "", "", frozenset(), None, 9, 3)
    with pytest.raises(ValueError, match="unknown category"):
        names("nope")


def test_unknown_name_and_missing_package(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no corpus entry"):
        fetch("no-such-model", tmp_path)
    missing = PackageFile("not-a-real-dist", "not_a_real_module_xyz", "m.onnx", "1.0")
    with pytest.raises(CorpusUnavailableError, match="not-a-real-dist"):
        missing.locate()


# --------------------------------------------------------------------------- every entry


@pytest.mark.parametrize("name", _params())
def test_entry_fetches_checks_and_runs(name: str) -> None:
    entry = CORPUS[name]
    path = fetch(name)
    assert path.is_file() and path.suffix == ".onnx"
    model = onnx.load(str(path))
    assert model.ir_version == entry.ir_version
    assert _default_opset(model) == entry.opset

    if entry.checker_error is None:
        onnx.checker.check_model(model)
    else:
        with pytest.raises(onnx.checker.ValidationError, match=entry.checker_error):
            onnx.checker.check_model(model)

    # input_shapes names exactly the inputs that have symbolic / unknown dims
    inits = {t.name for t in model.graph.initializer}
    feedable = [vi for vi in model.graph.input if vi.name not in inits]
    dynamic = {vi.name for vi in feedable if not _is_static(vi)}
    assert set(entry.input_shapes or {}) == dynamic
    assert ("dynamic-dims" in entry.categories) == bool(dynamic)

    feeds = sample_inputs(name)
    assert set(feeds) == {vi.name for vi in feedable}
    if entry.ort_error is None:
        session = _session(str(path))
    else:
        with pytest.raises(Exception, match=re.escape(entry.ort_error)):
            _session(str(path))
        session = _session(version_converter.convert_version(model, 13).SerializeToString())
    outputs = session.run(None, feeds)
    assert len(outputs) == len(model.graph.output)
    for out in outputs:
        if isinstance(out, np.ndarray) and np.issubdtype(out.dtype, np.floating):
            assert np.isfinite(out).all(), name


# --------------------------------------------------------------------------- behaviour


def test_fetch_caches_and_rebuilds_on_stamp_change(tmp_path: Path) -> None:
    first = fetch("scan_rnn", tmp_path)
    mtime = first.stat().st_mtime_ns
    assert fetch("scan_rnn", tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    stamp = tmp_path / "scan_rnn.onnx.stamp"
    stamp.write_text("stale")
    assert fetch("scan_rnn", tmp_path) == first
    assert stamp.read_text() == CORPUS["scan_rnn"].stamp()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_packaged_copy_is_byte_identical(tmp_path: Path) -> None:
    entry = CORPUS["silero_vad"]
    assert entry.package is not None
    assert fetch("silero_vad", tmp_path).read_bytes() == entry.package.locate().read_bytes()


def test_sample_inputs_are_deterministic_and_pinned() -> None:
    a, b = sample_inputs("silero_vad", seed=3), sample_inputs("silero_vad", seed=3)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["sr"].dtype == np.int64 and a["sr"].shape == () and int(a["sr"]) == 16000
    assert a["input"].shape == (1, 512) and a["state"].shape == (2, 1, 128)
    assert not np.array_equal(a["input"], sample_inputs("silero_vad", seed=4)["input"])
    assert int(sample_inputs("loop_decoder")["max_steps"]) == 8


def test_hidden_initializers_become_visible_at_ir4() -> None:
    """IR-3 files with initializers not listed as inputs: raising ir_version to 4 is enough
    for shape inference and the version converter (which fails on the file as it is)."""
    model = onnx.load(str(fetch("densenet121")))
    blind = onnx.shape_inference.infer_shapes(model)
    assert not any(vi.type.tensor_type.HasField("shape") for vi in blind.graph.value_info)
    model.ir_version = 4
    onnx.checker.check_model(model)
    upgraded = version_converter.convert_version(model, 17)
    inferred = onnx.shape_inference.infer_shapes(upgraded, strict_mode=True)
    (out,) = inferred.graph.output
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 1000]

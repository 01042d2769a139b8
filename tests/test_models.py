"""Reference models: each builds (once, then from cache), is valid ONNX and matches torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import models
from models import REFERENCE_MODELS, build, metadata, sample_inputs, torch_model
from models._registry import get_spec
from models.build import main as build_cli

# Building these (or loading their torch reference) takes several seconds each.
SLOW = {"resnet50", "minilm_l6"}
ALL = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in REFERENCE_MODELS]


def _ort(model: str | Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _torch(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    module = torch_model(name)
    args = [torch.from_numpy(feeds[i.name]) for i in get_spec(name).inputs]
    with torch.no_grad():
        out = module(*args)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_registry_lists_the_reference_models() -> None:
    assert REFERENCE_MODELS == (
        "resnet_small",
        "resnet50",
        "gpt_decoder",
        "moe_transformer",
        "minilm_l6",
        "smollm2_135m",
    )
    with pytest.raises(ValueError, match="known: resnet_small"):
        build("no_such_model")
    with pytest.raises(ValueError):
        sample_inputs("no_such_model")


def test_cache_file_name_carries_the_builder_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = models.cache_path("resnet50", tmp_path)
    assert path.parent == tmp_path
    assert path.name == f"resnet50-v{models.BUILDER_VERSION}.{get_spec('resnet50').version}.onnx"
    monkeypatch.delenv(models.CACHE_ENV, raising=False)
    assert models.cache_path("resnet50").parent == models.DEFAULT_CACHE_DIR
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "env"))
    assert models.cache_path("resnet50").parent == tmp_path / "env"


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_sample_inputs_are_valid_and_seeded(name: str) -> None:
    spec = get_spec(name)
    feeds = sample_inputs(name)
    assert list(feeds) == [i.name for i in spec.inputs]
    for i in spec.inputs:
        value = feeds[i.name]
        assert value.dtype == np.dtype(i.dtype)
        assert value.shape == tuple(
            spec.dynamic_dims[s].example if isinstance(s, str) else s for s in i.shape
        )
        if i.low is not None:
            assert i.low <= value.min() and value.max() < i.high
    again, other = sample_inputs(name, seed=0), sample_inputs(name, seed=1)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert not np.array_equal(feeds[spec.inputs[0].name], other[spec.inputs[0].name])


def test_minilm_sample_inputs_are_real_tokens() -> None:
    feeds = sample_inputs("minilm_l6", seed=0)
    ids, mask = feeds["input_ids"][0], feeds["attention_mask"][0]
    n = int(mask.sum())
    assert 5 < n < 128
    assert ids[0] == 101 and ids[n - 1] == 102  # [CLS] ... [SEP], then [PAD] = 0
    assert not ids[n:].any() and mask[:n].all()
    assert not feeds["token_type_ids"].any()


@pytest.mark.parametrize("name", ALL)
def test_model_builds_checks_and_matches_torch(name: str) -> None:
    path = build(name)
    onnx.checker.check_model(str(path), full_check=True)
    meta = json.loads(path.with_suffix(".json").read_text())
    spec = get_spec(name)
    assert meta["name"] == name and meta["description"]
    assert [i["name"] for i in meta["inputs"]] == [i.name for i in spec.inputs]
    assert [o["name"] for o in meta["outputs"]] == list(spec.outputs)
    assert meta["export_mode"] == "dynamo" and meta["opset"] == 20

    model = onnx.load(str(path), load_external_data=False)
    assert len(model.graph.node) == meta["node_count"]
    for value, entry in zip(model.graph.input, meta["inputs"], strict=True):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == entry["shape"]

    # seed 1 differs from the inputs the model was exported (and self-checked) with
    feeds = sample_inputs(name, seed=1)
    got, want = _ort(path, feeds), _torch(name, feeds)
    assert len(got) == len(want) == len(spec.outputs)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3)
        assert _cosine(g, w) > 0.9999


@pytest.mark.parametrize("name", ALL)
def test_second_build_is_a_cache_hit(name: str) -> None:
    path = build(name)
    stamp = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert build(name) == path
    assert time.perf_counter() - start < 0.5
    assert path.stat().st_mtime_ns == stamp
    assert metadata(name)["sha256"]


def test_gpt_decoder_sequence_dim_is_dynamic() -> None:
    path = build("gpt_decoder")
    meta = metadata("gpt_decoder")
    assert meta["inputs"][0]["shape"] == [1, "seq"]
    assert meta["dynamic_dims"]["seq"]["fix_with"] == [
        "--dim seq=64",
        "--input-shape input_ids=1x64",
    ]
    assert meta["outputs"][0]["shape"] == [1, "seq", 1000]
    ops = meta["op_counts"]
    assert ops["Gelu"] == 4 and ops["LayerNormalization"] == 9 and ops["Softmax"] == 4
    feeds = sample_inputs("gpt_decoder", seed=2, dims={"seq": 17})
    (got,), (want,) = _ort(path, feeds), _torch("gpt_decoder", feeds)
    assert got.shape == (1, 17, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    # causal: the logits of position t do not depend on tokens after t
    changed = {"input_ids": feeds["input_ids"].copy()}
    changed["input_ids"][0, 10:] = (changed["input_ids"][0, 10:] + 1) % 1000
    (after,) = _ort(path, changed)
    np.testing.assert_allclose(after[:, :10], got[:, :10], rtol=1e-5, atol=1e-5)


def test_moe_router_topk_indices_can_be_captured() -> None:
    import torch

    path = build("moe_transformer")
    layers = metadata("moe_transformer")["moe"]["layers"]
    model = onnx.load(str(path))
    nodes = {n.name: n for n in model.graph.node}
    initializers = {t.name for t in model.graph.initializer}
    for layer in layers:
        topk = nodes[layer["topk_node"]]
        assert topk.op_type == "TopK" and topk.output[1] == layer["topk_indices"]
        assert nodes[layer["softmax_node"]].op_type == "Softmax"
        assert nodes[layer["router_node"]].op_type == "MatMul"
        assert len(layer["experts"]) == 8
        assert all(w in initializers for e in layer["experts"] for w in e.values())
    # expose the indices as extra outputs, as a route tracer would
    for layer in layers:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(layer["topk_indices"], onnx.TensorProto.INT64, None)
        )
    feeds = sample_inputs("moe_transformer", seed=3)
    _, *routes = _ort(model, feeds)

    module = torch_model("moe_transformer")
    router_probs: list[torch.Tensor] = []
    for block in module.blocks:
        block.moe.router.register_forward_hook(
            lambda _m, _i, out: router_probs.append(torch.softmax(out, -1))
        )
    with torch.no_grad():
        module(torch.from_numpy(feeds["input_ids"]))
    for got, probs in zip(routes, router_probs, strict=True):
        assert got.shape == (1, 32, 2) and got.dtype == np.int64
        want = torch.topk(probs, 2, dim=-1).indices.numpy()
        np.testing.assert_array_equal(np.sort(got, -1), np.sort(want, -1))
    assert len(np.unique(routes[0])) > 2  # the router actually spreads tokens


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from models.minilm import SENTENCES, model_dir, tokenize

    path = build("minilm_l6")
    expected = SentenceTransformer(str(model_dir()), device="cpu").encode(list(SENTENCES))
    for sentence, want in zip(SENTENCES, expected, strict=True):
        _, got = _ort(path, tokenize(sentence))
        assert got.shape == (1, 384)
        assert _cosine(got[0], want) > 0.9999
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5


def test_cli_builds_and_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "r.onnx"
    assert build_cli(["resnet_small", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert out.read_bytes() == build("resnet_small").read_bytes()
    assert build_cli(["resnet_small"]) == 0
    assert capsys.readouterr().out.strip() == str(build("resnet_small"))
    for bad in ([], ["nope"], ["--all", "--out", str(out)]):
        with pytest.raises(SystemExit) as exc:
            build_cli(bad)
        assert exc.value.code == 2
    # importing the CLI submodule rebinds `models.build`; it must stay callable
    assert models.build("resnet_small") == build("resnet_small")


def test_cli_as_a_module_prints_the_path(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "models.build", "resnet_small", "--out", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert done.stdout.strip() == str(tmp_path / "resnet_small.onnx")
    assert (tmp_path / "resnet_small.json").is_file()


def test_export_falls_back_to_the_next_mode_and_says_why() -> None:
    import dataclasses

    from models._export import export

    spec = dataclasses.replace(get_spec("resnet_small"), export_modes=("broken", "legacy"))
    model, info = export(spec, sample_inputs("resnet_small"))
    assert info["export_mode"] == "legacy"
    assert "broken" in info["export_failures"]
    assert next(o.version for o in model.opset_import if o.domain == "") == 17
    props = {p.key: p.value for p in model.metadata_props}
    assert props["mapper.reference_model"] == "resnet_small"
    assert props["mapper.export_mode"] == "legacy"


@pytest.mark.slow
def test_forced_rebuild_is_byte_identical(tmp_path: Path) -> None:
    cached = build("resnet_small")
    rebuilt = build("resnet_small", tmp_path, force=True)
    assert rebuilt.parent == tmp_path
    assert rebuilt.read_bytes() == cached.read_bytes()
    assert metadata("resnet_small", tmp_path)["sha256"] == metadata("resnet_small")["sha256"]

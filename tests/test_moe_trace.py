"""Routing traces: loading, layouts, and the bad traces that must exit 2 with a clear message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mapper.errors import UserError
from mapper.passes.moe.synth import SynthSpec, save_trace, synthesize
from mapper.passes.moe.trace import load_trace
from tests.conftest import run_mapper


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def _routes(layers=3, tokens=16, k=2, experts=8, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.stack([rng.choice(experts, size=k, replace=False)
                               for _ in range(tokens)]) for _ in range(layers)])


def test_load_layers_first_and_tokens_first(tmp_path):
    routes = _routes()
    first = load_trace(_save(tmp_path / "a.npz", routes=routes, num_experts=np.int64(8)))
    assert first.routes.shape == (3, 16, 2) and first.num_experts == 8
    second = load_trace(_save(tmp_path / "b.npz", routes=routes.transpose(1, 0, 2)),
                        layout="tokens-first", num_experts=8)
    assert np.array_equal(first.routes, second.routes)


def test_num_experts_defaults_to_the_largest_id(tmp_path):
    trace = load_trace(_save(tmp_path / "a.npz", routes=_routes(experts=6)))
    assert trace.num_experts == int(_routes(experts=6).max()) + 1


@pytest.mark.parametrize(("arrays", "kwargs", "message"), [
    ({"routes": np.full((2, 16, 2), 9)}, {"num_experts": 8}, "expert ids out of range"),
    ({"routes": np.full((2, 16, 2), -1)}, {"num_experts": 8}, "expert ids out of range"),
    ({"routes": np.zeros((16, 2), dtype=np.int64)}, {}, "must have 3 dims"),
    ({"routes": np.zeros((2, 16, 2), dtype=np.float32)}, {}, "integer expert ids"),
    ({"routes": _routes()}, {"num_experts": 8, "num_devices": 3}, "cannot be split evenly"),
    ({"routes": _routes(tokens=5)}, {"num_experts": 8}, "fewer tokens (5) than experts (8)"),
    ({"experts": _routes()}, {}, "has no array 'routes'"),
    ({"routes": _routes(), "num_experts": np.array([8, 8])}, {}, "'num_experts' must be one"),
    ({"routes": np.zeros((2, 0, 2), dtype=np.int64)}, {}, "is empty"),
])
def test_bad_traces_raise_user_errors(tmp_path, arrays, kwargs, message):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError) as caught:
        load_trace(path, **kwargs)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_unreadable_trace_file(tmp_path):
    path = tmp_path / "x.npz"
    path.write_text("not a zip")
    with pytest.raises(UserError, match=r"not a readable \.npz"):
        load_trace(path)
    with pytest.raises(UserError, match="does not exist"):
        load_trace(tmp_path / "missing.npz")


def test_synth_roundtrip_tokens_first(tmp_path):
    trace = synthesize(SynthSpec(layers=3, experts=8, top_k=2, tokens=64, seed=1))
    path = str(tmp_path / "t.npz")
    save_trace(trace, path, tokens_first=True)
    loaded = load_trace(tmp_path / "t.npz", layout="tokens-first")
    assert np.array_equal(loaded.routes, trace.routes) and loaded.num_experts == 8
    # Every token's k experts are distinct.
    assert (np.sort(trace.routes, axis=2)[:, :, 1:] != np.sort(trace.routes, axis=2)[:, :, :-1]
            ).all()


def test_synth_is_seeded():
    spec = SynthSpec(layers=3, experts=8, top_k=2, tokens=64, seed=4)
    assert np.array_equal(synthesize(spec).routes, synthesize(spec).routes)
    other = SynthSpec(layers=3, experts=8, top_k=2, tokens=64, seed=5)
    assert not np.array_equal(synthesize(spec).routes, synthesize(other).routes)
    with pytest.raises(UserError, match="must divide"):
        synthesize(SynthSpec(layers=3, experts=8, top_k=2, tokens=64, planted_devices=3))


def test_cli_place_writes_the_contract_object_and_rejects_bad_traces(tmp_path):
    good = tmp_path / "routes.npz"
    result = run_mapper("moe", "synth", "--layers", "4", "--experts", "8", "--tokens", "512",
                        "--planted-devices", "4", "--seed", "2", "-o", str(good))
    assert result.code == 0, result.stderr
    out = tmp_path / "placement.json"
    result = run_mapper("moe", "place", "--trace", str(good), "--devices", "4",
                        "--devices-per-node", "2", "--hw", "h100", "--time-limit", "3",
                        "-o", str(out))
    assert result.code == 0, result.stderr
    moe = json.loads(out.read_text())
    assert {"num_devices", "devices_per_node", "num_experts", "top_k", "layers",
            "metrics"} <= set(moe)
    assert moe["num_devices"] == 4 and moe["devices_per_node"] == 2 and moe["top_k"] == 2
    for layer in moe["layers"]:
        assert sorted(np.bincount(layer["placement"], minlength=4).tolist()) == [2, 2, 2, 2]
    metrics = moe["metrics"]
    assert set(metrics["baselines"]) == {"contiguous", "round_robin", "eplb", "local_search"}
    assert metrics["cross_device_fraction"] < metrics["baselines"]["round_robin"][
        "cross_device_fraction"]
    assert metrics["alltoall_s"] > 0
    bad = _save(tmp_path / "bad.npz", routes=np.full((4, 16, 2), 12), num_experts=np.int64(8))
    for args, message in [
        (("--trace", str(bad), "--devices", "4"), "expert ids out of range"),
        (("--trace", str(good), "--devices", "3"), "cannot be split evenly"),
        (("--trace", str(good), "--devices", "4", "--trace-layout", "tokens-first"),
         "fewer tokens (4) than experts (8)"),
    ]:
        result = run_mapper("moe", "place", *args)
        assert result.code == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr

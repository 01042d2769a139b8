"""Loading and normalizing real-world ONNX shapes of trouble, one small model each."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mapper.errors import UserError
from mapper.flags import parse_dim, parse_shape
from mapper.loader import MIN_OPSET, ShapeSpec, load_model
from tests import onnx_builders as build


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _all_static(model: onnx.ModelProto) -> bool:
    infos = {i.name: i for i in [*model.graph.value_info, *model.graph.output]}
    produced = [o for n in model.graph.node for o in n.output if o]
    def static(name: str) -> bool:
        return all(d.HasField("dim_value") for d in infos[name].type.tensor_type.shape.dim)

    return all(name in infos and static(name) for name in produced)


def test_legacy_ir3_model_is_upgraded_folded_and_static(tmp_path):
    original = build.legacy_ir3_cnn()
    path = build.save(original, tmp_path / "legacy.onnx")
    loaded = load_model(path)
    model = loaded.model
    assert model.ir_version >= 4
    assert {o.version for o in model.opset_import if o.domain == ""} == {MIN_OPSET}
    assert not any(n.op_type in ("Constant", "ConstantOfShape") for n in model.graph.node)
    assert "conv_b" in {init.name for init in model.graph.initializer}
    assert _all_static(model)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(model, {"x": x})[0], _run(original, {"x": x})[0], rtol=1e-5)
    assert any("IR version 3" in note for note in loaded.notes)


def test_unresolved_dynamic_dims_are_all_listed(tmp_path):
    path = build.save(build.dynamic_mlp(), tmp_path / "dyn.onnx")
    with pytest.raises(UserError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "'batch'" in message and "'seq'" in message
    assert "--dim batch=<size>" in message and "--input-shape x=" in message


def test_dynamic_dims_from_flags(tmp_path):
    path = build.save(build.dynamic_mlp(), tmp_path / "dyn.onnx")
    by_dims = load_model(path, ShapeSpec(dims={"batch": 2, "seq": 5}))
    by_shape = load_model(path, ShapeSpec(input_shapes={"x": (2, 5, 16)}))
    for loaded in (by_dims, by_shape):
        assert loaded.input_shapes == {"x": [2, 5, 16]}
        out = loaded.model.graph.output[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in out] == [2, 5, 8]


@pytest.mark.parametrize(("spec", "fragment"), [
    (ShapeSpec(input_shapes={"nope": (1, 2, 16)}), "not an input"),
    (ShapeSpec(input_shapes={"x": (1, 16)}), "rank 3"),
    (ShapeSpec(input_shapes={"x": (1, 2, 15)}), "fixed to 16"),
    (ShapeSpec(dims={"batch": 1, "seq": 2, "typo": 3}), "typo"),
])
def test_bad_shape_flags_name_the_fault(tmp_path, spec, fragment):
    path = build.save(build.dynamic_mlp(), tmp_path / "dyn.onnx")
    with pytest.raises(UserError, match=fragment):
        load_model(path, spec)


def test_if_subgraph_with_outer_scope_reads_and_state(tmp_path):
    path = build.save(build.if_model(), tmp_path / "if.onnx")
    model = load_model(path).model
    assert [n.op_type for n in model.graph.node].count("If") == 1
    assert _all_static(model)
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_cycle_is_a_user_error_naming_the_nodes(tmp_path):
    path = build.save(build.cyclic_model(), tmp_path / "cycle.onnx")
    with pytest.raises(UserError, match="cycle") as caught:
        load_model(path)
    assert "first" in str(caught.value) and "second" in str(caught.value)


def test_unsorted_graph_is_sorted_and_names_made_unique(tmp_path):
    path = build.save(build.unsorted_unnamed_model(), tmp_path / "unsorted.onnx")
    model = load_model(path).model
    assert [n.op_type for n in model.graph.node] == ["Sigmoid", "Neg", "Relu"]
    names = [n.name for n in model.graph.node]
    assert all(names) and len(set(names)) == 3


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", "empty"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not"),
])
def test_unreadable_files(tmp_path, content, fragment):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=fragment):
        load_model(path)


def test_truncated_protobuf(tmp_path):
    data = build.legacy_ir3_cnn().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a"):
        load_model(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "absent.onnx")
    with pytest.raises(UserError, match="directory"):
        load_model(tmp_path)


def test_shape_and_dim_parsing():
    assert parse_shape("x=1x3x224x224") == ("x", (1, 3, 224, 224))
    assert parse_dim("seq=128") == ("seq", 128)
    for bad in ("x", "x=", "x=1xa", "x=0x3", "=1x2"):
        with pytest.raises(UserError, match="--input-shape"):
            parse_shape(bad)
    with pytest.raises(UserError, match="--dim"):
        parse_dim("seq=-1")


def test_external_data_is_read_by_path(tmp_path):
    model = build.legacy_ir3_cnn()
    model.ir_version = 4
    path = tmp_path / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.data", size_threshold=0)
    assert (tmp_path / "external.data").stat().st_size > 0
    loaded = load_model(path)
    weights = {init.name: init for init in loaded.model.graph.initializer}
    assert weights["conv_w"].data_location == onnx.TensorProto.DEFAULT
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(loaded.model, {"x": x})[0],
                               _run(build.legacy_ir3_cnn(), {"x": x})[0], rtol=1e-5)

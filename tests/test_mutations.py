"""Corrupted models: mutants of real models must exit 2 (or compile), never 1, never hang.

Eight small real models (packaged in wheels or built by other exporters: Silero VAD, Magika,
a scikit-learn pipeline, onnxruntime-quantized CNN and MLP, a Scan RNN, a PyTorch 0.3 IR 3
file, an ai.onnx.ml classifier) each give `MUTANTS_PER_MODEL` mutants, deterministically
(numpy RNG seeded by the model's name):

* byte flips at random offsets and truncations at random lengths of the file;
* wrong dtypes (an initializer's data type, a graph input's element type, UNDEFINED);
* a dangling node input, a cycle, a tensor produced twice, an initializer defined twice;
* absurd dims (0, negative, 2**40) on a graph input and on an initializer;
* external data (all weights in one file next to the model) deleted or cut short.

Each mutant goes through the whole compile in-process (`compile_model`, as `mapper
compile` runs it: load, passes, the written model's checker and onnxruntime load), because
a corrupt input the loader lets through surfaces only at those last checks, as exit 1. The
properties:

* never exit 1 (a `MapperError` of exit 1 or any other exception is a bug in mapper);
* each mutant finishes within `CASE_SECONDS`, and the worker's peak memory stays bounded
  (an absurd dim must be refused before anything of that size is allocated);
* a mutant that still parses into a valid model may compile (exit 0); the structural
  corruptions must exit 2 with a message that names the problem: the dangling tensor, the
  word "cycle", the duplicated name, the absurd dim's input or initializer, the missing or
  short external data file.
"""

from __future__ import annotations

import resource
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from mapper.options import CompileOptions
from models.corpus import CORPUS, fetch
from tests.graphgen import compile_exit

MODELS = ("silero_vad_16k_op15", "magika_standard_v3_3", "sklearn_pipeline",
          "q_ort_static_cnn", "q_cast_mul_mlp", "scan_rnn", "torch03_batchnorm2d",
          "logreg_iris")
FLIPS = 32
TRUNCATIONS = 16
CASE_SECONDS = 30.0
# The worker's peak resident memory may grow by at most this over a model's mutants: a
# 2**40 dim that reached an allocation would take terabytes (or die trying).
MEMORY_GROWTH = 1 << 30


@dataclass(frozen=True)
class Mutant:
    """One corrupted file; `expect` lists words an exit-2 message must contain (None: any
    exit but 1 is fine, e.g. a byte flip inside a weight still parses)."""

    label: str
    write: Callable[[Path], Path]
    expect: tuple[str, ...] | None = None


def _bytes_mutant(label: str, data: bytes) -> Mutant:
    def write(directory: Path) -> Path:
        path = directory / "model.onnx"
        path.write_bytes(data)
        return path

    return Mutant(label, write)


def _model_mutant(label: str, model: onnx.ModelProto, expect: tuple[str, ...] | None
                  ) -> Mutant:
    data = model.SerializeToString()
    mutant = _bytes_mutant(label, data)
    return Mutant(label, mutant.write, expect)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def _structural(model: onnx.ModelProto, rng: np.random.Generator) -> Iterator[Mutant]:
    graph = model.graph
    nodes = len(graph.node)
    with_inputs = [i for i, n in enumerate(graph.node) if any(n.input)]
    for _ in range(3):
        index = int(rng.choice(with_inputs))
        slot = int(rng.choice([k for k, name in enumerate(graph.node[index].input) if name]))
        mutant = _copy(model)
        ghost = f"ghost_{index}_{slot}"
        mutant.graph.node[index].input[slot] = ghost
        yield _model_mutant("dangling input", mutant, (ghost,))
    for _ in range(3):
        # A node reads the output of itself or of a node after it: a cycle.
        index = int(rng.choice(with_inputs))
        later = int(rng.integers(index, nodes))
        if not graph.node[later].output:
            continue
        mutant = _copy(model)
        node = mutant.graph.node[index]
        slot = next(k for k, name in enumerate(node.input) if name)
        node.input[slot] = graph.node[later].output[0]
        yield _model_mutant("cycle", mutant, ("cycle",))
    if nodes > 1:
        for _ in range(2):
            first, second = sorted(int(i) for i in rng.choice(nodes, 2, replace=False))
            mutant = _copy(model)
            name = mutant.graph.node[first].output[0]
            mutant.graph.node[second].output[0] = name
            yield _model_mutant("tensor produced twice", mutant, (name, "twice"))
    if graph.initializer:
        for _ in range(2):
            index = int(rng.integers(len(graph.initializer)))
            mutant = _copy(model)
            mutant.graph.initializer.append(mutant.graph.initializer[index])
            yield _model_mutant("initializer twice", mutant, (graph.initializer[index].name,))
        for data_type in (TensorProto.INT64, TensorProto.UNDEFINED, TensorProto.FLOAT16, 99):
            index = int(rng.integers(len(graph.initializer)))
            if graph.initializer[index].data_type == data_type:
                continue
            mutant = _copy(model)
            mutant.graph.initializer[index].data_type = data_type
            yield _model_mutant("initializer dtype", mutant, None)
        for value in (0, -2, 2**40):
            candidates = [i for i, t in enumerate(graph.initializer) if t.dims]
            if not candidates:
                break
            index = int(rng.choice(candidates))
            tensor = graph.initializer[index]
            mutant = _copy(model)
            mutant.graph.initializer[index].dims[0] = value
            words = (tensor.name,) if value != 0 or tensor.dims[0] != 0 else None
            yield _model_mutant(f"initializer dim {value}", mutant, words)
    inputs = [i for i in graph.input if i.type.HasField("tensor_type")
              and i.type.tensor_type.shape.dim
              and i.name not in {t.name for t in graph.initializer}]
    for inp in inputs[:2]:
        for elem_type in (TensorProto.STRING, TensorProto.UNDEFINED):
            mutant = _copy(model)
            target = next(i for i in mutant.graph.input if i.name == inp.name)
            target.type.tensor_type.elem_type = elem_type
            yield _model_mutant("input dtype", mutant, None)
        for value in (0, -3, 2**40):
            mutant = _copy(model)
            target = next(i for i in mutant.graph.input if i.name == inp.name)
            dims = target.type.tensor_type.shape.dim
            axis = int(rng.integers(len(dims)))
            dims[axis].Clear()
            dims[axis].dim_value = value
            # A user's --input-shape may override a 0 or negative dim (then it compiles);
            # otherwise the message names the input.
            yield _model_mutant(f"input dim {value}", mutant,
                                (inp.name,) if value == 2**40 else None)


def _external(model: onnx.ModelProto, rng: np.random.Generator) -> Iterator[Mutant]:
    """The weights in `model.data` next to the model, then that file deleted or cut short."""
    def variant(label: str, cut: Callable[[Path], None]) -> Mutant:
        def write(directory: Path) -> Path:
            path = directory / "model.onnx"
            onnx.save(_copy(raw), str(path), save_as_external_data=True,
                      all_tensors_to_one_file=True, location="model.data", size_threshold=0)
            cut(directory / "model.data")
            return path

        return Mutant(label, write, ("model.data",))

    if not model.graph.initializer:
        return
    # Only raw_data moves to external files (scikit-learn's exporter writes float_data).
    raw = _copy(model)
    for tensor in raw.graph.initializer:
        if tensor.data_type != TensorProto.STRING and not tensor.HasField("raw_data"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    yield variant("external data missing", lambda data: data.unlink())
    for _ in range(3):
        fraction = float(rng.uniform(0.0, 0.95))

        def truncate(data: Path, fraction: float = fraction) -> None:
            content = data.read_bytes()
            data.write_bytes(content[:int(len(content) * fraction)])

        yield variant("external data short", truncate)


def mutants(name: str) -> list[Mutant]:
    """Every mutant of corpus model `name`, the same on every run."""
    path = fetch(name)
    data = path.read_bytes()
    model = onnx.load(str(path))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    found: list[Mutant] = []
    for _ in range(FLIPS):
        flipped = bytearray(data)
        for offset in rng.integers(0, len(data), int(rng.integers(1, 9))):
            flipped[offset] ^= 1 << int(rng.integers(0, 8))
        found.append(_bytes_mutant("byte flips", bytes(flipped)))
    for _ in range(TRUNCATIONS):
        found.append(_bytes_mutant("truncated", data[:int(rng.integers(0, len(data)))]))
    found.extend(_structural(model, rng))
    found.extend(_external(model, rng))
    return found


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _options(name: str) -> CompileOptions:
    return CompileOptions(time_limit_s=2, input_shapes=CORPUS[name].input_shapes or {})


# Over ~10 s each on a 2-core machine (the mutants that still parse compile in full).
SLOW = {"silero_vad_16k_op15", "magika_standard_v3_3", "q_cast_mul_mlp"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in MODELS])
def test_mutants_never_exit_1(name, tmp_path):
    cases = mutants(name)
    assert len(cases) >= 60, len(cases)
    options = _options(name)
    baseline = _peak_rss()
    problems = []
    counts: dict[int, int] = {}
    for number, mutant in enumerate(cases):
        directory = tmp_path / f"m{number}"
        directory.mkdir()
        path = mutant.write(directory)
        started = time.perf_counter()
        code, message = compile_exit(path, "a100", directory / "out", options)
        seconds = time.perf_counter() - started
        counts[code] = counts.get(code, 0) + 1
        where = f"mutant {number} ({mutant.label}) of {name}"
        if code == 1 or "Traceback" in message:
            problems.append(f"{where}: exit {code}: {message[-1500:]}")
        elif seconds > CASE_SECONDS:
            problems.append(f"{where}: {seconds:.1f} s (budget {CASE_SECONDS} s)")
        elif mutant.expect is not None and (code != 2 or not all(
                word in message for word in mutant.expect)):
            problems.append(f"{where}: exit {code}, expected 2 naming {mutant.expect}: "
                            f"{message[:400]}")
        shutil.rmtree(directory, ignore_errors=True)
    assert not problems, f"{len(problems)} of {len(cases)} mutants:\n" + "\n".join(problems)
    assert counts.get(2, 0) >= len(cases) // 3, counts  # most corruptions are caught
    assert _peak_rss() - baseline < MEMORY_GROWTH


def test_the_suite_runs_at_least_500_mutants_of_5_models():
    assert len(MODELS) >= 5
    assert sum(len(mutants(name)) for name in MODELS) >= 500


# --------------------------------------------------------------------------- regressions


def _mlp() -> onnx.ModelProto:
    return onnx.load(str(fetch("q_cast_mul_mlp")))


def _compile(model: onnx.ModelProto, tmp_path: Path) -> tuple[int, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return compile_exit(path, "a100", tmp_path / "out", CompileOptions(time_limit_s=2))


def test_a_tensor_produced_by_two_nodes_is_named_not_planned(tmp_path):
    """Was exit 1 (an invalid memory plan: a residency before its producer) on a Scan model,
    or 'reads a tensor no node provides' naming the wrong tensor."""
    model = onnx.load(str(fetch("scan_rnn")))
    model.graph.node[1].output[0] = model.graph.node[0].output[0]
    code, message = _compile(model, tmp_path)
    assert code == 2 and "defined twice" in message
    assert repr(model.graph.node[0].output[0]) in message


def test_an_initializer_defined_twice_is_named(tmp_path):
    """Was exit 1: the optimized model failed the checker ('initializer name is not unique')."""
    model = _mlp()
    model.graph.initializer.append(model.graph.initializer[0])
    code, message = _compile(model, tmp_path)
    assert code == 2 and model.graph.initializer[0].name in message


def test_an_initializer_whose_bytes_do_not_match_its_dtype_and_shape(tmp_path):
    """Was exit 1 (the checker on the written model): a wrong dtype, an absurd dim, and an
    UNDEFINED dtype on a weight each name the initializer."""
    name = _mlp().graph.initializer[0].name
    for change in ("dtype", "huge", "negative", "undefined"):
        model = _mlp()
        tensor = model.graph.initializer[0]
        if change == "dtype":
            tensor.data_type = TensorProto.INT64
        elif change == "huge":
            tensor.dims[0] = 2**40
        elif change == "negative":
            tensor.dims[0] = -2
        else:
            tensor.data_type = TensorProto.UNDEFINED
        code, message = _compile(model, tmp_path / change)
        assert code == 2 and repr(name) in message, (change, message)


def test_an_input_of_the_wrong_type_is_a_bad_model_not_a_bug(tmp_path):
    """Was exit 1: a string input into MatMul passed the loader and failed the checker on
    the optimized model."""
    model = _mlp()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    code, message = _compile(model, tmp_path)
    assert code == 2 and "not a valid ONNX model" in message and "MatMul" in message


def test_absurd_input_dims_are_refused_before_anything_is_allocated(tmp_path):
    """Was exit 1 (or a multi-terabyte allocation in the shape-measuring run): 2**40 on an
    input; 10**9 where shapes must be measured is refused before the run allocates."""
    model = onnx.load(str(fetch("logreg_iris")))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value = 2**40
    before = _peak_rss()
    code, message = _compile(model, tmp_path / "huge")
    assert code == 2 and "float_input" in message and str(2**40) in message
    dims[1].dim_value = 10**9
    code, message = _compile(model, tmp_path / "big")
    assert code == 2 and "bytes of inputs" in message and "float_input" in message
    assert _peak_rss() - before < MEMORY_GROWTH
    for value in (0, -3):
        dims[1].Clear()
        dims[1].dim_value = value
        code, message = _compile(model, tmp_path / f"v{value}")
        assert code == 2 and f"size {value} in the model" in message, message


def test_missing_or_short_external_data_names_the_file(tmp_path):
    """Was exit 1 for a missing file (onnx's 'is not regular file' ValidationError)."""
    model = _mlp()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.weights", size_threshold=0)
    data = (tmp_path / "m.weights").read_bytes()
    (tmp_path / "m.weights").write_bytes(data[:len(data) // 3])
    code, message = compile_exit(path, "a100", tmp_path / "o1", CompileOptions())
    assert code == 2 and "'m.weights'" in message and "truncated" in message
    (tmp_path / "m.weights").unlink()
    code, message = compile_exit(path, "a100", tmp_path / "o2", CompileOptions())
    assert code == 2 and "'m.weights'" in message and "does not exist" in message


def test_a_checker_message_that_is_not_utf8_is_still_exit_2(tmp_path):
    """Was exit 1: a flipped byte in a node name made the ONNX checker's own error message
    undecodable (UnicodeDecodeError)."""
    model = _mlp()
    data = bytearray(model.SerializeToString())
    name = model.graph.output[0].name.encode()
    offset = data.rindex(name)
    data[offset] ^= 0x80  # the output's name no longer matches the node that makes it
    path = tmp_path / "m.onnx"
    path.write_bytes(bytes(data))
    code, message = compile_exit(path, "a100", tmp_path / "out", CompileOptions())
    assert code == 2, message

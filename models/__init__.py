"""Reference models for tests, docs and benchmarks: built from torch, exported to ONNX, cached.

    from models import build, sample_inputs
    path = build("resnet50")                # .cache/models/resnet50-v2.1.onnx (+ .json)
    meta = metadata("resnet50")             # inputs, outputs, opset, dynamic dims, ...
    feeds = sample_inputs("gpt_decoder")    # {"input_ids": int64 [1, 64]}

The cache (`$MAPPER_MODELS_CACHE`, else `<repo>/.cache/models`) keys each file on the model
name and its builder's version, so changing a builder invalidates it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models._registry import BUILDER_VERSION, SPECS, TORCH_SEED, ModelSpec, get_spec, resolve

__all__ = [
    "BUILDER_VERSION",
    "CACHE_ENV",
    "DEFAULT_CACHE_DIR",
    "REFERENCE_MODELS",
    "build",
    "cache_path",
    "default_cache_dir",
    "metadata",
    "sample_inputs",
    "torch_model",
]

REFERENCE_MODELS: tuple[str, ...] = tuple(SPECS)

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "models"
CACHE_ENV = "MAPPER_MODELS_CACHE"

_ONNX_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def default_cache_dir() -> Path:
    """`$MAPPER_MODELS_CACHE` if set, else `<repo>/.cache/models`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else DEFAULT_CACHE_DIR


def cache_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where `build(name, cache_dir)` puts the model; the metadata is the same path with .json."""
    spec = get_spec(name)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{name}-v{BUILDER_VERSION}.{spec.version}.onnx"


def build(name: str, cache_dir: Path | None = None, *, force: bool = False) -> Path:
    """Return the path of reference model `name` as ONNX, exporting it only if not cached.

    The metadata (`metadata(name)`) is written beside it with the suffix .json.
    """
    path = cache_path(name, cache_dir)
    if not force and _is_built(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Parallel test workers may ask for the same model: one builds, the others wait for it.
    with _file_lock(path.with_suffix(".lock")):
        if not force and _is_built(path):
            return path
        _build_into(get_spec(name), path)
    return path


# Importing the CLI submodule `models.build` rebinds the package attribute `build` to that
# module (models/build.py makes it callable for that reason); code in here uses this alias.
_build = build


def metadata(name: str, cache_dir: Path | None = None) -> dict[str, Any]:
    """Return the metadata of reference model `name` (building it first if needed)."""
    path = _build(name, cache_dir)
    return json.loads(path.with_suffix(".json").read_text())


def sample_inputs(
    name: str, seed: int = 0, *, dims: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Valid seeded inputs for onnxruntime: token ids in range, real tokens for minilm_l6.

    `dims` sets dynamic dims (default: the value the model was exported with, e.g. seq=64).
    """
    spec = get_spec(name)
    if spec.sampler is not None:
        return resolve(spec.sampler)(seed)
    sizes = {d: v.example for d, v in spec.dynamic_dims.items()} | dict(dims or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for i in spec.inputs:
        shape = tuple(sizes[s] if isinstance(s, str) else s for s in i.shape)
        if i.low is not None and i.high is not None:
            feeds[i.name] = rng.integers(i.low, i.high, size=shape, dtype=i.dtype)
        else:
            feeds[i.name] = rng.standard_normal(shape, dtype=np.float32).astype(i.dtype)
    return feeds


def torch_model(name: str) -> Any:
    """The seeded torch module (eval mode) that `build(name)` exports; needs torch.

    Its forward takes the inputs positionally in the ONNX input order and returns the
    ONNX outputs (a tuple when there are several).
    """
    from models._export import torch_module

    return torch_module(get_spec(name))


def _is_built(path: Path) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: builds are still atomic, only not deduplicated
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes) -> None:
    # Write beside the target then rename: readers never see a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; cached models are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _build_into(spec: ModelSpec, path: Path) -> None:
    import hashlib

    from models._export import export

    start = time.perf_counter()
    model, info = export(spec, sample_inputs(spec.name))
    data = model.SerializeToString()
    meta = _describe(spec, model, info)
    if spec.annotate:
        meta |= resolve(spec.annotate)(model)
    meta["build_seconds"] = round(time.perf_counter() - start, 2)
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    # Metadata first, model last: a present .onnx implies its .json is there too.
    _atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    _atomic_write(path, data)
    print(
        f"models: built {spec.name} in {meta['build_seconds']} s "
        f"({info['export_mode']}, opset {meta['opset']}, {meta['node_count']} nodes) -> {path}",
        file=sys.stderr,
    )


def _value_shape(value: Any) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]


def _describe(spec: ModelSpec, model: Any, info: dict) -> dict[str, Any]:
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inputs = []
    for i in spec.inputs:
        entry: dict[str, Any] = {"name": i.name, "shape": list(i.shape), "dtype": i.dtype}
        dynamic = {str(a): s for a, s in enumerate(i.shape) if isinstance(s, str)}
        if dynamic:
            entry["dynamic_axes"] = dynamic
        if i.low is not None:
            entry["value_range"] = [i.low, i.high]  # [low, high)
        inputs.append(entry)
    graph_inputs = {v.name: _value_shape(v) for v in graph.input}
    for entry in inputs:
        if graph_inputs.get(entry["name"]) != entry["shape"]:
            raise RuntimeError(
                f"{spec.name}: exported input {entry['name']} has shape "
                f"{graph_inputs.get(entry['name'])}, expected {entry['shape']}"
            )
    outputs = [
        {
            "name": v.name,
            "shape": _value_shape(v),
            "dtype": _ONNX_DTYPES.get(v.type.tensor_type.elem_type, "other"),
        }
        for v in graph.output
    ]
    dynamic_dims = {
        name: {
            "example": d.example,
            "min": d.min,
            "max": d.max,
            "fix_with": [f"--dim {name}={d.example}"]
            + [
                f"--input-shape {i.name}="
                + "x".join(str(d.example if s == name else s) for s in i.shape)
                for i in spec.inputs
                if name in i.shape
            ],
        }
        for name, d in spec.dynamic_dims.items()
    }
    params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    return {
        "name": spec.name,
        "version": f"{BUILDER_VERSION}.{spec.version}",
        "description": spec.description,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_dims": dynamic_dims,
        "opset": opset,
        "ir_version": model.ir_version,
        "node_count": len(graph.node),
        "op_counts": dict(sorted(Counter(n.op_type for n in graph.node).items())),
        "initializer_count": len(graph.initializer),
        "parameter_count": params,
        "torch_seed": TORCH_SEED,
        **info,
        **dict(spec.notes),
    }


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy a file so that `dst` is never seen half-written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

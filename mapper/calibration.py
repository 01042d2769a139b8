"""Calibration inputs and the onnxruntime runs every pass that needs data shares.

Inputs come from `--calib FILE.npz` (one array per graph input, samples stacked first) or,
without it, from seeded stand-ins that fit the model: token ids in the range of the
embedding they index, masks of ones, position ids counting up, N(0, 1) floats. A `Session`
runs a model on such feeds and can tap any intermediate tensor (the activations a
compression pass fits weights on, the TopK indices of MoE routing).
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from onnx import ModelProto, helper

from mapper.errors import UserError
from mapper.onnx_utils import np_dtype

Feed = dict[str, np.ndarray]
InputSource = Literal["calib", "synthetic"]


def read_npz(path: Path, label: str) -> dict[str, np.ndarray]:
    """Every array of a .npz file (no pickles); a user error names `label` if it cannot be."""
    if not path.is_file():
        raise UserError(f"{label} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"{label} is not a readable .npz file ({error})") from None


def load_calibration(path: Path) -> dict[str, np.ndarray]:
    """Read a calibration .npz; every array must have the same leading (sample) count."""
    arrays = read_npz(path, f"calibration file {str(path)!r}")
    if not arrays:
        raise UserError(f"calibration file {str(path)!r} holds no arrays: save one array per "
                        "graph input name, samples stacked on a new leading axis")
    counts = {name: (array.shape[0] if array.ndim else 0) for name, array in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        listing = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise UserError(f"calibration file {str(path)!r}: every array needs the same number of "
                        f"samples on its leading axis ({listing})")
    return arrays


def first_sample(calibration: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sample 0 of every input (the leading axis dropped)."""
    return {name: array[0] for name, array in calibration.items()}


def _runtime_inputs(model: ModelProto) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def vocab_sizes(model: ModelProto) -> dict[str, int]:
    """Integer graph inputs used as Gather indices into a weight: input -> rows of that weight
    (the vocabulary), following Cast/Reshape/Unsqueeze/Squeeze/Flatten in between."""
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    passthrough = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}
    origin = {value.name: value.name for value in _runtime_inputs(model)}
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in passthrough and node.input and node.input[0] in origin:
            for out in node.output:
                origin[out] = origin[node.input[0]]
        elif node.op_type in ("Gather", "GatherBlockQuantized") and len(node.input) >= 2 \
                and node.input[1] in origin:
            axis = next((a.i for a in node.attribute if a.name in ("axis", "gather_axis")), 0)
            dims = weights.get(node.input[0])
            if dims:
                rows = int(dims[axis])
                if node.op_type == "GatherBlockQuantized":
                    rows = int(dims[0])
                current = sizes.get(origin[node.input[1]])
                sizes[origin[node.input[1]]] = rows if current is None else min(current, rows)
    return sizes


def generated_inputs(model: ModelProto, samples: int, seed: int) -> list[Feed]:
    """Seeded stand-in inputs: token ids in the embedding's range, masks of ones, position
    ids counting up, token types of zero, N(0, 1) floats.

    Random ids through a trained model are not real text; `--calib` with real samples
    should be preferred when quality numbers matter.
    """
    rng = np.random.default_rng(seed)
    vocab = vocab_sizes(model)
    feeds: list[Feed] = []
    for _ in range(samples):
        feed: Feed = {}
        for value in _runtime_inputs(model):
            tensor = value.type.tensor_type
            shape = tuple(d.dim_value for d in tensor.shape.dim)
            dtype = np_dtype(tensor.elem_type)
            lowered = value.name.lower()
            if "mask" in lowered or dtype == np.bool_:
                feed[value.name] = np.ones(shape, dtype=dtype)
            elif value.name in vocab and "position" not in lowered:
                feed[value.name] = rng.integers(0, vocab[value.name], size=shape).astype(dtype)
            elif np.issubdtype(dtype, np.floating):
                feed[value.name] = rng.standard_normal(shape).astype(dtype)
            elif "position" in lowered and shape:
                feed[value.name] = np.broadcast_to(
                    np.arange(shape[-1], dtype=dtype), shape).copy()
            else:
                feed[value.name] = np.zeros(shape, dtype=dtype)
        feeds.append(feed)
    return feeds


def calibration_feeds(arrays: Mapping[str, np.ndarray], model: ModelProto, purpose: str
                      ) -> list[Feed]:
    """Per-sample feeds from a `--calib` file (samples on the leading axis), cast and shaped
    to the model's inputs."""
    wanted = _runtime_inputs(model)
    missing = [v.name for v in wanted if v.name not in arrays]
    if missing:
        raise UserError(f"calibration file lacks the graph input(s) {', '.join(missing)} needed "
                        f"{purpose}; it holds: {', '.join(sorted(arrays)) or '(nothing)'}")
    count = next(iter(arrays.values())).shape[0]
    feeds = []
    for index in range(count):
        feed: Feed = {}
        for value in wanted:
            tensor = value.type.tensor_type
            shape = tuple(d.dim_value for d in tensor.shape.dim)
            sample = np.asarray(arrays[value.name][index])
            if sample.size != int(np.prod(shape)):
                raise UserError(f"calibration input {value.name!r} has samples of shape "
                                f"{list(sample.shape)}, the model takes {list(shape)}")
            feed[value.name] = sample.astype(np_dtype(tensor.elem_type)).reshape(shape)
        feeds.append(feed)
    return feeds


@dataclass(frozen=True)
class SampleSplit:
    """Inputs for fitting and, disjoint from them, inputs for measuring quality."""

    calibration: tuple[Feed, ...]
    evaluation: tuple[Feed, ...]
    source: InputSource
    label: str


def split_samples(model: ModelProto, calib: Path | None, calibration: int, evaluation: int,
                  seed: int) -> SampleSplit:
    """The first `calibration` samples fit, the next `evaluation` measure (never the same
    ones). From `--calib` when given, else generated with `seed`."""
    if calib is not None:
        feeds = calibration_feeds(load_calibration(calib), model, "to calibrate and evaluate")
        if len(feeds) < 2:
            raise UserError(f"calibration file {str(calib)!r} holds {len(feeds)} sample(s): "
                            "quality is measured on samples disjoint from the calibration "
                            "ones, so give at least 2")
        fit = min(calibration, max(1, len(feeds) // 2)) if len(feeds) < calibration + 1 \
            else calibration
        rest = feeds[fit:fit + evaluation]
        return SampleSplit(tuple(feeds[:fit]), tuple(rest), "calib", calib.name)
    feeds = generated_inputs(model, calibration + evaluation, seed)
    return SampleSplit(tuple(feeds[:calibration]), tuple(feeds[calibration:]), "synthetic",
                       "synthetic")


class Session:
    """One onnxruntime CPU session of a model, optionally returning extra tensors (taps)."""

    def __init__(self, model: ModelProto, taps: Sequence[str] = (), exact: bool = True) -> None:
        import onnx
        import onnxruntime as ort

        self.taps = tuple(taps)
        outputs = model.graph.output
        original = len(outputs)
        present = {out.name for out in outputs}
        for name in self.taps:
            if name not in present:
                outputs.append(helper.make_empty_tensor_value_info(name))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if exact:
            # Fused QDQ MatMuls otherwise run with int8 activations (accuracy level 4).
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        try:
            big = sum(init.ByteSize() for init in model.graph.initializer) > 2**31 - 2**28
            with tempfile.TemporaryDirectory(prefix="mapper-run-") as tmp:
                if big:
                    path = Path(tmp) / "model.onnx"
                    onnx.save(model, str(path), save_as_external_data=True,
                              all_tensors_to_one_file=True, location="model.onnx.data")
                    source: str | bytes = str(path)
                else:
                    source = model.SerializeToString()
                self._session = ort.InferenceSession(source, options,
                                                     providers=["CPUExecutionProvider"])
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise UserError(f"onnxruntime cannot run the model ({reason})") from None
        finally:
            while len(outputs) > original:
                del outputs[len(outputs) - 1]
        self.outputs = tuple(out.name for out in model.graph.output)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every graph output and tap of one feed."""
        names = [*self.outputs, *(t for t in self.taps if t not in self.outputs)]
        try:
            values = self._session.run(names, dict(feed))
        except Exception as error:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise UserError(f"onnxruntime failed on the calibration inputs ({reason})") from None
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}

    def run_all(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """`run` on every feed, in order."""
        return [self.run(feed) for feed in feeds]

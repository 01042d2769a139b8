"""Models that arrive already quantized, in each style real tools write them.

Made offline: by onnxruntime's own quantizers (MatMulNBitsQuantizer, quantize_dynamic,
quantize_static) and by hand (per-channel DequantizeLinear, blocked DequantizeLinear on int4,
int8 weights with Cast and Mul). Each is a small MLP or CNN with seeded weights big enough
that the weights dominate the file, so "stays quantized" is measurable on stored bytes.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_HIDDEN = (256, 512, 256, 64)


def _float_mlp(seed: int = 3, opset: int = 17) -> onnx.ModelProto:
    """x[4, 256] -> MatMul/Add/Relu x 3 -> logits[4, 64], fp32 weights."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for index, (k, n) in enumerate(itertools.pairwise(_HIDDEN)):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        b = (0.1 * rng.standard_normal(n)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{index}.weight"),
                  numpy_helper.from_array(b, f"fc{index}.bias")]
        nodes += [helper.make_node("MatMul", [current, f"fc{index}.weight"], [f"mm{index}"],
                                   name=f"fc{index}"),
                  helper.make_node("Add", [f"mm{index}", f"fc{index}.bias"], [f"add{index}"],
                                   name=f"fc{index}_bias")]
        current = f"add{index}"
        if index < len(_HIDDEN) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"relu{index}"],
                                          name=f"relu{index}"))
            current = f"relu{index}"
    nodes.append(helper.make_node("Identity", [current], ["logits"], name="out"))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 256])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    return model


def _float_cnn(seed: int = 4) -> onnx.ModelProto:
    """img[1, 3, 32, 32] -> 2 x (Conv 3x3, Relu) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    w0 = (rng.standard_normal((32, 3, 3, 3)) * 0.2).astype(np.float32)
    w1 = (rng.standard_normal((64, 32, 3, 3)) * 0.06).astype(np.float32)
    fc = (rng.standard_normal((10, 64)) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(w0, "conv0.weight"),
             numpy_helper.from_array(np.zeros(32, np.float32), "conv0.bias"),
             numpy_helper.from_array(w1, "conv1.weight"),
             numpy_helper.from_array(np.zeros(64, np.float32), "conv1.bias"),
             numpy_helper.from_array(fc, "fc.weight"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias")]
    nodes = [helper.make_node("Conv", ["img", "conv0.weight", "conv0.bias"], ["c0"],
                              name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "conv1.weight", "conv1.bias"], ["c1"],
                              name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc",
                              transB=1)]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def ort_matmulnbits_mlp() -> onnx.ModelProto:
    """The MLP through onnxruntime's MatMulNBitsQuantizer: 4-bit, blocks of 32, asymmetric."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, bits=4)
    quantizer = MatMulNBitsQuantizer(_float_mlp(), bits=4, block_size=32, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def ort_dynamic_mlp() -> onnx.ModelProto:
    """The MLP through onnxruntime's quantize_dynamic: int8 weights, MatMulInteger."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(_float_mlp(), str(source))
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        return onnx.load(str(target))


def ort_static_cnn() -> onnx.ModelProto:
    """The CNN through onnxruntime's quantize_static (QOperator: QLinearConv, QGemm)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(5)
            self.feeds = iter([{"img": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                               for _ in range(8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(_float_cnn(), str(source))
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QOperator,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        per_channel=True)
        return onnx.load(str(target))


def _int8_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
    codes = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return codes, scale


def hand_dq_per_channel_mlp() -> onnx.ModelProto:
    """By hand: int8 weights with per-output-channel DequantizeLinear feeding each MatMul."""
    model = _float_mlp()
    return _replace_weights(model, "dq")


def hand_cast_mul_mlp() -> onnx.ModelProto:
    """By hand: int8 weights, Cast to float, Mul by a per-channel scale (older converters)."""
    return _replace_weights(_float_mlp(), "cast_mul")


def hand_blocked_int4_mlp() -> onnx.ModelProto:
    """By hand: int4 weights with blocked DequantizeLinear (opset 21, blocks of 32 along K)."""
    model = _float_mlp(opset=21)
    return _replace_weights(model, "int4_blocked")


def _replace_weights(model: onnx.ModelProto, style: str) -> onnx.ModelProto:
    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer
               if init.name.endswith(".weight")}
    kept = [init for init in graph.initializer if init.name not in weights]
    new_inits: list[onnx.TensorProto] = []
    decode: list[onnx.NodeProto] = []
    for name, w in weights.items():
        if style == "int4_blocked":
            k, n = w.shape
            blocks = w.reshape(k // 32, 32, n)
            scale = (np.abs(blocks).max(axis=1) / 7.0).astype(np.float32)
            codes = np.clip(np.round(blocks / scale[:, None, :]), -8, 7).reshape(k, n)
            flat = codes.astype(np.int16).ravel() & 0xF
            tensor = onnx.TensorProto()
            tensor.name, tensor.data_type = f"{name}.q", TensorProto.INT4
            tensor.dims.extend([k, n])
            tensor.raw_data = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()
            new_inits += [tensor, numpy_helper.from_array(scale, f"{name}.scale")]
            decode.append(helper.make_node("DequantizeLinear", [f"{name}.q", f"{name}.scale"],
                                           [name], name=f"{name}.dq", axis=0, block_size=32))
            continue
        codes, scale = _int8_per_channel(w)
        new_inits += [numpy_helper.from_array(codes, f"{name}.q"),
                      numpy_helper.from_array(scale, f"{name}.scale")]
        if style == "dq":
            decode.append(helper.make_node("DequantizeLinear", [f"{name}.q", f"{name}.scale"],
                                           [name], name=f"{name}.dq", axis=1))
        else:
            decode += [helper.make_node("Cast", [f"{name}.q"], [f"{name}.f"], name=f"{name}.cast",
                                        to=TensorProto.FLOAT),
                       helper.make_node("Mul", [f"{name}.f", f"{name}.scale"], [name],
                                        name=f"{name}.mul")]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *new_inits])
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*decode, *nodes])
    return model

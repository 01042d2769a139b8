"""Classic CNNs written directly with ``onnx.helper``, emulating the ONNX model zoo's files.

Each builder returns an IR-3 model at opset 7, 8 or 9 with seeded random weights (or
``ConstantOfShape``-made ones), in the layout the zoo's original exporters wrote: conv + bias
or conv + unfused BatchNormalization, ``Reshape`` with a ``Constant`` target shape before a
``Gemm`` head, ``Dropout`` left in the graph, ``Softmax`` at the end. No torch is involved:
these stand for "a model some other tool produced". Topologies follow the papers / the zoo
files (ResNet-50 v1 as in Caffe2, GoogLeNet with LRN, DenseNet-121, SqueezeNet 1.1, VGG-16,
tiny-YOLOv3, MobileNet v1).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ._builder import LegacyGraph, WeightMode, float_input

IMAGE = [1, 3, 224, 224]
CLASSES = [1, 1000]


def _classifier_model(
    g: LegacyGraph, x_name: str, probs: str, doc: str, out_dims: list[int] | None = None
) -> onnx.ModelProto:
    return g.model(
        [float_input(x_name, IMAGE)],
        [(probs, TensorProto.FLOAT, out_dims or CLASSES)],
        doc=doc,
    )


# --------------------------------------------------------------------------- ResNet-50


def resnet50(
    *, opset: int = 9, weights: WeightMode = "init-inputs", seed: int = 0
) -> onnx.ModelProto:
    """ResNet-50 v1 in the Caffe2 layout: stride on the first 1x1 of a bottleneck, conv
    without bias + BatchNormalization, residuals joined by ``Sum``, AveragePool 7 ->
    Reshape(Constant [1, 2048]) -> Gemm -> Softmax."""
    g = LegacyGraph("resnet50", opset=opset, weights=weights, seed=seed)
    x = g.conv("data", 3, 64, 7, name="conv1", stride=2, pads=[3, 3, 3, 3], bias=False)
    x = g.node("Relu", [g.bn(x, 64, name="conv1_bn")], name="conv1_relu")
    x = g.maxpool(x, 3, 2, [1, 1, 1, 1], name="pool1")
    cin = 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=2):
        for b in range(blocks):
            p = f"res{stage}_{b}"
            stride = 2 if (b == 0 and stage > 2) else 1
            cout = width * 4
            y = g.conv(x, cin, width, 1, name=p + "_branch2a", stride=stride, bias=False)
            y = g.node("Relu", [g.bn(y, width, name=p + "_branch2a_bn")], name=p + "_branch2a_relu")
            y = g.conv(y, width, width, 3, name=p + "_branch2b", bias=False)
            y = g.node("Relu", [g.bn(y, width, name=p + "_branch2b_bn")], name=p + "_branch2b_relu")
            y = g.conv(y, width, cout, 1, name=p + "_branch2c", bias=False)
            # small last gamma keeps the random residual stream from growing 2x per block
            y = g.bn(y, cout, name=p + "_branch2c_bn", gamma=0.2)
            if b == 0:
                short = g.conv(x, cin, cout, 1, name=p + "_branch1", stride=stride, bias=False)
                short = g.bn(short, cout, name=p + "_branch1_bn")
            else:
                short = x
            x = g.node("Relu", [g.node("Sum", [y, short], name=p + "_sum")], name=p + "_relu")
            cin = cout
    x = g.avgpool(x, 7, 1, name="pool5")
    x = g.reshape(x, [1, 2048], name="pool5_flat")
    x = g.gemm(x, 2048, 1000, name="pred")
    g.node("Softmax", [x], name="softmax", axis=1)
    return _classifier_model(
        g,
        "data",
        "softmax",
        "ResNet-50 v1, emulates the model zoo "
        f"(Caffe2 layout), opset {opset}, IR 3, weights {weights}",
    )


# --------------------------------------------------------------------------- GoogLeNet

_INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def inception_v1(
    *, opset: int = 7, weights: WeightMode = "constant", seed: int = 1
) -> onnx.ModelProto:
    """GoogLeNet (BVLC layout): LRN after the stem, nine inception modules joined by
    ``Concat``, Caffe's ceil-mode pooling written as asymmetric pads, AveragePool 7,
    Dropout 0.4, Reshape -> Gemm -> Softmax."""
    g = LegacyGraph("inception_v1", opset=opset, weights=weights, seed=seed)

    def conv_relu(x: str, cin: int, cout: int, k: int, name: str, **kw: object) -> str:
        return g.node("Relu", [g.conv(x, cin, cout, k, name=name, **kw)], name=name + "_relu")

    def lrn(x: str, name: str) -> str:
        return g.node("LRN", [x], name=name, size=5, alpha=1e-4, beta=0.75, bias=1.0)

    x = conv_relu("data_0", 3, 64, 7, "conv1_7x7_s2", stride=2, pads=[3, 3, 3, 3])
    x = g.maxpool(x, 3, 2, [0, 0, 1, 1], name="pool1_3x3_s2")  # 112 -> 56 (ceil mode)
    x = lrn(x, "pool1_norm1")
    x = conv_relu(x, 64, 64, 1, "conv2_3x3_reduce")
    x = conv_relu(x, 64, 192, 3, "conv2_3x3")
    x = lrn(x, "conv2_norm2")
    x = g.maxpool(x, 3, 2, [0, 0, 1, 1], name="pool2_3x3_s2")  # 56 -> 28
    cin = 192
    for key, (c1, c3r, c3, c5r, c5, cp) in _INCEPTION.items():
        p = f"inception_{key}"
        if key in ("4a", "5a"):
            x = g.maxpool(x, 3, 2, [0, 0, 1, 1], name=p + "_pool_in")  # 28 -> 14, 14 -> 7
        b1 = conv_relu(x, cin, c1, 1, p + "_1x1")
        b2 = conv_relu(conv_relu(x, cin, c3r, 1, p + "_3x3_reduce"), c3r, c3, 3, p + "_3x3")
        b3 = conv_relu(conv_relu(x, cin, c5r, 1, p + "_5x5_reduce"), c5r, c5, 5, p + "_5x5")
        b4 = g.maxpool(x, 3, 1, [1, 1, 1, 1], name=p + "_pool")
        b4 = conv_relu(b4, cin, cp, 1, p + "_pool_proj")
        x = g.node("Concat", [b1, b2, b3, b4], name=p + "_output", axis=1)
        cin = c1 + c3 + c5 + cp
    x = g.avgpool(x, 7, 1, name="pool5_7x7_s1")
    x = g.dropout(x, 0.4, name="pool5_drop_7x7_s1")
    x = g.reshape(x, [1, 1024], name="pool5_flat")
    x = g.gemm(x, 1024, 1000, name="loss3_classifier")
    g.node("Softmax", [x], name="prob", axis=1)
    return _classifier_model(
        g,
        "data_0",
        "prob",
        "GoogLeNet / Inception v1, emulates the model "
        f"zoo (BVLC Caffe layout), opset {opset}, IR 3, weights {weights}",
    )


# --------------------------------------------------------------------------- DenseNet-121


def densenet121(
    *, opset: int = 9, weights: WeightMode = "init-hidden", seed: int = 2
) -> onnx.ModelProto:
    """DenseNet-121 (growth 32, blocks 6-12-24-16, bottleneck 4x, compression 0.5); each dense
    layer concatenates its 32 new channels onto the running feature map."""
    g = LegacyGraph("densenet121", opset=opset, weights=weights, seed=seed)

    def bn_relu(x: str, c: int, name: str) -> str:
        return g.node("Relu", [g.bn(x, c, name=name + "_bn")], name=name + "_relu")

    x = g.conv("data_0", 3, 64, 7, name="conv1", stride=2, pads=[3, 3, 3, 3], bias=False)
    x = bn_relu(x, 64, "conv1")
    x = g.maxpool(x, 3, 2, [1, 1, 1, 1], name="pool1")
    c = 64
    for block, layers in enumerate([6, 12, 24, 16], start=2):
        for i in range(1, layers + 1):
            p = f"conv{block}_{i}"
            y = g.conv(bn_relu(x, c, p + "_x1"), c, 128, 1, name=p + "_x1", bias=False)
            y = g.conv(bn_relu(y, 128, p + "_x2"), 128, 32, 3, name=p + "_x2", bias=False)
            x = g.node("Concat", [x, y], name=f"concat_{block}_{i}", axis=1)
            c += 32
        if block < 5:
            p = f"conv{block}_blk"
            x = g.conv(bn_relu(x, c, p), c, c // 2, 1, name=p, bias=False)
            c //= 2
            x = g.avgpool(x, 2, 2, name=f"pool{block}")
    x = bn_relu(x, c, "conv5_blk")
    x = g.node("GlobalAveragePool", [x], name="pool5")
    x = g.node("Flatten", [x], name="pool5_flat", axis=1)
    x = g.gemm(x, c, 1000, name="fc6")
    g.node("Softmax", [x], name="fc6_softmax", axis=1)
    return _classifier_model(
        g,
        "data_0",
        "fc6_softmax",
        "DenseNet-121, emulates the model zoo "
        f"(Caffe2 layout), opset {opset}, IR 3, weights {weights}",
    )


# --------------------------------------------------------------------------- SqueezeNet 1.1


def squeezenet1_1(
    *, opset: int = 7, weights: WeightMode = "init-inputs", seed: int = 3
) -> onnx.ModelProto:
    """SqueezeNet 1.1: fire modules (squeeze 1x1, expand 1x1 + 3x3, Concat), Dropout, conv10
    1x1 -> GlobalAveragePool -> Reshape(Constant [1, 1000]) -> Softmax."""
    g = LegacyGraph("squeezenet1_1", opset=opset, weights=weights, seed=seed)

    def conv_relu(x: str, cin: int, cout: int, k: int, name: str, **kw: object) -> str:
        return g.node("Relu", [g.conv(x, cin, cout, k, name=name, **kw)], name=name + "_relu")

    def fire(x: str, cin: int, s: int, e: int, name: str) -> str:
        sq = conv_relu(x, cin, s, 1, name + "_squeeze1x1")
        e1 = conv_relu(sq, s, e, 1, name + "_expand1x1")
        e3 = conv_relu(sq, s, e, 3, name + "_expand3x3")
        return g.node("Concat", [e1, e3], name=name + "_concat", axis=1)

    x = conv_relu("data", 3, 64, 3, "conv1", stride=2, pads=[0, 0, 0, 0])  # 224 -> 111
    x = g.maxpool(x, 3, 2, name="pool1")  # 55
    x = fire(x, 64, 16, 64, "fire2")
    x = fire(x, 128, 16, 64, "fire3")
    x = g.maxpool(x, 3, 2, name="pool3")  # 27
    x = fire(x, 128, 32, 128, "fire4")
    x = fire(x, 256, 32, 128, "fire5")
    x = g.maxpool(x, 3, 2, name="pool5")  # 13
    x = fire(x, 256, 48, 192, "fire6")
    x = fire(x, 384, 48, 192, "fire7")
    x = fire(x, 384, 64, 256, "fire8")
    x = fire(x, 512, 64, 256, "fire9")
    x = g.dropout(x, 0.5, name="drop9")
    x = conv_relu(x, 512, 1000, 1, "conv10")
    x = g.node("GlobalAveragePool", [x], name="pool10")
    x = g.reshape(x, [1, 1000], name="pool10_flat")
    g.node("Softmax", [x], name="softmaxout", axis=1)
    return _classifier_model(
        g,
        "data",
        "softmaxout",
        "SqueezeNet 1.1, emulates the model zoo "
        f"(PyTorch 0.4 export), opset {opset}, IR 3, weights {weights}",
    )


# --------------------------------------------------------------------------- VGG-16


def vgg16(*, opset: int = 9, weights: WeightMode = "cos", seed: int = 4) -> onnx.ModelProto:
    """VGG-16 (configuration D). Its 138 M weights are made by ``ConstantOfShape`` by default
    (the file stays a few kB, like the ONNX "light" zoo models), 553 MB once materialized."""
    g = LegacyGraph("vgg16", opset=opset, weights=weights, seed=seed)
    x, cin = "data", 3
    for stage, (convs, cout) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], 1):
        for i in range(1, convs + 1):
            name = f"conv{stage}_{i}"
            x = g.node("Relu", [g.conv(x, cin, cout, 3, name=name)], name=name + "_relu")
            cin = cout
        x = g.maxpool(x, 2, 2, name=f"pool{stage}")
    x = g.reshape(x, [1, 25088], name="pool5_flat")
    for i, (a, b) in enumerate([(25088, 4096), (4096, 4096)], start=6):
        x = g.node("Relu", [g.gemm(x, a, b, name=f"fc{i}")], name=f"fc{i}_relu")
        x = g.dropout(x, 0.5, name=f"drop{i}")
    x = g.gemm(x, 4096, 1000, name="fc8")
    g.node("Softmax", [x], name="prob", axis=1)
    return _classifier_model(
        g,
        "data",
        "prob",
        f"VGG-16, emulates the model zoo (Caffe layout), opset {opset}, IR 3, weights {weights}",
    )


# --------------------------------------------------------------------------- tiny-YOLOv3


def tiny_yolov3(
    *, opset: int = 9, weights: WeightMode = "init-hidden", seed: int = 5
) -> onnx.ModelProto:
    """tiny-YOLOv3 (Darknet topology, 80 classes): conv + BN + LeakyRelu(0.1), a stride-1
    MaxPool with asymmetric pad, two detection heads, the second fed by ``Upsample`` (scales
    from a ``Constant``) and ``Concat`` with a route from the backbone. Batch, height and width
    are symbolic: the input needs a shape (multiples of 32) before planning."""
    g = LegacyGraph("tiny_yolov3", opset=opset, weights=weights, seed=seed)

    def cbl(x: str, cin: int, cout: int, k: int, name: str) -> str:
        y = g.bn(g.conv(x, cin, cout, k, name=name, bias=False), cout, name=name + "_bn")
        return g.node("LeakyRelu", [y], name=name + "_leaky", alpha=0.1)

    x, cin = "input_1", 3
    for i, cout in enumerate([16, 32, 64, 128, 256], start=1):
        x = cbl(x, cin, cout, 3, f"conv2d_{i}")
        cin = cout
        if cout == 256:
            route = x
        x = g.maxpool(x, 2, 2, name=f"max_pooling2d_{i}")
    x = cbl(x, 256, 512, 3, "conv2d_6")
    x = g.maxpool(x, 2, 1, [0, 0, 1, 1], name="max_pooling2d_6")  # keeps the 1/32 grid
    x = cbl(x, 512, 1024, 3, "conv2d_7")
    neck = cbl(x, 1024, 256, 1, "conv2d_8")
    y1 = cbl(neck, 256, 512, 3, "conv2d_9")
    y1 = g.conv(y1, 512, 255, 1, name="conv2d_10")
    up = cbl(neck, 256, 128, 1, "conv2d_11")
    if opset >= 9:
        scales = g.const(np.array([1, 1, 2, 2], dtype=np.float32), name="up_sampling2d_1_scales")
        up = g.node("Upsample", [up, scales], name="up_sampling2d_1", mode="nearest")
    else:  # Upsample-7 takes its scales as an attribute
        scale_attr = [1.0, 1.0, 2.0, 2.0]
        up = g.node("Upsample", [up], name="up_sampling2d_1", mode="nearest", scales=scale_attr)
    y2 = g.node("Concat", [up, route], name="concatenate_1", axis=1)
    y2 = cbl(y2, 384, 256, 3, "conv2d_12")
    y2 = g.conv(y2, 256, 255, 1, name="conv2d_13")
    return g.model(
        [float_input("input_1", ["N", 3, None, None])],
        [
            (y1, TensorProto.FLOAT, ["N", 255, None, None]),
            (y2, TensorProto.FLOAT, ["N", 255, None, None]),
        ],
        doc=f"tiny-YOLOv3 backbone and heads (no NMS), emulates the model zoo (keras2onnx "
        f"layout), opset {opset}, IR 3, weights {weights}, dynamic N/H/W",
    )


# --------------------------------------------------------------------------- MobileNet v1


def mobilenet_v1(
    *, opset: int = 8, weights: WeightMode = "constant", seed: int = 6
) -> onnx.ModelProto:
    """MobileNet v1 (1.0, 224): depthwise (group = channels) + pointwise convs, BN with the
    legacy ``spatial`` attribute, ReLU6 as ``Clip`` with min/max *attributes* (before opset
    11), AveragePool 7 -> Reshape(Constant [0, -1]) -> Gemm -> Softmax."""
    g = LegacyGraph("mobilenet_v1", opset=opset, weights=weights, seed=seed)

    def cbr(x: str, cin: int, cout: int, k: int, name: str, stride: int = 1, group: int = 1) -> str:
        y = g.conv(x, cin, cout, k, name=name, stride=stride, group=group, bias=False)
        y = g.bn(y, cout, name=name + "_bn")
        return g.node("Clip", [y], name=name + "_relu6", min=0.0, max=6.0)

    x = cbr("input", 3, 32, 3, "conv0", stride=2)
    cin = 32
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    plan += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for i, (cout, stride) in enumerate(plan, start=1):
        x = cbr(x, cin, cin, 3, f"conv{i}_dw", stride=stride, group=cin)
        x = cbr(x, cin, cout, 1, f"conv{i}_pw")
        cin = cout
    x = g.avgpool(x, 7, 1, name="pool")
    x = g.reshape(x, [0, -1], name="flatten")
    x = g.gemm(x, 1024, 1000, name="fc")
    g.node("Softmax", [x], name="prob", axis=1)
    return _classifier_model(
        g,
        "input",
        "prob",
        "MobileNet v1, emulates a 2018 converter "
        f"(Clip-6 attributes), opset {opset}, IR 3, weights {weights}",
    )

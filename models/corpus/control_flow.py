"""Small recurrent models whose work happens inside ``Scan`` / ``Loop`` / ``If`` subgraphs.

Written with ``onnx.helper`` in the style of the converters that produced such graphs
(onnxmltools/CNTK ``Scan`` RNNs, TorchScript-exported greedy decoders): weights are outer-scope
initializers that the subgraph bodies reference by name, the recurrent state is a graph input,
and the sequence length or the trip count is only known at run time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._builder import PRODUCER


def _init(rng: np.random.Generator, name: str, shape: list[int], scale: float) -> onnx.TensorProto:
    array = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    return numpy_helper.from_array(array, name)


def scan_rnn(*, seed: int = 7) -> onnx.ModelProto:
    """An Elman RNN over ``x[seq, batch, 16]`` as a ``Scan``-9 whose body computes
    ``h = tanh(x_t Wx + h Wh + b)``, followed by a projection of every step's state.

    Inputs: ``x`` [seq, batch, 16], ``h0`` [batch, 32] (the recurrent state).
    Outputs: ``y`` [seq, batch, 4], ``h_n`` [batch, 32]. Opset 9, IR 4.
    """
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "Wx", [16, 32], 0.25),
        _init(rng, "Wh", [32, 32], 0.15),
        _init(rng, "b", [32], 0.1),
        _init(rng, "Wo", [32, 4], 0.2),
    ]
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "Wx"], ["xw"], name="body_xw"),
            helper.make_node("MatMul", ["h_prev", "Wh"], ["hw"], name="body_hw"),
            helper.make_node("Add", ["xw", "hw"], ["pre0"], name="body_add0"),
            helper.make_node("Add", ["pre0", "b"], ["pre"], name="body_add1"),
            helper.make_node("Tanh", ["pre"], ["h_next"], name="body_tanh"),
            helper.make_node("Identity", ["h_next"], ["h_out"], name="body_scan_out"),
        ],
        "rnn_step",
        [
            helper.make_tensor_value_info("h_prev", TensorProto.FLOAT, ["batch", 32]),
            helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["batch", 16]),
        ],
        [
            helper.make_tensor_value_info("h_next", TensorProto.FLOAT, ["batch", 32]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 32]),
        ],
    )
    nodes = [
        helper.make_node(
            "Scan", ["h0", "x"], ["h_n", "hs"], name="rnn", body=body, num_scan_inputs=1
        ),
        helper.make_node("MatMul", ["hs", "Wo"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "scan_rnn",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", 16]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["batch", 32]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", "batch", 4]),
            helper.make_tensor_value_info("h_n", TensorProto.FLOAT, ["batch", 32]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 9)],
        producer_name=PRODUCER,
        producer_version="1",
        doc_string="Elman RNN as a Scan-9 (onnxmltools/CNTK-era converters); state input h0",
    )
    model.ir_version = 4
    return model


def loop_decoder(*, seed: int = 8) -> onnx.ModelProto:
    """A greedy decoder: a ``Loop`` (opset 11) that carries a hidden state, attends over an
    encoder memory of run-time length, emits one token per step and stops early on token 0;
    inside the body an ``If`` damps the state on odd steps.

    Inputs: ``memory`` [1, src_len, 32], ``h0`` [1, 32] (state), ``max_steps`` int64 scalar.
    Outputs: ``tokens`` [steps, 1] int64 (steps <= max_steps), ``h_final`` [1, 32].
    """
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "W_h", [32, 32], 0.2),
        _init(rng, "W_c", [32, 32], 0.2),
        _init(rng, "W_out", [32, 10], 0.5),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "eos"),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "two"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"),
        numpy_helper.from_array(np.array(True), "cond_init"),
    ]

    def branch(name: str, op_nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
        return helper.make_graph(
            op_nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 32])]
        )

    then_g = branch(
        "even_step", [helper.make_node("Identity", ["h_new"], ["h_even"], name="keep")], "h_even"
    )
    else_g = branch(
        "odd_step", [helper.make_node("Mul", ["h_new", "half"], ["h_odd"], name="damp")], "h_odd"
    )
    body_nodes = [
        # attention over the memory: scores [1, src_len, 1] -> softmax -> context [1, 32]
        helper.make_node("Unsqueeze", ["h_prev"], ["h_col"], name="h_col", axes=[2]),
        helper.make_node("MatMul", ["memory", "h_col"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["attn"], name="attn", axis=1),
        helper.make_node("Mul", ["memory", "attn"], ["weighted"], name="weighted"),
        helper.make_node("ReduceSum", ["weighted"], ["ctx"], name="ctx", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["h_prev", "W_h"], ["hh"], name="hh"),
        helper.make_node("MatMul", ["ctx", "W_c"], ["hc"], name="hc"),
        helper.make_node("Add", ["hh", "hc"], ["pre"], name="pre"),
        helper.make_node("Tanh", ["pre"], ["h_new"], name="h_new"),
        helper.make_node("Mod", ["iter", "two"], ["parity"], name="parity"),
        helper.make_node("Equal", ["parity", "eos"], ["is_even"], name="is_even"),
        helper.make_node(
            "If", ["is_even"], ["h_next"], name="damp_odd", then_branch=then_g, else_branch=else_g
        ),
        helper.make_node("MatMul", ["h_next", "W_out"], ["logits"], name="logits"),
        helper.make_node("ArgMax", ["logits"], ["token"], name="token", axis=1, keepdims=0),
        helper.make_node("Equal", ["token", "eos"], ["is_eos"], name="is_eos_vec"),
        helper.make_node("Squeeze", ["is_eos"], ["is_eos_s"], name="is_eos", axes=[0]),
        helper.make_node("Not", ["is_eos_s"], ["cond_out"], name="cond_out"),
    ]
    body = helper.make_graph(
        body_nodes,
        "decode_step",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_prev", TensorProto.FLOAT, [1, 32]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_next", TensorProto.FLOAT, [1, 32]),
            helper.make_tensor_value_info("token", TensorProto.INT64, [1]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node(
                "Loop",
                ["max_steps", "cond_init", "h0"],
                ["h_final", "tokens"],
                name="decode",
                body=body,
            )
        ],
        "loop_decoder",
        [
            helper.make_tensor_value_info("memory", TensorProto.FLOAT, [1, "src_len", 32]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 32]),
            helper.make_tensor_value_info("max_steps", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("h_final", TensorProto.FLOAT, [1, 32]),
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["steps", 1]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 11)],
        producer_name=PRODUCER,
        producer_version="1",
        doc_string="Greedy decoder: Loop with state, early exit and an If in the body",
    )
    model.ir_version = 6
    return model

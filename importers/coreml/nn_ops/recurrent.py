"""Recurrent layers: simpleRecurrent, gru, uniDirectionalLSTM, biDirectionalLSTM.

NeuralNetwork.proto semantics: the input is rank 5 ``[Seq, Batch, inputVectorSize, 1, 1]``;
optional further inputs are initial states ``[1, Batch, H, 1, 1]`` (LSTM: h then c; bidirectional:
forward h, c, then backward h, c), the outputs are ``y`` then the final states in the same order.
``y`` is ``[Seq, Batch, H, 1, 1]`` with ``sequenceOutput``, else ``[1, Batch, H, 1, 1]`` (the
final state); a bidirectional ``y`` stacks forward and backward on the channel axis (2H).
Every gate pre-activation is clipped to [-50, 50].

* simpleRecurrent -> ONNX RNN, gru -> ONNX GRU (gate order z, r, o; the reset gate multiplies
  ``y_{t-1}`` before ``R_o``: ``linear_before_reset=0``; ``clip=50``).
* uniDirectionalLSTM / biDirectionalLSTM -> ``CoreMLNNLSTM`` (kernels/cpu/coreml_nn2.py): ONNX
  LSTM has no cell-state clip (``cellClipThreshold``).
* ``reverseInput`` (uni-directional layers): the sequence is reversed before a forward pass, so
  ``y[k]`` is the output after reading ``x[Seq-1] .. x[Seq-1-k]`` (processing order), as
  coremltools' own tests of the ``direction="reverse"`` ops expect.

Activations: linear, sigmoid, tanh, ReLU, scaledTanh, sigmoidHard (the proto's list). Their
alpha/beta are read as stored, a zero meaning the default (linear 1/0, scaledTanh 1/1,
sigmoidHard 0.2/0.5): coremltools writes zeros for all of them, and its tests of these layers
on device expect ``scaled_tanh`` to act as ``tanh`` and ``linear`` as the identity.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.common import ML
from modelloader.importers.coreml.neuralnetwork import NNContext, nn_layer, weights

_I64_MIN = np.iinfo(np.int64).min
#: activation kind -> (kernel name, default alpha, default beta)
_ACTS = {
    "sigmoid": ("sigmoid", 0.0, 0.0),
    "tanh": ("tanh", 0.0, 0.0),
    "ReLU": ("relu", 0.0, 0.0),
    "linear": ("linear", 1.0, 0.0),
    "scaledTanh": ("scaled_tanh", 1.0, 1.0),
    "sigmoidHard": ("hard_sigmoid", 0.2, 0.5),
}
#: kernel names -> ONNX RNN/GRU activation names
_ONNX_ACT = {
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "relu": "Relu",
    "linear": "Affine",
    "scaled_tanh": "ScaledTanh",
    "hard_sigmoid": "HardSigmoid",
}


def activation(params: Any, where: str) -> tuple[str, float, float]:
    """(name, alpha, beta) of a recurrent layer's ``ActivationParams``."""
    kind = params.WhichOneof("NonlinearityType")
    if kind not in _ACTS:
        raise ModelFormatError(
            f"{where}: activation {kind!r} is not allowed in recurrent layers "
            f"(NeuralNetwork.proto allows {', '.join(_ACTS)})"
        )
    name, da, db = _ACTS[kind]
    p = getattr(params, kind)
    alpha = float(getattr(p, "alpha", 0.0)) or da
    beta = float(getattr(p, "beta", 0.0)) or db
    return name, alpha, beta


def _onnx_acts(acts: list[tuple[str, float, float]]) -> dict[str, Any]:
    """ONNX RNN/GRU activation attributes (alphas/betas only for functions that take them)."""
    attrs: dict[str, Any] = {"activations": [_ONNX_ACT[a[0]] for a in acts]}
    alphas = [a[1] for a in acts if a[0] in ("linear", "scaled_tanh", "hard_sigmoid")]
    betas = [a[2] for a in acts if a[0] in ("linear", "scaled_tanh", "hard_sigmoid")]
    if alphas:
        attrs["activation_alpha"] = alphas
        attrs["activation_beta"] = betas
    return attrs


def _sequence(ctx: NNContext, layer: Any, reverse: bool) -> str:
    """The rank-5 input as (Seq, Batch, C), time-reversed when ``reverse``."""
    x = ctx.rank5_input(layer, "[Seq, Batch, C, 1, 1]")
    x = ctx.tmp("Reshape", [x, ctx.int64([0, 0, -1])])
    if reverse:
        x = ctx.tmp(
            "Slice",
            [x, ctx.int64([-1]), ctx.int64([_I64_MIN]), ctx.int64([0]), ctx.int64([-1])],
        )
    return x


def _state(ctx: NNContext, layer: Any, index: int) -> str:
    """Initial state input ``index`` [1, B, H, 1, 1] as (1, B, H); "" when absent."""
    if len(layer.input) <= index or not layer.input[index]:
        return ""
    return ctx.tmp("Reshape", [ctx.name(layer.input[index]), ctx.int64([1, 0, -1])])


def _states(ctx: NNContext, layer: Any, indices: list[int]) -> str:
    """Several (1, B, H) initial states stacked as (D, B, H); "" when all are absent."""
    parts = [_state(ctx, layer, i) for i in indices]
    if not any(parts):
        return ""
    if not all(parts):
        raise ModelFormatError(
            f"{layer.WhichOneof('layer')} '{layer.name}': give every initial state or none"
        )
    return parts[0] if len(parts) == 1 else ctx.tmp("Concat", parts, axis=0)


def _to_rank5(ctx: NNContext, x: str, out: str) -> None:
    """(S, B, H) -> [S, B, H, 1, 1] named ``out``."""
    ctx.node("Unsqueeze", [x, ctx.int64([3, 4])], [out])
    ctx.rank[out] = 5


def _outputs(ctx: NNContext, layer: Any, y: str, finals: list[str], sequence_output: bool) -> None:
    """Uni-directional outputs from Y (T, 1, B, H) and final states (1, B, H)."""
    outs = list(layer.output)
    seq = ctx.tmp("Squeeze", [y, ctx.int64([1])]) if sequence_output else finals[0]
    _to_rank5(ctx, seq, outs[0])
    for name, state in zip(outs[1:], finals):
        if name:
            _to_rank5(ctx, state, name)


def _matrix(wp: Any, rows: int, cols: int) -> np.ndarray:
    return weights(wp, (rows, cols))


def _vector(wp: Any, n: int, present: bool) -> np.ndarray:
    return weights(wp, (n,)) if present else np.zeros(n, np.float32)


@nn_layer("simpleRecurrent")
def simple_recurrent(layer: Any, ctx: NNContext) -> None:
    """y_t = f(clip(W x_t + R y_{t-1} + b)) -> ONNX RNN."""
    p = layer.simpleRecurrent
    i, h = int(p.inputVectorSize), int(p.outputVectorSize)
    w = _matrix(p.weightMatrix, h, i)[None]
    r = _matrix(p.recursionMatrix, h, h)[None]
    b = np.concatenate([_vector(p.biasVector, h, p.hasBiasVector), np.zeros(h, np.float32)])
    x = _sequence(ctx, layer, bool(p.reverseInput))
    ys = [ctx.fresh("rnn_y"), ctx.fresh("rnn_h")]
    ctx.node(
        "RNN",
        [x, ctx.constant(w), ctx.constant(r), ctx.constant(b[None]), "", _state(ctx, layer, 1)],
        ys,
        hidden_size=h,
        clip=50.0,
        **_onnx_acts([activation(p.activation, f"simpleRecurrent '{layer.name}'")]),
    )
    _outputs(ctx, layer, ys[0], [ys[1]], bool(p.sequenceOutput))


@nn_layer("gru")
def gru(layer: Any, ctx: NNContext) -> None:
    """z, r = f(clip(W x + R y + b)); o = g(clip(W_o x + R_o (r * y) + b_o));
    y = (1 - z) * o + z * y -> ONNX GRU (z, r, h gate order, linear_before_reset=0)."""
    p = layer.gru
    i, h = int(p.inputVectorSize), int(p.outputVectorSize)
    if len(p.activations) != 2:
        raise ModelFormatError(f"gru '{layer.name}': needs 2 activations, has {len(p.activations)}")
    acts = [activation(a, f"gru '{layer.name}'") for a in p.activations]
    w = np.concatenate(
        [
            _matrix(m, h, i)
            for m in (p.updateGateWeightMatrix, p.resetGateWeightMatrix, p.outputGateWeightMatrix)
        ]
    )
    r = np.concatenate(
        [
            _matrix(m, h, h)
            for m in (
                p.updateGateRecursionMatrix,
                p.resetGateRecursionMatrix,
                p.outputGateRecursionMatrix,
            )
        ]
    )
    b = np.concatenate(
        [
            _vector(v, h, p.hasBiasVectors)
            for v in (p.updateGateBiasVector, p.resetGateBiasVector, p.outputGateBiasVector)
        ]
        + [np.zeros(3 * h, np.float32)]
    )
    x = _sequence(ctx, layer, bool(p.reverseInput))
    ys = [ctx.fresh("gru_y"), ctx.fresh("gru_h")]
    ctx.node(
        "GRU",
        [
            x,
            ctx.constant(w[None]),
            ctx.constant(r[None]),
            ctx.constant(b[None]),
            "",
            _state(ctx, layer, 1),
        ],
        ys,
        hidden_size=h,
        clip=50.0,
        linear_before_reset=0,
        **_onnx_acts(acts),
    )
    _outputs(ctx, layer, ys[0], [ys[1]], bool(p.sequenceOutput))


def _lstm_weights(
    wp: Any, params: Any, i: int, h: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(W (4H, I), R (4H, H), b (4H), p (3H)) in gate order i, f, z, o."""
    w = np.concatenate(
        [
            _matrix(m, h, i)
            for m in (
                wp.inputGateWeightMatrix,
                wp.forgetGateWeightMatrix,
                wp.blockInputWeightMatrix,
                wp.outputGateWeightMatrix,
            )
        ]
    )
    r = np.concatenate(
        [
            _matrix(m, h, h)
            for m in (
                wp.inputGateRecursionMatrix,
                wp.forgetGateRecursionMatrix,
                wp.blockInputRecursionMatrix,
                wp.outputGateRecursionMatrix,
            )
        ]
    )
    has_b = bool(params.hasBiasVectors)
    b = [
        _vector(v, h, has_b)
        for v in (
            wp.inputGateBiasVector,
            wp.forgetGateBiasVector,
            wp.blockInputBiasVector,
            wp.outputGateBiasVector,
        )
    ]
    if params.forgetBias:
        b[1] = b[1] + 1
    has_p = bool(params.hasPeepholeVectors)
    peep = np.concatenate(
        [
            _vector(v, h, has_p)
            for v in (
                wp.inputGatePeepholeVector,
                wp.forgetGatePeepholeVector,
                wp.outputGatePeepholeVector,
            )
        ]
    )
    return w, r, np.concatenate(b), peep


def _lstm_node(
    ctx: NNContext,
    x: str,
    packs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    h0: str,
    c0: str,
    acts: list[tuple[str, float, float]],
    params: Any,
) -> list[str]:
    ys = [ctx.fresh("lstm_y"), ctx.fresh("lstm_h"), ctx.fresh("lstm_c")]
    ctx.node(
        "CoreMLNNLSTM",
        [
            x,
            ctx.constant(np.stack([pk[0] for pk in packs])),
            ctx.constant(np.stack([pk[1] for pk in packs])),
            ctx.constant(np.stack([pk[2] for pk in packs])),
            h0,
            c0,
            ctx.constant(np.stack([pk[3] for pk in packs])),
        ],
        ys,
        domain=ML,
        activations=[_ONNX_ACT[a[0]] for a in acts],
        activation_alpha=[a[1] for a in acts],
        activation_beta=[a[2] for a in acts],
        direction="bidirectional" if len(packs) == 2 else "forward",
        cell_clip=float(params.cellClipThreshold) or 50.0,
        coupled_input_forget=int(params.coupledInputAndForgetGate),
    )
    return ys


def _lstm_acts(acts: Any, where: str) -> list[tuple[str, float, float]]:
    if len(acts) != 3:
        raise ModelFormatError(f"{where}: needs 3 activations [f, g, h], has {len(acts)}")
    return [activation(a, where) for a in acts]


@nn_layer("uniDirectionalLSTM")
def uni_lstm(layer: Any, ctx: NNContext) -> None:
    """LSTM (LSTMParams) -> CoreMLNNLSTM; inputs [x, h0, c0], outputs [y, h, c]."""
    p = layer.uniDirectionalLSTM
    where = f"uniDirectionalLSTM '{layer.name}'"
    acts = _lstm_acts(p.activations, where)
    pack = _lstm_weights(p.weightParams, p.params, int(p.inputVectorSize), int(p.outputVectorSize))
    x = _sequence(ctx, layer, bool(p.reverseInput))
    h0, c0 = _states(ctx, layer, [1]), _states(ctx, layer, [2])
    if bool(h0) != bool(c0):
        raise ModelFormatError(f"{where}: give both initial states (h, c) or neither")
    y, h, c = _lstm_node(ctx, x, [pack], h0, c0, acts, p.params)
    _outputs(ctx, layer, y, [h, c], bool(p.params.sequenceOutput))


@nn_layer("biDirectionalLSTM")
def bi_lstm(layer: Any, ctx: NNContext) -> None:
    """Forward and backward LSTMs -> one CoreMLNNLSTM (direction bidirectional).

    Inputs [x, h0_f, c0_f, h0_b, c0_b], outputs [y, h_f, c_f, h_b, c_b]; ``y`` holds
    [forward, backward] on the channel axis, the backward half aligned with the input steps;
    without ``sequenceOutput`` it is [final forward, final backward]."""
    p = layer.biDirectionalLSTM
    where = f"biDirectionalLSTM '{layer.name}'"
    if len(p.weightParams) != 2:
        raise ModelFormatError(f"{where}: needs 2 weightParams, has {len(p.weightParams)}")
    fwd = _lstm_acts(p.activationsForwardLSTM, where)
    bwd = _lstm_acts(p.activationsBackwardLSTM, where) if len(p.activationsBackwardLSTM) else fwd
    i, hsz = int(p.inputVectorSize), int(p.outputVectorSize)
    packs = [_lstm_weights(wp, p.params, i, hsz) for wp in p.weightParams]
    x = _sequence(ctx, layer, False)
    h0, c0 = _states(ctx, layer, [1, 3]), _states(ctx, layer, [2, 4])
    if bool(h0) != bool(c0):
        raise ModelFormatError(f"{where}: give every initial state (h, c per direction) or none")
    y, h, c = _lstm_node(ctx, x, packs, h0, c0, fwd + bwd, p.params)
    outs = list(layer.output)
    if p.params.sequenceOutput:
        seq = ctx.tmp("Transpose", [y], perm=[0, 2, 1, 3])  # (T, B, 2, H)
    else:
        seq = ctx.tmp("Unsqueeze", [ctx.tmp("Transpose", [h], perm=[1, 0, 2]), ctx.int64([0])])
    ctx.node("Reshape", [seq, ctx.int64([0, 0, -1, 1, 1])], [outs[0]])
    ctx.rank[outs[0]] = 5
    hf, hb = ctx.fresh("h_fwd"), ctx.fresh("h_bwd")
    cf, cb = ctx.fresh("c_fwd"), ctx.fresh("c_bwd")
    ctx.node("Split", [h], [hf, hb], axis=0, num_outputs=2)
    ctx.node("Split", [c], [cf, cb], axis=0, num_outputs=2)
    for name, state in zip(outs[1:], [hf, cf, hb, cb]):
        if name:
            _to_rank5(ctx, state, name)

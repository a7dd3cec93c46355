"""Control flow (WHILE, IF, CALL_ONCE) and resource variables.

Subgraphs become IR ``Graph`` attributes, called with explicit arguments (TFLite
passes operands, not scope). These nodes and the variable ops carry an ordering
token (``TFLContext.stateful``) so they run in file order relative to each other.
"""

from __future__ import annotations

import numpy as np

from modelloader.importers.tflite.reader import TFLOperator
from modelloader.importers.tflite.table import TFLContext, tfl_op


@tfl_op("WHILE", quantized=True)
def while_(op: TFLOperator, ctx: TFLContext) -> None:
    cond = ctx.graph_of(int(op.options["CondSubgraphIndex"]))
    body = ctx.graph_of(int(op.options["BodySubgraphIndex"]))
    ctx.stateful(
        "TFLWhile",
        [ctx.name(i) for i in op.inputs],
        [ctx.name(o) for o in op.outputs],
        cond=cond,
        body=body,
    )


@tfl_op("IF", quantized=True)
def if_(op: TFLOperator, ctx: TFLContext) -> None:
    then = ctx.graph_of(int(op.options["ThenSubgraphIndex"]))
    else_ = ctx.graph_of(int(op.options["ElseSubgraphIndex"]))
    ctx.stateful(
        "TFLIf",
        [ctx.name(i) for i in op.inputs],
        [ctx.name(o) for o in op.outputs],
        then_branch=then,
        else_branch=else_,
    )


@tfl_op("CALL", quantized=True)
def call(op: TFLOperator, ctx: TFLContext) -> None:
    g = ctx.graph_of(int(op.options["Subgraph"]))
    ctx.stateful(
        "TFLCall", [ctx.name(i) for i in op.inputs], [ctx.name(o) for o in op.outputs], body=g
    )


@tfl_op("CALL_ONCE", quantized=True)
def call_once(op: TFLOperator, ctx: TFLContext) -> None:
    idx = int(op.options["InitSubgraphIndex"])
    ctx.stateful("TFLCallOnce", [], [], init=ctx.graph_of(idx), key=f"init{idx}")


@tfl_op("VAR_HANDLE", quantized=True)
def var_handle(op: TFLOperator, ctx: TFLContext) -> None:
    """A handle is the variable's key; TFLite shares variables by (container, shared_name)."""
    container = str(op.options.get("Container") or "")
    shared = str(op.options.get("SharedName") or "")
    key = f"{container}/{shared}" if shared else f"__anon_{ctx.sg.index}_{op.index}"
    ctx.constants[ctx.name(op.outputs[0])] = np.array(key, dtype=object)


@tfl_op("READ_VARIABLE", quantized=True)
def read_variable(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.stateful("ReadVariable", [ctx.name(op.inputs[0])], [ctx.name(op.outputs[0])])


@tfl_op("ASSIGN_VARIABLE", quantized=True)
def assign_variable(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.stateful("AssignVariable", [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])], [])

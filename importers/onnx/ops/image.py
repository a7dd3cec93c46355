"""Rows for image ops: Resize (all opsets), Upsample (as Resize) and friends."""

from __future__ import annotations

import numpy as np

from modelloader.importers.onnx.table import ImportContext, onnx_op, passthrough
from modelloader.ir import Node

passthrough("GridSample", "AffineGrid", "NonMaxSuppression", "CenterCropPad")


@onnx_op("Resize")
def resize(node: Node, ctx: ImportContext) -> list[Node]:
    """Resize-10 had inputs (X, scales) with Upsample's semantics (asymmetric coordinates, floor
    for nearest); Resize-11/13 take (X, roi, scales, sizes) like Resize-19."""
    if ctx.opset() < 11:
        node.inputs = [node.inputs[0], "", node.inputs[1]]
        node.attrs.setdefault("coordinate_transformation_mode", "asymmetric")
        node.attrs.setdefault("nearest_mode", "floor")
    return [node]


@onnx_op("Upsample")
def upsample(node: Node, ctx: ImportContext) -> list[Node]:
    """Upsample-7/9/10 becomes Resize with asymmetric coordinates; opset 7 ``scales`` attribute
    becomes the scales input, and ``bilinear`` means linear."""
    mode = node.attrs.get("mode", "nearest")
    mode = "linear" if mode in ("linear", "bilinear") else "nearest"
    if "scales" in node.attrs:
        scales = ctx.constant(np.asarray(node.attrs["scales"], dtype=np.float32), "Upsample_scales")
    else:
        scales = node.inputs[1]
    attrs = {"mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    return [Node("Resize", [node.inputs[0], "", scales], list(node.outputs), attrs, "", node.name)]


@onnx_op("RoiAlign")
def roi_align(node: Node, ctx: ImportContext) -> list[Node]:
    """RoiAlign-10 behaved as ``coordinate_transformation_mode="output_half_pixel"``."""
    if ctx.opset() < 16:
        node.attrs.setdefault("coordinate_transformation_mode", "output_half_pixel")
    return [node]

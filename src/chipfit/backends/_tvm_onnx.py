"""ONNX graph fixes applied before TVM's Relax ONNX importer, for exporter patterns it mis-converts.

``fold_constant_of_shape``: ``ConstantOfShape`` with a constant shape becomes a ``Constant``. TVM 0.27's
converter broadcasts the one-element ``value`` to the requested shape, which fails when that shape is empty
(a scalar output, as the TorchScript exporter writes for BERT's attention mask: "broadcast_to expects the input
shape to have the number of ndim at least as the input tensor's"). Imports no TVM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = ["fold_constant_of_shape"]

_MAX_FOLDED = 1 << 20  # elements: a larger constant is left to the converter (it only fails on scalars)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == 7}  # INT64
    for n in model.graph.node:
        if n.op_type == "Constant":
            value = next((a for a in n.attribute if a.name == "value"), None)
            if value is not None and value.t.data_type == 7:
                out[n.output[0]] = numpy_helper.to_array(value.t)
    return out


def fold_constant_of_shape(model: onnx.ModelProto) -> int:
    """Replace each ``ConstantOfShape`` whose shape input is a constant by a ``Constant``; returns how many."""
    from onnx import helper, numpy_helper

    shapes = _constants(model)
    folded = 0
    for n in model.graph.node:
        if n.op_type != "ConstantOfShape" or n.input[0] not in shapes:
            continue
        dims = tuple(int(d) for d in np.asarray(shapes[n.input[0]]).reshape(-1))
        if int(np.prod(dims, dtype=np.int64)) > _MAX_FOLDED:
            continue
        attr = next((a for a in n.attribute if a.name == "value"), None)
        value = numpy_helper.to_array(attr.t) if attr is not None else np.zeros(1, np.float32)  # spec default
        tensor = numpy_helper.from_array(np.full(dims, value.reshape(-1)[0], dtype=value.dtype), n.output[0])
        n.op_type = "Constant"
        del n.input[:]
        del n.attribute[:]
        n.attribute.append(helper.make_attribute("value", tensor))
        folded += 1
    return folded

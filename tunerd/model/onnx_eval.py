"""Single ONNX nodes evaluated and typed by onnx's own tools (the ``onnx`` extra).

- ``evaluate``: a node whose inputs are all constants, run once by the ``onnx.reference`` evaluator,
  which implements every standard op; this is the constant folder (shape arithmetic that exporters
  write, weights built from ConstantOfShape, anything else constant).
- ``infer``: output shapes and element types of a node tunerd has no shape rule for, from
  ``onnx.shape_inference`` (with the values of its constant inputs, so Reshape-like ops resolve).
- ``to_proto``: an IR node back as a NodeProto (export and both of the above share it).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError

FLOAT = 1      # onnx.TensorProto.FLOAT
# IR attributes that tunerd's passes add; they are not ONNX's and never leave the IR
INTERNAL_ATTRS = frozenset({"activation", "coerce_2d", "times_input"})


def _onnx():
    import onnx
    return onnx


def to_proto(node, *, name=None, inputs=None, outputs=None, attrs=None):
    """The NodeProto of an IR node (its ONNX attributes; tensor values back as TensorProto)."""
    onnx = _onnx()
    from onnx import helper, numpy_helper
    attrs = {k: v for k, v in (node.attrs if attrs is None else attrs).items() if k not in INTERNAL_ATTRS}
    for key, value in list(attrs.items()):
        if isinstance(value, np.ndarray):
            attrs[key] = numpy_helper.from_array(value)
        elif isinstance(value, (list, tuple)) and not value:
            del attrs[key]          # NOTE: an empty list has no ONNX type; it means the default anyway
    try:
        return helper.make_node(node.op, list(node.inputs if inputs is None else inputs),
                                list(node.outputs if outputs is None else outputs),
                                name=node.name if name is None else name, **attrs)
    except (TypeError, ValueError, onnx.checker.ValidationError) as err:
        raise ModelError(f"node {node.name!r} ({node.op}): attributes {sorted(attrs)} are not ONNX's: {err}") from err


def evaluate(proto, values: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """Run one NodeProto on constant inputs (``values`` by input name) with the reference evaluator."""
    from onnx.reference import ReferenceEvaluator
    try:
        evaluator = ReferenceEvaluator(proto, opsets={"": opset})
        outs = evaluator.run(None, {k: values[k] for k in proto.input if k})
    except Exception as err:  # noqa: BLE001 - the evaluator raises whatever its op implementations do
        raise ModelError(f"node {proto.name!r} ({proto.op_type}): cannot evaluate its constant inputs: "
                         f"{type(err).__name__}: {err}") from err
    return [np.asarray(o) for o in outs]


def infer(proto, types: dict[str, tuple[int, tuple[int, ...]]], constants: dict[str, np.ndarray],
          opset: int) -> list[tuple[int, tuple[int, ...]]]:
    """(element type, shape) of each output of ``proto`` from onnx.shape_inference.

    ``types`` holds (element type, shape) of every input, ``constants`` the values of the constant
    ones. A shape onnx cannot make static (data-dependent, unknown rank) is a ModelError."""
    onnx = _onnx()
    from onnx import defs, helper, numpy_helper, shape_inference
    try:
        schema = defs.get_schema(proto.op_type, opset, proto.domain)
    except defs.SchemaError as err:
        raise ModelError(f"node {proto.name!r}: {proto.op_type} is not an op of opset {opset}") from err
    in_types = {k: helper.make_tensor_type_proto(types[k][0], list(types[k][1])) for k in proto.input if k}
    data = {k: numpy_helper.from_array(np.asarray(constants[k]), k) for k in proto.input if k in constants}
    try:
        outs = shape_inference.infer_node_outputs(schema, proto, in_types, data,
                                                  opset_imports=[helper.make_opsetid("", opset)])
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as err:
        raise ModelError(f"node {proto.name!r} ({proto.op_type}): onnx shape inference fails on inputs "
                         f"{[types[k][1] for k in proto.input if k]}: {err}") from err
    result = []
    for name in proto.output:
        t = outs.get(name)
        if t is None or not t.tensor_type.HasField("shape") or any(
                not d.HasField("dim_value") for d in t.tensor_type.shape.dim):
            raise ModelError(f"node {proto.name!r} ({proto.op_type}): the shape of output {name!r} is not static "
                             f"(it depends on the data, which tunerd's fixed-shape pipeline cannot carry)")
        result.append((t.tensor_type.elem_type, tuple(int(d.dim_value) for d in t.tensor_type.shape.dim)))
    return result


def elem_type(dtype) -> int:
    """The ONNX element type of a numpy dtype."""
    from onnx import helper
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

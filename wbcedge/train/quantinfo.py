"""What quantization a model file really holds, read back from the file itself.

An export that "asked" for int8 but kept float kernels is the classic silent
failure; these readers count what is in the file rather than trusting the request.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np


def tflite_quantization(path: Path) -> dict:
    from wbcedge.device.runtime import _tflite_interpreter_class

    Interpreter, _ = _tflite_interpreter_class()
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    dtypes = Counter()
    per_channel = 0
    weights_int8 = 0
    for t in interp.get_tensor_details():
        dtype = np.dtype(t["dtype"]).name
        dtypes[dtype] += 1
        scales = t.get("quantization_parameters", {}).get("scales", np.zeros(0))
        if dtype == "int8" and len(scales) > 1:
            per_channel += 1
        if dtype == "int8" and len(t["shape"]) == 4:
            weights_int8 += 1
    ops = Counter(op["op_name"] for op in interp._get_ops_details()) if hasattr(interp, "_get_ops_details") else Counter()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    float_ops = sum(n for name, n in ops.items() if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")) \
        if dtypes.get("float32", 0) else 0
    return {
        "input_dtype": np.dtype(inp["dtype"]).name,
        "input_scale_zero_point": [float(inp["quantization"][0]), int(inp["quantization"][1])],
        "output_dtype": np.dtype(out["dtype"]).name,
        "tensor_dtypes": dict(dtypes),
        "per_channel_tensors": per_channel,
        "int8_conv_kernels": weights_int8,
        "fully_integer": dtypes.get("float32", 0) == 0,
        "ops": dict(ops),
        "float_compute_ops": float_ops,
    }


def onnx_quantization(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    ops = Counter(n.op_type for n in graph.node)
    init_types = Counter(onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name for i in graph.initializer)
    inits = {i.name: i for i in graph.initializer}
    per_channel = 0
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.input[1] in inits:
            if int(np.prod(inits[node.input[1]].dims or [1])) > 1:
                per_channel += 1
    act_types = Counter()
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            act_types[onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[2]].data_type).name] += 1
    float_convs = 0
    for node in graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm") and node.input[1] in inits:
            if inits[node.input[1]].data_type == onnx.TensorProto.FLOAT:
                float_convs += 1
    return {
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "ops": dict(ops),
        "initializer_dtypes": dict(init_types),
        "quantize_nodes": ops.get("QuantizeLinear", 0),
        "dequantize_nodes": ops.get("DequantizeLinear", 0),
        "per_channel_weights": per_channel,
        "activation_dtypes": dict(act_types),
        "float_weight_convs": float_convs,
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def quantization_of(path: Path) -> dict:
    return tflite_quantization(path) if Path(path).suffix == ".tflite" else onnx_quantization(path)

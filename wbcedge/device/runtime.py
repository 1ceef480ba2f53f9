"""Run a bundle's model file on the device: TFLite through ai-edge-litert, or ONNX Runtime.

No TensorFlow here. The classifier takes a batch of uint8 model inputs (made by
wbcedge.preprocess from the bundle's spec) and returns class probabilities as
float32, dequantising int8/uint8 outputs with the scales stored in the file.
Files exported with a second output (the penultimate features, for the domain-shift
check) give them too through `predict_with_features`; of two outputs, the narrower one
is the probabilities (export keeps the feature width above the number of classes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wbcedge.bundle import BundleError, model_format_problem
from wbcedge.errors import BundleFormatError, MissingDependencyError, ModelLoadError
from wbcedge.quiet import XNNPACK_NOTICE, quiet_fds

BACKENDS = ("tflite", "onnx")


class RuntimeMissingError(MissingDependencyError):
    pass


def backend_of(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".tflite":
        return "tflite"
    if suffix == ".onnx":
        return "onnx"
    raise BundleFormatError(f"{path}: unknown model format '{suffix}'; expected .tflite or .onnx")


def _tflite_interpreter_class():
    """ai-edge-litert's Interpreter; tflite-runtime only where that is all a device has."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # retired at 2.14; old models only
        return Interpreter, "tflite-runtime"
    except ImportError as exc:
        raise RuntimeMissingError(
            "no TFLite runtime installed: `pip install ai-edge-litert` (or `pip install 'wbcedge[device]'`), "
            "or choose the ONNX file with --backend onnx") from exc


class Classifier:
    """One model file, ready to classify batches of preprocessed crops."""

    def __init__(self, model_path: Path, threads: int | None = None):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise BundleFormatError(f"{self.path}: model file not found; copy the bundle again from its source")
        self.backend = backend_of(self.path)
        problem = model_format_problem(self.path, self.backend)
        if problem:
            raise ModelLoadError(problem)
        self.threads = threads or min(4, os.cpu_count() or 1)
        init = self._init_tflite if self.backend == "tflite" else self._init_onnx
        try:
            init()
        except MissingDependencyError:
            raise
        except Exception as exc:  # runtimes raise anything on a bad file: ValueError, RuntimeError, their own types
            raise ModelLoadError(
                f"{self.path}: the {self.backend} runtime cannot load this model file ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}). Re-export the bundle, or "
                "install the runtime versions it was made with (see its manifest.json 'versions')") from exc

    @property
    def output_size(self) -> int | None:
        """Number of classes the model outputs (None if the file leaves it open)."""
        return self._output_size

    def check_classes(self, classes: list[str]) -> None:
        """Refuse a class list whose length differs from the model's output size."""
        if self._output_size is not None and self._output_size != len(classes):
            raise BundleError(f"{self.path} outputs {self._output_size} class scores but the bundle names "
                              f"{len(classes)} classes ({', '.join(classes)}): the class list and the model "
                              "disagree; re-export the bundle")

    # ---- TFLite
    def _init_tflite(self) -> None:
        Interpreter, self.runtime = _tflite_interpreter_class()
        # XNNPACK is on by default in ai-edge-litert's CPU path; without it int8 is 10-70x slower.
        self._interpreter_class = Interpreter
        self._interps = {}  # batch size -> interpreter: resizing one costs ~13% of a call
        interp = self._interpreter(1)
        inp = interp.get_input_details()[0]
        outs = _probs_first(interp.get_output_details(), lambda o: int(o["shape"][-1]))
        self._in_index = inp["index"]
        self._outputs = [(o["index"], o["quantization"]) for o in outs]
        self.input_dtype = np.dtype(inp["dtype"])
        self._in_quant = inp["quantization"]
        self.input_size = int(inp["shape"][1])
        self.has_features = len(outs) > 1
        self._output_size = int(outs[0]["shape"][-1]) if len(outs[0]["shape"]) else None  # the probabilities

    def _interpreter(self, batch: int):
        if batch not in self._interps:
            if len(self._interps) >= 8:  # a frame with an unusual number of cells: don't keep it
                self._interps.pop(max(self._interps))
            with quiet_fds(drop=XNNPACK_NOTICE):  # LiteRT announces XNNPACK on every interpreter
                interp = self._interpreter_class(model_path=str(self.path), num_threads=self.threads)
                index = interp.get_input_details()[0]["index"]
                if interp.get_input_details()[0]["shape"][0] != batch:
                    interp.resize_tensor_input(index, [batch, *interp.get_input_details()[0]["shape"][1:]])
                interp.allocate_tensors()
            self._interps[batch] = interp
        return self._interps[batch]

    def tflite_op_names(self) -> list[str]:
        """The ops of the batch-1 interpreter ('DELEGATE' where XNNPACK took over); a private LiteRT API."""
        return [op["op_name"] for op in self._interpreter(1)._get_ops_details()]

    def _run_tflite(self, batch: np.ndarray) -> list[np.ndarray]:
        interp = self._interpreter(batch.shape[0])
        interp.set_tensor(self._in_index, self._quantize_input(batch))
        interp.invoke()
        results = []
        for index, (scale, zero) in self._outputs:
            out = interp.get_tensor(index)
            if out.dtype != np.float32:
                out = (out.astype(np.float32) - zero) * scale
            results.append(out)
        return results

    def _quantize_input(self, batch: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.uint8:
            scale, zero = self._in_quant
            if scale in (0.0, 1.0) and zero == 0:
                return batch  # camera pixels as they are (scaling lives inside the model)
            return np.clip(np.round(batch / scale + zero), 0, 255).astype(np.uint8)
        if self.input_dtype == np.int8:
            scale, zero = self._in_quant
            return np.clip(np.round(batch.astype(np.float32) / scale + zero), -128, 127).astype(np.int8)
        return batch.astype(np.float32)

    # ---- ONNX
    def _init_onnx(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeMissingError("onnxruntime is not installed: `pip install onnxruntime` "
                                      "(or `pip install 'wbcedge[device]'`), or use the .tflite file") from exc
        self.runtime = f"onnxruntime {ort.__version__}"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0]
        self._in_name = inp.name
        self.input_dtype = np.dtype(np.uint8 if inp.type == "tensor(uint8)" else np.float32)
        self.input_size = int(inp.shape[1])
        outs = _probs_first(self._session.get_outputs(), lambda o: o.shape[-1])
        self._out_names = [o.name for o in outs]
        self.has_features = len(self._out_names) > 1
        last = outs[0].shape[-1] if outs[0].shape else None  # the probabilities
        self._output_size = last if isinstance(last, int) else None

    def _run_onnx(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(self._out_names, {self._in_name: batch.astype(self.input_dtype, copy=False)})

    # ---- both
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) model inputs -> float32 (N, classes) probabilities."""
        return self.predict_with_features(batch)[0]

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, for a file with the feature output, the (N, D) penultimate features (else None)."""
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[0] == 0:
            return np.zeros((0, 0), np.float32), (np.zeros((0, 0), np.float32) if self.has_features else None)
        if batch.shape[1] != self.input_size:
            raise ValueError(f"{self.path.name} takes {self.input_size}px inputs, got {batch.shape[1]}px: "
                             "preprocess with the bundle's own spec")
        outs = self._run_tflite(batch) if self.backend == "tflite" else self._run_onnx(batch)
        probs = np.asarray(outs[0], dtype=np.float32)
        features = np.asarray(outs[1], dtype=np.float32).reshape(len(probs), -1) if self.has_features else None
        return probs, features

    def predict_many(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        parts = [self.predict(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def predict_many_with_features(self, inputs: np.ndarray, batch_size: int = 64):
        """(probs, features or None) over many inputs, in batches."""
        parts = [self.predict_with_features(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
        if not parts:
            return np.zeros((0, 0), np.float32), None
        probs = np.concatenate([p for p, _ in parts])
        return probs, (np.concatenate([f for _, f in parts]) if self.has_features else None)


def _probs_first(outputs: list, width) -> list:
    """A file's outputs with the probabilities first: of two, the narrower is the probabilities."""
    if len(outputs) > 2:
        raise ValueError(f"a model file with {len(outputs)} outputs: wbcedge files have probabilities "
                         "and at most one feature output; re-export the bundle")
    return sorted(outputs, key=lambda o: int(width(o) or 0)) if len(outputs) == 2 else list(outputs)

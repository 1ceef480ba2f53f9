"""What runs beside the microscope: the model runtimes (LiteRT, onnxruntime), capture
sources and camera profiles, the cell locator, the tracker, the counting session and its
records, the differential, the session reports and the live display. Never imports
TensorFlow, Keras or tf2onnx (an import-linter contract checks it): this package must run on
a Raspberry Pi or a Jetson with only the `device` extra.
"""

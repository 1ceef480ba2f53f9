"""The training box: the model zoo, training, the training-run folder, converters, the
accuracy-gated int8 export and quantization inspection. The only package that may import
TensorFlow, Keras or tf2onnx (an import-linter contract checks it); imports of them stay
inside functions so that `import wbcedge.train.run_folder` still works on a device that only
opens bundles.
"""

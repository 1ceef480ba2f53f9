"""Evaluation: the metrics maths (exact intervals, McNemar, Table VI), report files
(Markdown, JSON, PNG figures), evaluating a predictor on labelled crops or another
microscope's annotated frames, and the locator's own evaluation. The maths never imports
TensorFlow; a Keras training run is opened by `wbcedge.train.run_folder`, not here.
"""

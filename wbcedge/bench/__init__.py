"""`wbcedge bench`: the runner that starts one fresh worker process per configuration, the
worker, machine information, floors and the tables. Device side: only the worker's Keras
baseline (run when a training run is found) imports TensorFlow.
"""

"""wbcedge: white blood cell classifiers from the GPU box to the microscope.

Importing this package never imports TensorFlow: the device side (run, bench,
bundle) must work on a Raspberry Pi or Jetson that only has the runtimes.
"""

__version__ = "0.1.0"

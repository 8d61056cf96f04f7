"""Spark's Python daemon, with TensorFlow imported once before it forks the workers.

Spark starts one daemon per executor and forks a Python worker from it for each task slot;
a worker forked from this daemon finds TensorFlow and Keras already imported instead of
spending seconds importing them. Only imports happen here: no TensorFlow thread pool or
model exists before the fork. Enabled by ``spark.python.daemon.module=helpers.daemon``
(local sessions from :func:`helpers.spark.get_spark` set it).
"""

import gc

import keras  # noqa: F401
import tensorflow  # noqa: F401
from pyspark import daemon

if __name__ == "__main__":
    gc.freeze()  # TensorFlow's many objects: out of every worker's garbage collections
    daemon.manager()

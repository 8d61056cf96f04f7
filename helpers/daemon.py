"""Spark's Python daemon, with TensorFlow imported once before it forks the workers.

Spark starts one daemon per executor and forks a Python worker from it for each task slot;
a worker forked from this daemon finds TensorFlow and Keras already imported instead of
spending seconds importing them. Only imports happen here: no TensorFlow thread pool or
model exists before the fork. Enabled by ``spark.python.daemon.module=helpers.daemon``
(local sessions from :func:`helpers.spark.get_spark` set it).

A UDF created with ``$FRUITS_RUNTIME`` set to another runtime in the SparkContext's
environment (:func:`helpers.features.featurize` with ``runtime='onnxruntime'``, ``'openvino'``
or ``'openvino-bf16'``) gets its own daemon (Spark keys daemons by their environment): that
one imports ONNX Runtime or OpenVINO instead, and its workers never load TensorFlow.
"""

import gc

from pyspark import daemon

from helpers.config import OPENVINO_PRECISION, daemon_runtime

if daemon_runtime() == "keras":
    import keras  # noqa: F401
    import tensorflow  # noqa: F401
elif daemon_runtime() in OPENVINO_PRECISION:
    from helpers.inference import import_openvino

    import_openvino()
else:
    import onnxruntime  # noqa: F401

if __name__ == "__main__":
    gc.freeze()  # the imported modules' many objects: out of every worker's garbage collections
    daemon.manager()

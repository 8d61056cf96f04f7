"""Spark's Python daemon, with the features runtime imported once before it forks the workers.

Spark starts one daemon per executor and Python environment, and forks a Python worker from
it for each task slot. The features UDFs are created with ``$FRUITS_RUNTIME`` in the
SparkContext's environment (:func:`helpers.features.runtime_environment`), so they get a
daemon of their own (Spark keys daemons by their environment) that imports their runtime
before the fork: TensorFlow and Keras for ``keras``, LiteRT, ONNX Runtime or OpenVINO for
the converted runtimes. Their workers find it imported instead of spending seconds on it. Only
imports happen here: no thread pool or model exists before the fork.

Every other Python UDF (the EDA's, PCA's ``mapInArrow``) runs in workers of the daemon
without ``$FRUITS_RUNTIME``, which imports nothing more: importing TensorFlow there made the
first UDF job of notebook 01 take 6.2 s instead of 2.9 s on 2,575 images. Enabled by
``spark.python.daemon.module=helpers.daemon`` (local sessions from
:func:`helpers.spark.get_spark` set it).
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
elif daemon_runtime() == "onnxruntime":
    import onnxruntime  # noqa: F401
elif daemon_runtime() == "litert":
    import ai_edge_litert.interpreter  # noqa: F401

if __name__ == "__main__":
    gc.freeze()  # the imported modules' many objects: out of every worker's garbage collections
    daemon.manager()

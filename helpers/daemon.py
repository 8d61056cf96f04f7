"""Spark's Python daemon, with the features runtime imported once before it forks the workers.

Spark starts one daemon per executor and Python environment and forks a worker from it per
task slot. The features UDFs carry ``$FRUITS_RUNTIME`` in their environment
(:func:`helpers.features.udf.runtime_environment`), so they get a daemon of their own that
imports their runtime (:meth:`helpers.features.runtimes.Runtime.preload`) and the features
function's modules: their workers find them imported. Every other UDF's daemon imports
nothing more (TensorFlow there doubled notebook 01's first UDF job). Enabled by
``spark.python.daemon.module=helpers.daemon``.
"""

import gc

from pyspark import daemon

from helpers import env

if env.get(env.RUNTIME_ENV):
    import helpers.features.udf  # noqa: F401  the features function's own modules (0.6 s)
    from helpers.features.runtimes import RUNTIMES

    RUNTIMES[env.get(env.RUNTIME_ENV)].preload()  # only imports: no thread or model yet

if __name__ == "__main__":
    gc.freeze()  # the imported modules' many objects: out of every worker's garbage collections
    daemon.manager()

# Fruits! — two commands: `make run` (set-up + pipeline on data_sample) and `make test`.
# The other tested sets: `make test-spark4` (Spark 4, constraints-spark4.txt, in .venv-spark4)
# and `make test-py39` (EMR's Python 3.9 set, installed by bootstrap-emr.sh, in .venv-py39).
PYTHON      ?= python3.11
VENV        ?= .venv
CONSTRAINTS ?= constraints.txt
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | cksum | cut -d' ' -f1)
OUTPUT ?= outputs

# Offline machines (this project's CI) use the local copy of the ImageNet weights when present;
# elsewhere the notebooks' default, Keras' own weights="imagenet" download, applies.
OFFLINE_WEIGHTS := $(abspath ../shared/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5)
ifneq ($(wildcard $(OFFLINE_WEIGHTS)),)
export FRUITS_WEIGHTS ?= $(OFFLINE_WEIGHTS)
endif

.PHONY: setup jars livy run check test test-spark4 test-py39 lint clean

# The S3A jars (hadoop-aws, AWS SDK bundle, spark-hadoop-cloud) for local Spark on s3://, and on
# pyspark 3.5 the Spark Connect server jar (spark-connect_2.12-3.5.7; pyspark 4 ships its own),
# from Maven Central into ~/.cache/fruits/jars; offline, set-up goes on without them. Then the
# Spark driver's class archive (helpers.spark.cds, ~/.cache/fruits/cds; about a minute, once).
setup: $(STAMP)
	@$(BIN)/python -m helpers.spark.jars fetch >/dev/null || echo "warning: jars not fetched (no Maven Central?): local Spark on s3:// needs the S3A jars (make jars, or hadoop_aws_jars), a Spark 3.5 Connect server its jar" >&2
	@$(BIN)/python -m helpers.spark.cds >/dev/null || echo "warning: no class archive for the Spark driver (python -m helpers.spark.cds says why): sessions start slower" >&2

jars: $(STAMP)
	$(BIN)/python -m helpers.spark.jars fetch

# sparkmagic (the extra 'livy'; needs libkrb5-dev) and Apache Livy for tests/test_dev_livy.py, cached
# in ~/.cache/fruits/livy from a binary zip ($$FRUITS_LIVY_DIST, ../shared/livy/): Maven Central
# has no Livy repl jar. Without them the Livy tests skip, saying why.
livy: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[spark,dev,connect,livy]"
	$(BIN)/python -m helpers.livy install

$(STAMP):
	@command -v java >/dev/null || { echo "Java 17 is required (Spark): apt-get install openjdk-17-jre-headless" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[spark,dev,connect]"
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/python -m helpers.run --data-root data_sample --output-root $(OUTPUT)

# While editing: ruff, then every test that starts no notebook, cluster or server (marked
# `slow` otherwise): a few minutes.
check: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_ARGS)

# The whole suite on this set; pytest's header names the Spark, Hadoop and Python it runs.
# PYTEST_ARGS narrows it (make test PYTEST_ARGS=tests/test_s3.py).
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite on the Spark 4 set (pyspark 4.0, numpy 2; its own venv and S3A jars). Tests marked
# `spark_neutral` (no Spark in them, or a Spark path another test covers; `make test` runs them)
# are left out unless FULL=1; the Livy tests skip (Livy 0.9 is built for Spark 3).
test-spark4:
	$(MAKE) setup test VENV=.venv-spark4 CONSTRAINTS=constraints-spark4.txt \
		PYTEST_ARGS="$(if $(FULL),,-m 'not spark_neutral') $(PYTEST_ARGS)"

# EMR's Python 3.9 set (emr/requirements-py39.txt) installed by bootstrap-emr.sh itself into
# .venv-py39, then the end-to-end notebook test on it; skips, saying so, without a python3.9.
test-py39: setup
	.ci/test-py39

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	$(BIN)/python -m helpers.outputs clean $(OUTPUT)
	rm -rf spark-warehouse metastore_db derby.log .pytest_cache

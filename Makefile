# Fruits! — two commands: `make run` (set-up + pipeline on data_sample) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
OUTPUT ?= outputs

# Offline machines (this project's CI) use the local copy of the ImageNet weights when present;
# elsewhere the notebooks' default, Keras' own weights="imagenet" download, applies.
OFFLINE_WEIGHTS := $(abspath ../shared/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5)
ifneq ($(wildcard $(OFFLINE_WEIGHTS)),)
export FRUITS_WEIGHTS ?= $(OFFLINE_WEIGHTS)
endif

.PHONY: setup jars livy run test lint clean

# The S3A jars (hadoop-aws, AWS SDK bundle, spark-hadoop-cloud) for local Spark on s3://,
# from Maven Central into ~/.cache/fruits/jars; offline, set-up goes on without them. Then the
# Spark driver's class archive (helpers.cds, ~/.cache/fruits/cds; about a minute, once).
setup: $(STAMP)
	@$(BIN)/python -m helpers.jars fetch >/dev/null || echo "warning: S3A jars not fetched (no Maven Central?): local Spark on s3:// needs them (make jars, or hadoop_aws_jars)" >&2
	@$(BIN)/python -m helpers.cds >/dev/null || echo "warning: no class archive for the Spark driver (python -m helpers.cds says why): sessions start slower" >&2

jars: $(STAMP)
	$(BIN)/python -m helpers.jars fetch

# sparkmagic (the extra 'livy'; needs libkrb5-dev) and Apache Livy for tests/test_livy.py, cached
# in ~/.cache/fruits/livy from a binary zip ($$FRUITS_LIVY_DIST, ../shared/livy/): Maven Central
# has no Livy repl jar. Without them the Livy tests skip, saying why.
livy: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[spark,dev,livy]"
	$(BIN)/python -m helpers.livy install

$(STAMP):
	@command -v java >/dev/null || { echo "Java 17 is required (Spark): apt-get install openjdk-17-jre-headless" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[spark,dev]"
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/python -m helpers.run --data-root data_sample --output-root $(OUTPUT)

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(OUTPUT) spark-warehouse metastore_db derby.log .pytest_cache

#!/usr/bin/env bash
# EMR bootstrap action (first version): runs on every node before applications start and
# installs the Python packages the notebooks' pandas UDFs need, then the project's wheel.
#
#   bootstrap-emr.sh [s3://bucket/prefix/fruits_pipeline-X-py3-none-any.whl]
#
# pyspark itself is EMR's. The pins mirror pyproject.toml (tests/test_bootstrap.py checks
# it); they need Python >= 3.11 on the nodes (EMR 7: python3.11 package).
set -euo pipefail

PYTHON="${FRUITS_PYTHON:-python3.11}"
PINS=(
  "tensorflow-cpu==2.21.0"
  "keras==3.15.1"
  "numpy==1.26.4"
  "pandas==2.2.3"
  "pyarrow==21.0.0"
  "pillow==12.0.0"
  "fsspec==2026.9.0"
  "matplotlib==3.11.2"
  "seaborn==0.13.2"
  "scikit-learn==1.9.1"
  "papermill==2.7.0"
  "ipykernel==7.4.0"
)

fail() { echo "bootstrap-emr.sh: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || sudo dnf install -y -q python3.11 python3.11-pip \
  || fail "cannot install $PYTHON on this node"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' \
  || fail "$PYTHON is older than 3.11; the pinned set needs 3.11"

echo "bootstrap-emr.sh: installing ${PINS[*]}"
sudo "$PYTHON" -m pip install --quiet "${PINS[@]}" || fail "pip could not install the pinned set"

if [[ $# -ge 1 && -n "$1" ]]; then
  wheel_dir=$(mktemp -d)
  aws s3 cp "$1" "$wheel_dir/" || fail "cannot copy the project wheel from $1"
  sudo "$PYTHON" -m pip install --quiet --no-deps "$wheel_dir"/*.whl \
    || fail "cannot install the project wheel from $1"
fi
"$PYTHON" -c 'import numpy, pandas, pyarrow, PIL, tensorflow' \
  || fail "installed packages do not import"
echo "bootstrap-emr.sh: done"

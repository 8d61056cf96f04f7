#!/usr/bin/env bash
# EMR bootstrap action: runs on every node before the applications start (as the hadoop
# user, with passwordless sudo). Installs the pinned Python packages into a virtual
# environment, then the project's wheel and, optionally, the CNN weights, so that the driver
# (Livy, papermill) and every executor import the same code. Idempotent: running it again
# leaves the node as the first run did.
#
#   bootstrap-emr.sh --wheel s3://BUCKET/PREFIX/code/fruits_pipeline-VERSION-py3-none-any.whl \
#       --requirements s3://BUCKET/PREFIX/code/requirements-py39.txt \
#       [--python 3.9|3.11] [--weights s3://BUCKET/PREFIX/models/FILE.h5] \
#       [--venv /opt/fruits/venv] [--weights-dir /opt/fruits/weights]
#       [--profile /etc/profile.d/fruits.sh] [--index-url URL] [--dry-run]
#
# --python 3.9 (default): the node's python3.9 (Amazon Linux 2023's python3, EMR 7's own)
#   with emr/requirements-py39.txt. --python 3.11: the python3.11 package (installed with dnf
#   if missing) with emr/requirements-py311.txt, the project's tested set.
# --requirements: the complete pinned set for that Python (a file from emr/, s3:// or local);
#   installed with --no-deps --only-binary=:all:. The wheel is then installed as any package,
#   its dependencies (ranges) resolved against that set, and `pip check` checks the whole.
# --weights: copied to /opt/fruits/weights/FILE; FRUITS_WEIGHTS points there for login shells
#   (--profile, /etc/profile.d/fruits.sh, which the pipeline step sources too). Spark and Livy get it from
#   the cluster configurations that `python -m helpers.emr` writes.
# --index-url: a PyPI mirror for clusters without internet access.
# --venv: a folder this script created (it holds .fruits-bootstrap), an empty one or none;
#   any other is refused, never removed. --profile: a file this script wrote, or none.
# --dry-run: checks the arguments and prints every command instead of running it (no sudo,
#   no network, no change to the machine).
# Values are checked before use: no control characters, no credentials in a URI (they would
# show in EMR's console and logs), plain absolute paths; the profile gets them shell-quoted.
# pyspark is EMR's own and is never installed; the system Python and its pip are not touched.
# `python -m helpers.emr deploy` uploads these files and passes the arguments (docs/emr.md).
set -euo pipefail
set -o errtrace # the ERR trap below fires inside functions too

readonly PIP_VERSION="25.3"
VENV="/opt/fruits/venv"
WEIGHTS_DIR="/opt/fruits/weights"
PROFILE="/etc/profile.d/fruits.sh"
PYTHON_VERSION="3.9"
WHEEL=""
REQUIREMENTS=""
WEIGHTS=""
INDEX_URL=""
DRY_RUN=0

log() { echo "bootstrap-emr.sh: $*"; }
fail() {
  echo "bootstrap-emr.sh: ERROR: $*" >&2
  exit 1
}
usage_error() {
  echo "bootstrap-emr.sh: $* (see the usage at the top of bootstrap-emr.sh)" >&2
  exit 2
}
on_error() {
  echo "bootstrap-emr.sh: ERROR: '$2' failed with exit code $1; the lines above say why" >&2
}
trap 'on_error $? "$BASH_COMMAND"' ERR

# --- arguments -----------------------------------------------------------------------------
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheel | --requirements | --python | --weights | --venv | --weights-dir | --profile | --index-url)
      [[ $# -ge 2 && -n "$2" ]] || usage_error "$1 needs a value"
      case "$1" in
        --wheel) WHEEL="$2" ;;
        --requirements) REQUIREMENTS="$2" ;;
        --python) PYTHON_VERSION="$2" ;;
        --weights) WEIGHTS="$2" ;;
        --venv) VENV="$2" ;;
        --weights-dir) WEIGHTS_DIR="$2" ;;
        --profile) PROFILE="$2" ;;
        --index-url) INDEX_URL="$2" ;;
      esac
      shift 2
      ;;
    --dry-run)
      DRY_RUN=1
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d'
      exit 0
      ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done

# First, as the messages below show these values.
# redact URI: the URI with everything between :// and its last @ (or the end) as ***.
redact() {
  local scheme="${1%%://*}" rest="${1#*://}"
  if [[ "$rest" == *@* ]]; then echo "${scheme}://***@${rest##*@}"; else echo "${scheme}://***"; fi
}
# check_value OPTION VALUE: refuse control characters and credentials, without showing them.
check_value() {
  local option="$1" value="$2"
  [[ "$value" != *[[:cntrl:]]* ]] \
    || usage_error "$option holds a control character (a newline?): give one plain value"
  # userinfo (@ in the authority), or a : not followed by a port (an S3 bucket has none)
  local uri_re='^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)' s3_re='^[sS]3[aAnN]?://' host
  [[ "$value" =~ $uri_re ]] || return 0
  host="${BASH_REMATCH[1]##*]}" # an IPv6 literal [::1] holds colons of its own
  if [[ "${BASH_REMATCH[1]}" == *@* ]] \
    || [[ "$host" == *:* && (! "${host##*:}" =~ ^[0-9]+$ || "$value" =~ $s3_re) ]]; then
    usage_error "$option '$(redact "$value")' holds credentials (user:secret@), refused: bootstrap arguments show in EMR's console and logs; let the instance role grant access"
  fi
}
check_value --wheel "$WHEEL"
check_value --requirements "$REQUIREMENTS"
check_value --weights "$WEIGHTS"
check_value --index-url "$INDEX_URL"

case "$PYTHON_VERSION" in
  3.9) PYTHON="python3.9" PYTHON_PACKAGES=(python3 python3-pip) ;;
  3.11) PYTHON="python3.11" PYTHON_PACKAGES=(python3.11 python3.11-pip) ;;
  *) usage_error "--python '$PYTHON_VERSION' is not supported: use 3.9 (EMR 7's python3) or 3.11" ;;
esac
[[ -n "$WHEEL" ]] || usage_error "--wheel is required: the project's wheel, s3://.../fruits_pipeline-*.whl"
[[ "$WHEEL" == *.whl ]] || usage_error "--wheel '$WHEEL' is not a wheel (*.whl): build it with 'python -m helpers.emr deploy' or 'pip wheel --no-deps .'"
[[ -n "$REQUIREMENTS" ]] || usage_error "--requirements is required: emr/requirements-py${PYTHON_VERSION/./}.txt, uploaded to s3://"
[[ "${REQUIREMENTS##*/}" == *"py${PYTHON_VERSION/./}"* ]] \
  || usage_error "--requirements '$REQUIREMENTS' is not the set for Python $PYTHON_VERSION: pass requirements-py${PYTHON_VERSION/./}.txt (or --python to match the file)"
if [[ -n "$WEIGHTS" && "$WEIGHTS" != *.h5 && "$WEIGHTS" != *.keras ]]; then
  usage_error "--weights '$WEIGHTS' is not a Keras weights file (*.h5 or *.keras)"
fi
for option in --venv --weights-dir --profile; do
  case "$option" in
    --venv) path="$VENV" ;;
    --weights-dir) path="$WEIGHTS_DIR" ;;
    --profile) path="$PROFILE" ;;
  esac
  [[ "$path" == /* ]] || usage_error "$option '$path' must be an absolute path"
  [[ "$path" =~ ^(/[A-Za-z0-9_.+-]+)+$ && "/$path/" != *"/../"* && "/$path/" != *"/./"* ]] \
    || usage_error "$option '$path' must be a plain absolute path: letters, digits, . _ + - and /, no . or .. parts"
done

# --- helpers -------------------------------------------------------------------------------
# run CMD...: run it, or with --dry-run print it (quoted) and do nothing.
run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    local quoted
    printf -v quoted ' %q' "$@"
    echo "DRY-RUN:${quoted}"
  else
    "$@"
  fi
}
# as_root CMD...: run as root (EMR runs bootstrap actions as hadoop, with sudo).
as_root() {
  if [[ $EUID -eq 0 ]]; then run "$@"; else run sudo "$@"; fi
}
# quote VALUE: VALUE in single quotes, for a line of shell that sources it.
quote() {
  local q="'\\''"
  printf "'%s'" "${1//\'/$q}"
}
# is_empty_dir DIR: a folder (not a link) holding nothing, hidden names included.
is_empty_dir() {
  [[ -d "$1" && ! -L "$1" ]] || return 1
  local entry
  for entry in "$1"/* "$1"/.[!.]* "$1"/..?*; do # an unmatched pattern stays as written
    if [[ -e "$entry" || -L "$entry" ]]; then return 1; fi
  done
}
# fetch SOURCE DEST: copy an s3:// object (S3:// alike) or a local file to DEST.
fetch() {
  if [[ "${1,,}" == s3://* ]]; then
    set -- "s3://${1#*://}" "$2"
    [[ $DRY_RUN -eq 1 ]] || command -v aws >/dev/null 2>&1 \
      || fail "the aws CLI is missing: it copies $1 (EMR nodes have it)"
    run aws s3 cp --only-show-errors "$1" "$2" || fail "cannot copy $1: check the URI and that the cluster's instance role may read it"
  else
    [[ $DRY_RUN -eq 1 || -f "$1" ]] || fail "$1 does not exist"
    run cp "$1" "$2" || fail "cannot copy $1 to $2"
  fi
}

if [[ $DRY_RUN -eq 1 ]]; then
  work="/tmp/fruits-bootstrap.DRY-RUN"
  log "dry run: nothing is changed; the commands are printed instead"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
pip_index=()
[[ -z "$INDEX_URL" ]] || pip_index=(--index-url "$INDEX_URL")

# --- Python and the virtual environment ------------------------------------------------------
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  log "$PYTHON not found: installing ${PYTHON_PACKAGES[*]} with dnf"
  as_root dnf install -y -q "${PYTHON_PACKAGES[@]}" \
    || fail "cannot install ${PYTHON_PACKAGES[*]} with dnf: check the node's access to the Amazon Linux repositories"
fi
# Only an environment this script created is reused or removed: it holds the marker.
marker="$VENV/.fruits-bootstrap"
ours=0
if [[ -f "$marker" ]]; then
  ours=1
elif [[ -e "$VENV" || -L "$VENV" ]] && ! is_empty_dir "$VENV"; then
  fail "--venv $VENV exists and was not created by bootstrap-emr.sh (no $marker): it is neither removed nor installed into; remove it yourself or pass another --venv"
fi
wanted="import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$PYTHON_VERSION'.split('.'))))"
if [[ $DRY_RUN -eq 0 && $ours -eq 1 ]] && [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "$wanted"; then
  log "reusing the Python $PYTHON_VERSION environment $VENV"
else
  log "creating the Python $PYTHON_VERSION environment $VENV"
  if [[ $ours -eq 1 ]]; then
    as_root rm -rf "$VENV" || fail "cannot remove the outdated environment $VENV"
  fi
  # the marker first: an environment left half-made by a failure is still ours to replace
  as_root mkdir -p "$VENV" || fail "cannot create the folder $VENV"
  if [[ $DRY_RUN -eq 1 ]]; then
    as_root tee "$marker"
  else
    echo "# created by bootstrap-emr.sh, which may remove and re-create this environment" \
      | as_root tee "$marker" >/dev/null || fail "cannot write $marker"
  fi
  as_root "$PYTHON" -m venv "$VENV" || fail "$PYTHON cannot create the virtual environment $VENV"
fi
# the environment's own pip, pinned; the system pip is never upgraded
as_root "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_index[@]}" \
  "pip==$PIP_VERSION" || fail "cannot install pip==$PIP_VERSION into $VENV: check access to PyPI or pass --index-url"

# --- the pinned set --------------------------------------------------------------------------
requirements="$work/${REQUIREMENTS##*/}"
fetch "$REQUIREMENTS" "$requirements"
if [[ $DRY_RUN -eq 1 && -f "$REQUIREMENTS" ]]; then
  pins=0
  while IFS= read -r line; do [[ "$line" == *==* && "$line" != \#* ]] && pins=$((pins + 1)); done <"$REQUIREMENTS"
  log "would install $pins pinned packages from $REQUIREMENTS"
fi
log "installing the pinned set for Python $PYTHON_VERSION from $REQUIREMENTS"
as_root "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
  "${pip_index[@]}" --no-deps --only-binary=:all: -r "$requirements" \
  || fail "pip could not install the pinned set $REQUIREMENTS into $VENV (is it the set for Python $PYTHON_VERSION? does the node reach PyPI or --index-url?)"

# --- the project -----------------------------------------------------------------------------
# Its dependencies are ranges that the pinned set satisfies (tests/test_bootstrap.py checks),
# so pip installs it as any package, resolved against the set (-c): nothing else changes. pip
# keeps an installed wheel of the same version, and `deploy` builds each version's wheel
# again from newer code: an installed project is removed first, so the new code replaces it.
wheel="$work/${WHEEL##*/}"
fetch "$WHEEL" "$wheel"
as_root "$VENV/bin/python" -m pip uninstall --quiet --yes fruits-pipeline
as_root "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
  "${pip_index[@]}" --only-binary=:all: -c "$requirements" "$wheel" \
  || fail "cannot install the project wheel $WHEEL into $VENV with the pinned set $REQUIREMENTS: pip's message above names the package whose pin is outside the project's range"
run "$VENV/bin/python" -m pip check \
  || fail "the pinned set $REQUIREMENTS and the project disagree: regenerate the set (python -m helpers.pins lock)"

# --- weights and the login environment ------------------------------------------------------
profile="export FRUITS_VENV=$(quote "$VENV")"
if [[ -n "$WEIGHTS" ]]; then
  weights="$WEIGHTS_DIR/${WEIGHTS##*/}"
  as_root mkdir -p "$WEIGHTS_DIR"
  fetch "$WEIGHTS" "$work/${WEIGHTS##*/}"
  as_root install -m 0644 "$work/${WEIGHTS##*/}" "$weights" || fail "cannot write $weights"
  profile+=$'\n'"export FRUITS_WEIGHTS=$(quote "$weights")"
  log "weights $WEIGHTS -> $weights (FRUITS_WEIGHTS)"
fi
# a file of ours only: the one a previous run wrote, or none
if [[ -e "$PROFILE" || -L "$PROFILE" ]]; then
  first=""
  if [[ -f "$PROFILE" && ! -L "$PROFILE" ]]; then IFS= read -r first <"$PROFILE" || true; fi
  [[ "$first" == "# written by bootstrap-emr.sh" ]] \
    || fail "--profile $PROFILE exists and was not written by bootstrap-emr.sh: it is not replaced; pass another --profile"
fi
log "writing $PROFILE: ${profile//$'\n'/; }"
if [[ $DRY_RUN -eq 1 ]]; then
  as_root tee "$PROFILE"
else
  printf '# written by bootstrap-emr.sh\n%s\n' "$profile" | as_root tee "$PROFILE" >/dev/null
fi

# --- check and report ------------------------------------------------------------------------
TF_CPP_MIN_LOG_LEVEL=2 run "$VENV/bin/python" -c "import numpy, pandas, pyarrow, PIL, sklearn, matplotlib, seaborn, s3fs, papermill, tensorflow, keras, helpers.config" \
  || fail "the installed packages do not import in $VENV: the output above names the module"
log "installed in $VENV:"
run "$VENV/bin/python" -m pip freeze --all
log "done: Python $PYTHON_VERSION, pinned set ${REQUIREMENTS##*/}, project ${WHEEL##*/}${WEIGHTS:+, weights ${WEIGHTS##*/}}"

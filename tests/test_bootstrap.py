"""bootstrap-emr.sh and the pinned sets it installs on EMR nodes.

The script runs here in its ``--dry-run`` mode with nothing on PATH but stand-ins that
record any call: argument checks, the commands it would run, and proof that a dry run
starts no program at all (no sudo, no network). shellcheck (Debian's package; .ci/run
installs it) lints it. The pinned sets are checked against pyproject.toml and
constraints.txt, and against the format ``python -m helpers.pins lock`` writes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.emr import (
    PROFILE,
    REQUIREMENTS,
    VENV_DIR,
    WEIGHTS_DIR,
    EmrSettings,
    bootstrap_action,
    step_script,
)
from helpers.paths import PROJECT_ROOT
from helpers.pins import (
    EMR_OWN,
    SETS,
    TOOLING,
    check_pins,
    direct_requirements,
    normalize,
    parse_pins,
    platform_args,
    project_requirements,
    read_pins,
    render,
)

# the EMR bootstrap and the pinned sets (bash, files), no Spark: make test runs it,
# make test-spark4 does not
pytestmark = pytest.mark.spark_neutral

SCRIPT = PROJECT_ROOT / "bootstrap-emr.sh"
WHEEL = "s3://fruits-eu/fruits/code/fruits_pipeline-0.1.0-py3-none-any.whl"
WEIGHTS = "s3://fruits-eu/fruits/models/mobilenet_v2_no_top.h5"


def _bootstrap(
    tmp_path: Path,
    *args: str,
    commands: tuple[str, ...] = (),
    real: tuple[str, ...] = (),
    scripts: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the script with a PATH of stand-ins only; return (result, calls made).

    Each stand-in (sudo, aws, dnf, cp, pip... and ``commands``) appends its name and
    arguments to a log and fails, except sudo, which logs and runs its command. ``real``
    names are the machine's own programs; ``scripts`` maps a name to the bash lines its
    stand-in runs after logging. A dry run must start none of them.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.log"
    for name in {"aws", "dnf", "cp", "mktemp", "rm", "install", "tee", "pip", *commands}:
        stand_in = bin_dir / name
        stand_in.unlink(missing_ok=True)  # never write through a link to a real program
        stand_in.write_text(f'#!/bin/bash\necho "{name} $*" >> {calls}\nexit 97\n')
        stand_in.chmod(0o755)
    sudo = bin_dir / "sudo"
    sudo.unlink(missing_ok=True)
    sudo.write_text(f'#!/bin/bash\necho "sudo $*" >> {calls}\nexec "$@"\n')
    sudo.chmod(0o755)
    for name in real:
        (bin_dir / name).unlink(missing_ok=True)
        (bin_dir / name).symlink_to(shutil.which(name))
    for name, body in (scripts or {}).items():
        (bin_dir / name).unlink(missing_ok=True)
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >> {calls}\n{body}\n')
        (bin_dir / name).chmod(0o755)
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT), *args],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    return result, calls.read_text().splitlines() if calls.exists() else []


def _dry_lines(output: str) -> list[list[str]]:
    """The commands a dry run printed, split as the shell would."""
    prefix = "DRY-RUN: "
    return [
        shlex.split(line[len(prefix) :]) for line in output.splitlines() if line.startswith(prefix)
    ]


def test_shellcheck_clean() -> None:
    """shellcheck finds nothing in bootstrap-emr.sh (CI installs Debian's shellcheck)."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run does)")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_plans_the_install_and_runs_nothing(tmp_path: Path) -> None:
    """A dry run with Python 3.9 prints every step, in order, and starts no program."""
    result, calls = _bootstrap(
        tmp_path,
        "--dry-run",
        "--wheel",
        WHEEL,
        "--requirements",
        REQUIREMENTS["3.9"],
        "--weights",
        WEIGHTS,
        commands=("python3.9",),  # present: no dnf install
    )
    assert result.returncode == 0, result.stderr
    assert calls == []
    commands = _dry_lines(result.stdout)
    venv_python = f"{VENV_DIR}/bin/python"
    assert ["python3.9", "-m", "venv", VENV_DIR] in commands
    assert not any(c[0] == "dnf" for c in commands)
    pip_self = next(c for c in commands if "pip==25.3" in c)
    assert pip_self[:5] == [venv_python, "-m", "pip", "install", "--quiet"]
    install = next(c for c in commands if "-r" in c)
    assert {"--no-deps", "--only-binary=:all:", "--no-cache-dir"} <= set(install)
    assert install[install.index("-r") + 1].endswith("requirements-py39.txt")
    assert [venv_python, "-m", "pip", "check"] in commands
    assert ["aws", "s3", "cp", "--only-show-errors", WHEEL] == commands[
        next(i for i, c in enumerate(commands) if c[:2] == ["aws", "s3"] and WHEEL in c)
    ][:5]
    # the wheel is installed as any package, its dependencies resolved against the pinned set
    wheel_install = next(c for c in commands if "install" in c and c[-1].endswith(".whl"))
    assert wheel_install[-1].endswith("fruits_pipeline-0.1.0-py3-none-any.whl")
    assert "--no-deps" not in wheel_install and "--force-reinstall" not in wheel_install
    assert wheel_install[wheel_install.index("-c") + 1].endswith("requirements-py39.txt")
    assert "--only-binary=:all:" in wheel_install
    replace = [venv_python, "-m", "pip", "uninstall", "--quiet", "--yes", "fruits-pipeline"]
    assert commands.index(replace) == commands.index(wheel_install) - 1
    weights_file = f"{WEIGHTS_DIR}/mobilenet_v2_no_top.h5"
    assert any(c[0] == "install" and c[-1] == weights_file for c in commands)
    assert f"export FRUITS_WEIGHTS='{weights_file}'" in result.stdout
    assert ["tee", PROFILE] in commands
    # no environment on this machine: nothing removed, a marked one created
    assert not any(c[0] == "rm" for c in commands)
    marker = commands.index(["tee", f"{VENV_DIR}/.fruits-bootstrap"])
    assert commands.index(["mkdir", "-p", VENV_DIR]) < marker
    assert marker < commands.index(["python3.9", "-m", "venv", VENV_DIR])
    pins = sum(1 for _ in read_pins(PROJECT_ROOT / REQUIREMENTS["3.9"]))
    assert f"would install {pins} pinned packages" in result.stdout
    # the order matters: pinned set, then the project, then the check of both, the report
    order = [commands.index(install), commands.index(wheel_install)]
    order += [
        commands.index([venv_python, "-m", "pip", "check"]),
        commands.index([venv_python, "-m", "pip", "freeze", "--all"]),
    ]
    assert order == sorted(order)
    # the system pip is never touched: every pip call is the environment's
    assert all(c[0] == venv_python for c in commands if "pip" in c[:3])


def test_dry_run_python_311_installs_the_package_when_missing(tmp_path: Path) -> None:
    """--python 3.11 without python3.11 on the node: dnf installs it, then the tested set."""
    result, calls = _bootstrap(
        tmp_path,
        "--dry-run",
        "--python",
        "3.11",
        "--wheel",
        WHEEL,
        "--requirements",
        "s3://fruits-eu/fruits/code/requirements-py311.txt",
    )
    assert result.returncode == 0, result.stderr
    assert calls == []
    commands = _dry_lines(result.stdout)
    assert ["dnf", "install", "-y", "-q", "python3.11", "python3.11-pip"] in commands
    assert ["python3.11", "-m", "venv", VENV_DIR] in commands
    assert any(c[:2] == ["aws", "s3"] and c[4].endswith("requirements-py311.txt") for c in commands)
    assert "FRUITS_WEIGHTS" not in result.stdout


def test_the_cluster_bootstrap_arguments_are_accepted(tmp_path: Path) -> None:
    """The arguments helpers.emr gives the bootstrap action parse, for both Pythons."""
    for python in ("3.9", "3.11"):
        settings = EmrSettings(bucket="fruits-eu", python=python, weights="/w/model.h5")
        args = bootstrap_action(settings)["ScriptBootstrapAction"]["Args"]
        result, calls = _bootstrap(tmp_path, "--dry-run", *args, commands=(f"python{python}",))
        assert result.returncode == 0, result.stderr
        assert calls == []
        assert f"Python {python}" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--wheel is required"),
        (["--wheel", WHEEL], "--requirements is required"),
        (["--wheel", "s3://b/x.tar.gz", "--requirements", "r-py39.txt"], "is not a wheel"),
        (["--wheel", WHEEL, "--requirements", "r-py39.txt", "--python", "3.8"], "3.9"),
        (
            ["--wheel", WHEEL, "--requirements", "requirements-py311.txt"],
            "not the set for Python 3.9",
        ),
        (["--wheel", WHEEL, "--requirements", "r-py39.txt", "--weights", "s3://b/w.txt"], "*.h5"),
        (["--wheel", WHEEL, "--requirements", "r-py39.txt", "--venv", "venv"], "absolute path"),
        (["--wheel", WHEEL, "--requirements", "r-py39.txt", "--venv", "/opt/x/../y"], "plain"),
        (["--wheel", WHEEL, "--requirements", "r-py39.txt", "--profile", "/a b"], "plain"),
        (
            ["--wheel", WHEEL, "--requirements", "r-py39.txt", "--weights", "/w/a.h5\nrm -rf /"],
            "--weights holds a control character",
        ),
        (["--wheel"], "--wheel needs a value"),
        (["--upgrade-pip"], "unknown argument '--upgrade-pip'"),
    ],
)
def test_bad_arguments_stop_with_the_fix(tmp_path: Path, args: list[str], message: str) -> None:
    """Each mistake exits with status 2 and one message naming it, before doing anything."""
    result, calls = _bootstrap(tmp_path, "--dry-run", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert calls == [] and "DRY-RUN" not in result.stdout


def test_failure_names_the_step(tmp_path: Path) -> None:
    """A real run whose Python cannot make the environment stops there, saying so (exit 1)."""
    requirements = tmp_path / "requirements-py39.txt"
    requirements.write_text("numpy==1.26.4\n")
    venv = tmp_path / "venv"
    result, calls = _bootstrap(
        tmp_path,
        "--wheel",
        WHEEL,
        "--requirements",
        str(requirements),
        "--venv",
        str(venv),
        commands=("python3.9",),
        real=("mktemp", "rm", "mkdir", "tee"),
    )
    assert result.returncode == 1
    assert f"ERROR: python3.9 cannot create the virtual environment {venv}" in result.stderr
    assert (venv / ".fruits-bootstrap").is_file()  # marked first: the next run may replace it
    assert f"python3.9 -m venv {venv}" in calls
    assert not any(call.startswith(("aws", "dnf", "pip")) for call in calls)


SECRET_KEY = "wJalrSECRET/bPxRfiCYEXAMPLEKEY"  # AWS secret keys may hold '/'
SECRET_PARTS = SECRET_KEY.split("/")
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("option", ["--wheel", "--requirements", "--weights", "--index-url"])
@pytest.mark.parametrize(
    "uri",
    [
        f"s3://{ACCESS_KEY}:{SECRET_KEY}@fruits-eu/code/x-py39.h5.whl",
        f"S3://{ACCESS_KEY}:{SECRET_KEY}@fruits-eu/code/x-py39.h5.whl",
        f"s3a://{ACCESS_KEY}:{SECRET_KEY}/x-py39.h5.whl",
        f"s3://{ACCESS_KEY}:ab/{SECRET_KEY}@fruits-eu/x-py39.h5.whl",
        f"HTTPS://{ACCESS_KEY}@mirror.example/simple/x-py39.h5.whl",
        f"gs://{ACCESS_KEY}:{SECRET_KEY}@b/x-py39.h5.whl",
    ],
)
def test_credentials_in_arguments_are_refused_unshown(
    tmp_path: Path, option: str, uri: str
) -> None:
    """A URI with user:secret@ in any argument, any scheme or case: refused, never echoed."""
    args = {"--wheel": WHEEL, "--requirements": "r-py39.txt", option: uri}
    result, calls = _bootstrap(tmp_path, "--dry-run", *[a for kv in args.items() for a in kv])
    assert result.returncode == 2, result.stderr
    assert f"{option} '" in result.stderr and "***" in result.stderr
    assert "holds credentials" in result.stderr
    output = result.stdout + result.stderr
    assert not any(part in output for part in (ACCESS_KEY, *SECRET_PARTS))
    assert calls == [] and "DRY-RUN" not in result.stdout


def _fake_node(tmp_path: Path) -> tuple[list[str], dict[str, str], Path]:
    """Arguments for a real (not dry) run on folders of ``tmp_path``, with a python3.9 whose
    ``-m venv DIR`` makes a DIR/bin/python that accepts everything; (args, scripts, venv)."""
    requirements = tmp_path / "requirements-py39.txt"
    requirements.write_text("numpy==1.26.4\n")
    wheel = tmp_path / "fruits_pipeline-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    venv = tmp_path / "node" / "venv"
    python = 'if [[ "$1 $2" == "-m venv" ]]; then mkdir -p "$3/bin"; '
    python += 'printf \'#!/bin/bash\\nexit 0\\n\' > "$3/bin/python"; chmod +x "$3/bin/python"; fi'
    args = ["--wheel", str(wheel), "--requirements", str(requirements), "--venv", str(venv)]
    args += ["--weights-dir", str(tmp_path / "node" / "weights")]
    args += ["--profile", str(tmp_path / "node" / "fruits.sh")]
    return args, {"python3.9": python}, venv


REAL = ("mktemp", "rm", "mkdir", "tee", "cp", "install", "chmod", "printf")


def test_profile_values_are_shell_quoted(tmp_path: Path) -> None:
    """A weights name with quotes, $(...) and blanks reaches FRUITS_WEIGHTS as it is, and
    sourcing the profile (bash or sh) runs nothing."""
    args, scripts, venv = _fake_node(tmp_path)
    weights = tmp_path / "it's $(touch PWNED) `touch PWNED2` x.h5"
    weights.write_bytes(b"\x89HDF")
    result, _ = _bootstrap(tmp_path, *args, "--weights", str(weights), real=REAL, scripts=scripts)
    assert result.returncode == 0, result.stderr
    profile = tmp_path / "node" / "fruits.sh"
    installed = tmp_path / "node" / "weights" / weights.name
    assert installed.read_bytes() == b"\x89HDF"
    for shell in ("bash", "sh"):
        shown = subprocess.run(
            [shell, "-c", f'. "{profile}"; printf "%s|%s" "$FRUITS_VENV" "$FRUITS_WEIGHTS"'],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert shown.stdout == f"{venv}|{installed}", shown.stderr
    assert not list(tmp_path.glob("PWNED*"))
    # a second run reuses the environment it created and rewrites its own profile
    again, calls = _bootstrap(
        tmp_path, *args, "--weights", str(weights), real=REAL, scripts=scripts
    )
    assert again.returncode == 0, again.stderr
    assert f"reusing the Python 3.9 environment {venv}" in again.stdout


def test_venv_not_created_by_the_script_is_refused_untouched(tmp_path: Path) -> None:
    """--venv naming a folder with someone's files: refused, naming it; nothing removed."""
    args, scripts, venv = _fake_node(tmp_path)
    venv.mkdir(parents=True)
    (venv / "thesis.tex").write_text("years of work")
    for dry in ([], ["--dry-run"]):
        result, calls = _bootstrap(tmp_path, *args, *dry, real=REAL, scripts=scripts)
        assert result.returncode == 1, result.stderr
        assert f"--venv {venv} exists and was not created by bootstrap-emr.sh" in result.stderr
        assert (venv / "thesis.tex").read_text() == "years of work"
        assert not any(c.startswith(("rm", "python3.9")) for c in calls)
        assert "rm -rf" not in result.stdout


def test_venv_made_by_the_script_is_replaced(tmp_path: Path) -> None:
    """A marked environment of another Python is removed and made again; an empty folder
    is used as it is; a missing one is created."""
    args, scripts, venv = _fake_node(tmp_path)
    venv.mkdir(parents=True)
    (venv.parent / "keep").write_text("beside the environment")
    result, _ = _bootstrap(tmp_path, *args, real=REAL, scripts=scripts)  # empty: used
    assert result.returncode == 0, result.stderr
    assert (venv / ".fruits-bootstrap").is_file() and (venv.parent / "keep").is_file()
    (venv / "bin" / "python").write_text("#!/bin/bash\nexit 1\n")  # another Python now
    (venv / "stale").write_text("left by the old environment")
    (tmp_path / "calls.log").unlink()
    result, calls = _bootstrap(tmp_path, *args, real=REAL, scripts=scripts)
    assert result.returncode == 0, result.stderr
    assert f"creating the Python 3.9 environment {venv}" in result.stdout
    assert not (venv / "stale").exists() and (venv / ".fruits-bootstrap").is_file()
    assert f"python3.9 -m venv {venv}" in calls


def test_profile_not_written_by_the_script_is_refused(tmp_path: Path) -> None:
    """--profile naming someone else's file: refused, naming it, the file unchanged."""
    args, scripts, _ = _fake_node(tmp_path)
    profile = tmp_path / "node" / "fruits.sh"
    profile.parent.mkdir(parents=True)
    profile.write_text("export MINE=1\n")
    result, _ = _bootstrap(tmp_path, *args, real=REAL, scripts=scripts)
    assert result.returncode == 1
    assert f"--profile {profile} exists and was not written by bootstrap-emr.sh" in result.stderr
    assert profile.read_text() == "export MINE=1\n"


def test_step_script_is_valid_bash() -> None:
    """The pipeline step's script parses and is shellcheck-clean; arguments stay whole."""
    settings = EmrSettings(bucket="fruits-eu", weights="/w/model.h5")
    script = step_script(settings, {"tsne_perplexity": 12.5, "weights": "/opt/w/it's here.h5"})
    parsed = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    if shutil.which("shellcheck"):
        checked = subprocess.run(
            ["shellcheck", "-s", "bash", "-"], input=script, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout
    last = shlex.split(script.strip().splitlines()[-1])
    assert last[:3] == [f"{VENV_DIR}/bin/python", "-m", "helpers.run"]
    assert last[last.index("--data-root") + 1] == "s3://fruits-eu/fruits/data"
    assert last[-6:] == ["-p", "tsne_perplexity", "12.5", "-p", "weights", "/opt/w/it's here.h5"]


# --- the pinned sets ----------------------------------------------------------------------


@pytest.mark.parametrize("python", sorted(SETS))
def test_sets_hold_every_direct_dependency_but_pyspark(python: str) -> None:
    """Each set pins every project dependency its Python needs, except EMR's own pyspark."""
    pins = read_pins(PROJECT_ROOT / SETS[python])
    assert set(direct_requirements(python)) <= set(pins)
    assert not EMR_OWN & set(pins), "pyspark is EMR's: installing it would shadow EMR's Spark"
    assert len(pins) > 60, "a set is complete: transitive packages included"


def test_pyproject_holds_ranges_only() -> None:
    """Exact versions live in constraints.txt and emr/ only: pyproject.toml gives ranges."""
    for key, req in project_requirements(extras=True).items():
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"{req}: a pin"
        assert req.specifier, f"{key}: no range at all"


@pytest.mark.parametrize(
    ("path", "python"),
    [
        ("constraints.txt", "3.11"),
        ("constraints-spark4.txt", "3.11"),
        (SETS["3.11"], "3.11"),
        (SETS["3.9"], "3.9"),
    ],
)
def test_every_pin_is_within_pyprojects_ranges(path: str, python: str) -> None:
    """Every exact pin of the tested set and of the nodes' sets satisfies pyproject.toml."""
    assert check_pins(read_pins(PROJECT_ROOT / path), python) == []


def test_check_pins_names_a_pin_outside_its_range() -> None:
    """A pin outside a range is named with the range; a marker that excludes the Python
    (onnxruntime on 3.9) leaves the pin unchecked."""
    pins = parse_pins(["numpy==1.25.2", "onnxruntime==1.19.2", "pyspark==3.4.1"])
    assert [p.split(" is ")[0] for p in check_pins(pins, "3.9")] == [
        "numpy==1.25.2",
        "pyspark==3.4.1",
    ]
    assert any("onnxruntime==1.19.2" in p for p in check_pins(pins, "3.11"))
    assert "'numpy<3,>=1.26'" in check_pins(pins, "3.11")[0]


#: What the Spark 4 set may change from the tested set: the Spark line and what it needs.
SPARK4_CHANGES = {"pyspark", "py4j", "numpy", "pandas", "pyarrow"}


def test_spark4_set_is_the_tested_set_on_spark_4() -> None:
    """constraints-spark4.txt is pyspark 4 with numpy 2 and, for everything else (TensorFlow,
    Keras, LiteRT, ONNX, the tools), constraints.txt's versions: only the Spark line differs."""
    tested = read_pins(PROJECT_ROOT / "constraints.txt")
    spark4 = read_pins(PROJECT_ROOT / "constraints-spark4.txt")
    assert spark4["pyspark"].version.startswith("4.")
    assert spark4["numpy"].version.startswith("2.")
    assert tested["pyspark"].version.startswith("3.5.")
    differ = {
        k
        for k in set(tested) | set(spark4)
        if k not in SPARK4_CHANGES
        and (tested.get(k) and tested[k].version) != (spark4.get(k) and spark4[k].version)
    }
    # sparkmagic and its dependencies: the Livy extra, which Spark 4 cannot use (Livy 0.9)
    livy_only = {k for k in differ if k not in spark4}
    assert differ == livy_only, f"differ from constraints.txt: {sorted(differ - livy_only)}"
    for key in ("tensorflow-cpu", "keras", "ai-edge-litert", "onnxruntime", "tf2onnx", "openvino"):
        assert spark4[key].version == tested[key].version, key


def test_py311_set_is_the_tested_set() -> None:
    """Every 3.11 pin equals constraints.txt (pip/setuptools/wheel are not in pip freeze)."""
    locked = read_pins(PROJECT_ROOT / "constraints.txt")
    pins = read_pins(PROJECT_ROOT / SETS["3.11"])
    differ = {
        k: (p.version, locked[k].version if k in locked else None)
        for k, p in pins.items()
        if k not in TOOLING and (k not in locked or locked[k].version != p.version)
    }
    assert differ == {}, "requirements-py311.txt disagrees with constraints.txt"
    assert all(not p.note for p in pins.values())


def test_py39_set_agrees_with_the_tested_set_or_says_why() -> None:
    """A 3.9 direct pin equals the tested one (constraints.txt), or its note names it.

    When constraints.txt moves, the note goes stale and this fails until the 3.9 set is
    revisited (python -m helpers.pins lock --python 3.9).
    """
    pins = read_pins(PROJECT_ROOT / SETS["3.9"])
    tested = read_pins(PROJECT_ROOT / "constraints.txt")
    direct = {k for k in project_requirements() if k not in EMR_OWN and k in pins}
    for key in direct:
        pin, version = pins[key], tested[key].version
        if pin.version == version:
            assert not pin.note, f"{pin.name}: same version as the tested set, yet a note"
        else:
            assert pin.note.startswith(f"tested {version}: "), (
                f"{pin.name}=={pin.version} differs from constraints.txt's {version}: "
                f"note it '# tested {version}: <why>' or align it"
            )
    shared = {"numpy", "pandas", "pyarrow", "seaborn"}  # the versions both Pythons share
    assert all(pins[k].version == tested[k].version for k in shared)
    assert all(not p.note for k, p in pins.items() if k not in direct)


@pytest.mark.parametrize("python", sorted(SETS))
def test_sets_are_in_the_lock_format(python: str) -> None:
    """The files are exactly what `python -m helpers.pins lock` writes (sorted, noted)."""
    path = PROJECT_ROOT / SETS[python]
    assert render(python, read_pins(path)) == path.read_text()
    assert SETS[python] == REQUIREMENTS[python]


def test_platform_tags_stop_at_the_nodes_glibc() -> None:
    """Wheels are chosen for Amazon Linux 2023 (glibc 2.34), never newer."""
    tags = platform_args()[1::2]
    assert "manylinux_2_34_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert not any(t.startswith("manylinux_2_35") for t in tags)
    assert normalize("Tensorflow_CPU") == "tensorflow-cpu"


def test_no_secret_or_bucket_in_the_script() -> None:
    """No credentials, account ids or bucket names are written into the bootstrap."""
    text = SCRIPT.read_text()
    for needle in ("AKIA", "aws_secret", "AWS_SECRET_ACCESS_KEY", "s3://fruits", "s3://my-"):
        assert needle not in text
    assert "set -euo pipefail" in text
    assert os.access(SCRIPT, os.X_OK)


def test_nodes_and_make_setup_pin_the_same_pip() -> None:
    """The nodes' pip (bootstrap-emr.sh) is the one `make setup` installs (Makefile)."""
    script = re.search(r'^readonly PIP_VERSION="([^"]+)"$', SCRIPT.read_text(), re.M)
    makefile = re.search(r'"pip==([^"]+)"', (PROJECT_ROOT / "Makefile").read_text())
    assert script and makefile and script.group(1) == makefile.group(1)

"""The pinned Python sets of the EMR nodes (``emr/requirements-py*.txt``): read, regenerate.

    python -m helpers.pins lock --python 3.9 --interpreter python3.9
    python -m helpers.pins lock --python 3.11 --interpreter python3.11

Exact versions live in these sets and in ``constraints.txt`` (the tested set) only;
``pyproject.toml`` gives the ranges the code supports, and :func:`check_pins` says which pin
falls outside them. Each set is complete (transitive packages included: ``bootstrap-emr.sh``
installs it with ``--no-deps``, then the project wheel against it, then runs ``pip check``)
and resolved for the nodes: CPython of that version, manylinux x86_64 wheels up to glibc
2.34 (Amazon Linux 2023, EMR 7). pyspark and py4j are EMR's own and never listed. The 3.11
set takes every version from ``constraints.txt``. The 3.9 set keeps the direct pins written
in it (edit them there; a ``# tested X: reason`` note says why one differs from
``constraints.txt``) and re-resolves the rest. The resolver must run on that Python itself:
pip evaluates environment markers (``python_version < "3.10"``...) with the running
interpreter.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import PROJECT_ROOT

log = logging.getLogger(__name__)

#: The sets, by the nodes' Python version.
SETS = {"3.9": "emr/requirements-py39.txt", "3.11": "emr/requirements-py311.txt"}

#: Provided by EMR itself, never installed by the bootstrap.
EMR_OWN = frozenset({"pyspark", "py4j"})

#: Installed in every virtual environment, and left out of ``pip freeze`` (constraints.txt).
TOOLING = frozenset({"pip", "setuptools", "wheel"})

#: Newest glibc of the nodes (Amazon Linux 2023): newer manylinux wheels would not load.
MAX_GLIBC_MINOR = 34

_HEADERS = {
    "3.9": """\
# EMR 7.x nodes, Python 3.9 (Amazon Linux 2023's python3, EMR's default for PySpark): every
# package bootstrap-emr.sh installs, pinned; manylinux x86_64 wheels up to glibc 2.34.
# pyspark is EMR's own. Where the tested version (constraints.txt) needs a newer Python, the
# newest release for 3.9 is pinned, noted "# tested X: reason"; every pin stays within
# pyproject.toml's ranges (tests/test_bootstrap.py checks both). Edit a direct pin here, then
# regenerate the rest with Python 3.9 itself:
#   python -m helpers.pins lock --python 3.9 --interpreter python3.9
""",
    "3.11": """\
# EMR 7.x nodes, Python 3.11 (Amazon Linux 2023's python3.11 package): the project's tested
# set, every package bootstrap-emr.sh installs, pinned; manylinux x86_64 wheels up to glibc
# 2.34. pyspark is EMR's own. Every version is constraints.txt's, within pyproject.toml's
# ranges (tests/test_bootstrap.py checks). Regenerate after changing constraints.txt:
#   python -m helpers.pins lock --python 3.11 --interpreter python3.11
""",
}

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s#;]+)\s*(?:#\s*(.*))?$")


@dataclass(frozen=True)
class Pin:
    """One ``name==version`` line, with the note after ``#`` if any."""

    name: str
    version: str
    note: str = ""


def normalize(name: str) -> str:
    """The PEP 503 form of a package name: ``Tensorflow_CPU`` -> ``tensorflow-cpu``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: list[str]) -> dict[str, Pin]:
    """The ``name==version`` pins in ``lines`` (requirements or pyproject), by normalized name."""
    pins = {}
    for line in lines:
        match = _PIN.match(line.strip().strip('",'))
        if match:
            name, version, note = match.groups()
            pins[normalize(name)] = Pin(name, version, (note or "").strip())
    return pins


def read_pins(path: Path) -> dict[str, Pin]:
    """The pins of a requirements or constraints file."""
    return parse_pins(path.read_text().splitlines())


def project_requirements(root: Path = PROJECT_ROOT, extras: bool = False) -> dict[str, Any]:
    """The project's dependencies as ``packaging`` requirements (ranges), by normalized name.

    ``extras``: the optional ones too (``spark``, ``dev``), as ``constraints.txt`` pins them.
    """
    import tomllib  # Python 3.11+: this tool runs in the project's environment, not on nodes

    from packaging.requirements import Requirement

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    if extras:
        lines += [line for group in project["optional-dependencies"].values() for line in group]
    return {normalize(r.name): r for r in map(Requirement, lines)}


def applies(requirement: Any, python: str) -> bool:
    """Whether ``requirement`` holds on the nodes' ``python`` (its environment marker)."""
    if requirement.marker is None:
        return True
    return requirement.marker.evaluate({"python_version": python, "python_full_version": python})


def direct_requirements(python: str, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The project's dependencies a node with ``python`` installs (pyspark is EMR's own)."""
    return {
        key: req
        for key, req in project_requirements(root).items()
        if key not in EMR_OWN and applies(req, python)
    }


def check_pins(pins: dict[str, Pin], python: str, root: Path = PROJECT_ROOT) -> list[str]:
    """Each pin outside ``pyproject.toml``'s range for it on ``python``, as a sentence.

    Every requirement counts, the extras' too; one whose marker excludes ``python`` does not.
    """
    problems = []
    for key, req in project_requirements(root, extras=True).items():
        if key in pins and applies(req, python) and pins[key].version not in req.specifier:
            problems.append(
                f"{pins[key].name}=={pins[key].version} is outside pyproject.toml's "
                f"'{req}': move the pin or the range"
            )
    return problems


def platform_args() -> list[str]:
    """pip's ``--platform`` options for every manylinux x86_64 tag a node can load."""
    tags = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
    tags += [f"manylinux_2_{minor}_x86_64" for minor in range(5, MAX_GLIBC_MINOR + 1)]
    return [arg for tag in tags for arg in ("--platform", tag)]


def tested_note(version: str, reason: str) -> str:
    """The note of a 3.9 pin that differs from the tested ``version`` (constraints.txt)."""
    return f"tested {version}: {reason}"


def render(python: str, pins: dict[str, Pin]) -> str:
    """A set's file: its header, then one ``name==version`` per line, sorted, with notes."""
    lines = [_HEADERS[python]]
    for key in sorted(pins):
        pin = pins[key]
        lines.append(f"{pin.name}=={pin.version}" + (f"  # {pin.note}" if pin.note else ""))
    return "\n".join(lines) + "\n"


def direct_inputs(python: str, root: Path = PROJECT_ROOT) -> list[str]:
    """What the resolver starts from: the project's direct dependencies, pinned for ``python``.

    3.11 takes the project's ranges (resolved with ``constraints.txt``); 3.9 the versions
    already written in its set (a direct dependency not there yet is left for the resolver to
    choose within its range).
    """
    project = direct_requirements(python, root)
    if python == "3.11":
        return [str(req) for req in project.values()]
    current = read_pins(root / SETS[python]) if (root / SETS[python]).is_file() else {}
    return [
        f"{req.name}=={current[key].version}" if key in current else str(req)
        for key, req in project.items()
    ]


def resolve(python: str, interpreter: str, inputs: list[str], root: Path = PROJECT_ROOT) -> dict:
    """Resolve ``inputs`` for the nodes with ``interpreter``'s pip; return {name: version}."""
    probe = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
    )
    found = probe.stdout.strip() or "not found"
    if probe.returncode != 0 or found != python:
        raise ValueError(
            f"interpreter '{interpreter}' is not Python {python} ({found}): pip evaluates "
            f"environment markers with the interpreter it runs on, so pass a Python {python} "
            "(pyenv, a container)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "in.txt"
        requirements.write_text("\n".join(inputs) + "\n")
        report = Path(tmp) / "report.json"
        command = [
            interpreter, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
            "--report", str(report), "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python, "--abi", "cp" + python.replace(".", ""),
            *platform_args(), "--target", str(Path(tmp) / "target"), "-r", str(requirements),
        ]  # fmt: skip
        if python == "3.11":
            command += ["-c", str(root / "constraints.txt")]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip could not resolve the Python {python} set:\n{result.stderr}")
        installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in installs}


def lock(python: str, interpreter: str, root: Path = PROJECT_ROOT) -> Path:
    """Regenerate the set for ``python`` in place; return its path."""
    if python not in SETS:
        raise ValueError(f"python '{python}' has no set; use one of {sorted(SETS)}")
    path = root / SETS[python]
    resolved = resolve(python, interpreter, direct_inputs(python, root), root)
    project = project_requirements(root)  # every direct dependency, for the notes
    tested = read_pins(root / "constraints.txt")
    current = read_pins(path) if path.is_file() else {}
    pins = {}
    for name, version in resolved.items():
        key = normalize(name)
        note = ""
        if key in project and key in tested and tested[key].version != version:
            old = current.get(key)
            reason = old.note.split(":", 1)[1].strip() if old and ":" in old.note else ""
            note = tested_note(tested[key].version, reason or "needs a newer Python")
        pins[key] = Pin(name, version, note)
    problems = check_pins(pins, python, root)
    if problems:
        raise RuntimeError(
            "the resolved set breaks pyproject.toml's ranges:\n" + "\n".join(problems)
        )
    path.write_text(render(python, pins))
    log.info("%s: %d pins for Python %s", path, len(pins), python)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: ``lock`` regenerates a set."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m helpers.pins", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    locker = commands.add_parser("lock", help="regenerate emr/requirements-pyXY.txt")
    locker.add_argument("--python", required=True, choices=sorted(SETS))
    locker.add_argument("--interpreter", help="a Python of that version (default: pythonX.Y)")
    args = parser.parse_args(argv)
    try:
        lock(args.python, args.interpreter or f"python{args.python}")
    except (ValueError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

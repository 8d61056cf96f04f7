"""Repository hygiene: lint, pins that agree, scripts that parse."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

from helpers.paths import PROJECT_ROOT


def _pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.match(r'^\s*"?([A-Za-z0-9_.\-]+)==([^"\s]+)"?', line)
        if match:
            found[re.sub(r"[_.]", "-", match.group(1).lower())] = match.group(2)
    return found


def test_ruff_clean():
    """ruff lint and format pass on code and notebooks."""
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=PROJECT_ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_bootstrap_pins_agree_with_pyproject():
    """bootstrap-emr.sh installs exactly the versions pyproject.toml pins."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    pinned = _pins(project["dependencies"])
    bootstrap = _pins((PROJECT_ROOT / "bootstrap-emr.sh").read_text().splitlines())
    assert bootstrap, "no pins found in bootstrap-emr.sh"
    for name, version in bootstrap.items():
        assert pinned.get(name) == version, (
            f"{name}: bootstrap {version}, pyproject {pinned.get(name)}"
        )


def test_constraints_cover_direct_pins():
    """constraints.txt (the full tested set) agrees with every direct pin."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    direct = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    locked = _pins((PROJECT_ROOT / "constraints.txt").read_text().splitlines())
    for name, version in direct.items():
        assert locked.get(name) == version, (
            f"{name}: constraints {locked.get(name)}, pyproject {version}"
        )


def test_shell_scripts_parse():
    """bootstrap-emr.sh and .ci/run are valid bash."""
    for script in ("bootstrap-emr.sh", ".ci/run"):
        result = subprocess.run(["bash", "-n", str(PROJECT_ROOT / script)], capture_output=True)
        assert result.returncode == 0, result.stderr

"""The shape of helpers/: no import cycle (imports inside functions count: they hide a
cycle, not remove it), environment variables read in helpers/env.py only, py4j only in
helpers/spark/jvm.py."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import PROJECT_ROOT

HELPERS = PROJECT_ROOT / "helpers"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(HELPERS.rglob("*.py")):
        name = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of helpers/ that ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        targets |= {t for t in names if t in modules and t != name}
    return targets


def _cycles() -> list[list[str]]:
    """Every import cycle among helpers/' modules, each as the path that closes it."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state[target] == 1:
                cycles.append(path[path.index(target) :] + [node, target])
            elif state[target] == 0:
                visit(target, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node, [])
    return cycles


def test_no_import_cycle_in_helpers() -> None:
    """No module of helpers/ reaches itself again through its imports."""
    assert _cycles() == []


def _uses(path: Path, words: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(PROJECT_ROOT)}:{n}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(word in line for word in words) and not line.lstrip().startswith("#")
    ]


def test_environment_is_read_in_env_only() -> None:
    """helpers/env.py reads the environment; other modules ask it (setting variables for
    child processes is theirs)."""
    reads = ("os.environ.get(", "os.getenv(", 'os.environ["', "Path.home()", '"~/.cache')
    found = [
        hit for path in _modules().values() if path.name != "env.py" for hit in _uses(path, reads)
    ]
    assert found == []


def test_py4j_only_in_jvm_module() -> None:
    """Every call into the JVM goes through helpers/spark/jvm.py: no other module, benchmark
    or notebook touches py4j or a classic session's private attributes (the seam a Spark
    Connect port replaces)."""
    words = ("._jvm", "._jsc", "._jdf", "._gateway", "_py2java", "import py4j", "from py4j")
    files = [
        *_modules().values(),
        *(PROJECT_ROOT / "bench").glob("*.py"),
        *(PROJECT_ROOT / "notebooks").glob("*.ipynb"),
    ]
    found = [hit for path in files if path.name != "jvm.py" for hit in _uses(path, words)]
    assert found == []

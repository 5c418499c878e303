"""The layers of the package: each sub-package imports only from the layers below it.

``optim`` (one HF step) and ``models`` are the bottom: they import nothing else
of hfft but the private base modules (``hfft._io``, ``hfft._text``,
``hfft._version``). ``experiment`` builds on them; ``analysis`` and
``diagnostics`` on ``experiment`` (and not on each other); ``cli`` on
everything. Every import counts, also those inside functions and under
``TYPE_CHECKING``.

Inside ``experiment`` the floors are its sub-packages: the modules at its top
(``records``, ``limits``, ``interrupts``, ``snapshot``) are its base, ``data``
builds on them, ``strategies`` on ``data``, and ``run`` on both.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = {"hfft", "hfft._io", "hfft._text", "hfft._version"}
ALLOWED = {
    "optim": set(),
    "models": set(),
    "experiment": {"optim", "models"},
    "analysis": {"experiment", "optim", "models"},
    "diagnostics": {"experiment", "optim", "models"},
    "cli": {"experiment", "optim", "models", "analysis", "diagnostics"},
    "example": {"optim", "models"},
    "__main__": {"cli"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "hfft").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__")] = path
    for path in (ROOT / "models").rglob("*.py"):
        parts = ("hfft", *path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(p for p in parts if p != "__init__")] = path
    return found


EXPERIMENT_ALLOWED = {
    "base": set(),
    "data": {"base"},
    "strategies": {"base", "data"},
    "run": {"base", "data", "strategies"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and module not in BASE else None


def _floor(module: str) -> str:
    """The sub-package of ``experiment`` that holds ``module`` (``base`` at its top)."""
    parts = module.split(".")
    folder = ROOT / "hfft" / "experiment" / parts[2] if len(parts) > 2 else None
    return parts[2] if folder is not None and folder.is_dir() else "base"


def _imports(path: Path, module: str) -> set[str]:
    """Every hfft module ``path`` imports (``from hfft.x import y`` counts hfft.x and hfft.x.y)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("hfft")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.startswith("hfft"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names}
    return out


MODULES = _modules()


def _upward(
    module: str, place: Callable[[str], str | None], allowed: dict[str, set[str]]
) -> list[str]:
    """The imports of ``module`` from a place (layer or floor) not below its own."""
    own = place(module)
    assert own in allowed, f"{module} is in no known place"
    return sorted(
        imported
        for imported in _imports(MODULES[module], module)
        if imported in MODULES
        and imported not in BASE
        and place(imported) is not None
        and place(imported) != own
        and place(imported) not in allowed[own]
    )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_a_module_imports_only_from_the_layers_below(module: str) -> None:
    bad = _upward(module, _layer, ALLOWED)
    assert not bad, f"{module} ({_layer(module)}) imports {bad}"


def _experiment_floor(module: str) -> str | None:
    return _floor(module) if _layer(module) == "experiment" else None


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if _layer(m) == "experiment" and m != "hfft.experiment")
)
def test_an_experiment_module_imports_only_from_the_floors_below(module: str) -> None:
    bad = _upward(module, _experiment_floor, EXPERIMENT_ALLOWED)
    assert not bad, f"{module} ({_floor(module)}) imports {bad}"


def test_experiment_has_the_known_floors() -> None:
    floors = {_floor(m) for m in MODULES if _layer(m) == "experiment" and m != "hfft.experiment"}
    assert floors == set(EXPERIMENT_ALLOWED)


def test_the_base_modules_import_no_layer() -> None:
    for module in BASE - {"hfft"}:
        assert not {m for m in _imports(MODULES[module], module) if m in MODULES}, module


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycles() -> None:
    # module-level and function-level imports alike; a package's __init__ counts as the
    # package, so `from hfft.cli import train` inside hfft.cli.demo is not a cycle with
    # hfft.cli's own import of its command modules
    graph = {
        m: {i for i in _imports(p, m) if i in MODULES and i != m and i not in BASE}
        for m, p in MODULES.items()
        if m not in BASE
    }
    for module in graph:  # a package importing its submodules is not a dependency on them
        graph[module] = {i for i in graph[module] if not module.startswith(i + ".")}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize("argv", [["--help"], ["finetune", "--help"], ["compare", "--help"]])
def test_help_imports_no_torch(argv: list[str]) -> None:
    code = (
        "import sys; sys.argv = ['hfft', *sys.argv[1:]]\n"
        "from hfft.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

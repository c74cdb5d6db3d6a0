"""The layout rules: op packages import no CLI, plotting or training code (checked in fresh
interpreters and in their source, function bodies included); no library module outside
``pytransfer/cli`` (and the bench harness's ``threads`` context, which restores the count) calls
``matplotlib.use`` or ``torch.set_num_threads``."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "pytransfer"
OP_PACKAGES = [p for p in ("ot", "mmd", "hscore", "free_energy", "lautum")
               if (ROOT / p / "__init__.py").exists()]
FORBIDDEN = ("typer", "rich", "matplotlib", "click", "pytransfer.methods", "pytransfer.cli")


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_op_packages_load_no_cli_plot_or_training_modules():
    """One fresh interpreter imports the op packages one after another and lists sys.modules
    after each (``import pytransfer`` already imports every op package, so an interpreter per
    package would only repeat the same load at ~2 s each)."""
    code = ("import importlib, json, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "    print(json.dumps([name, sorted(sys.modules)]))\n")
    pkgs = [f"pytransfer.{p}" for p in OP_PACKAGES]
    res = subprocess.run([sys.executable, "-c", code, *pkgs], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    seen = []
    for line in res.stdout.splitlines():
        pkg, modules = json.loads(line)
        seen.append(pkg)
        loaded = [m for m in modules if _forbidden(m)]
        assert not loaded, f"import {pkg} loads {loaded}"
    assert seen == pkgs


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _banned_calls(tree: ast.AST) -> list[str]:
    """Calls of ``matplotlib.use`` and of any ``*.set_num_threads`` (torch, numba)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "set_num_threads" or (
                    f.attr == "use" and isinstance(f.value, ast.Name)
                    and f.value.id == "matplotlib"):
                found.append(f"{ast.unparse(f)} (line {node.lineno})")
    return found


def _sources(*parts):
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


@pytest.mark.parametrize("pkg", OP_PACKAGES)
def test_op_package_source_imports_nothing_forbidden(pkg):
    for path in _sources(pkg):
        bad = [n for n in _imports(ast.parse(path.read_text())) if _forbidden(n)]
        assert not bad, f"{path.relative_to(ROOT.parent)} imports {bad}"


def test_no_library_module_sets_backend_or_threads():
    offenders = {}
    for path in _sources():
        if path.relative_to(ROOT).parts[0] == "cli" or \
                path.relative_to(ROOT) == Path("bench", "timing.py"):
            continue  # the commands; the bench harness's --threads context (it restores them)
        calls = _banned_calls(ast.parse(path.read_text()))
        if calls:
            offenders[str(path.relative_to(ROOT.parent))] = calls
    assert not offenders


def test_the_checks_catch_violations():
    src = ("import matplotlib\nmatplotlib.use('Agg')\n"
           "def f():\n    import torch\n    from rich.table import Table\n"
           "    torch.set_num_threads(1)\n    from pytransfer.methods import jtln\n")
    tree = ast.parse(src)
    assert [n for n in _imports(tree) if _forbidden(n)] == [
        "matplotlib", "rich.table", "rich.table.Table", "pytransfer.methods",
        "pytransfer.methods.jtln"]
    assert _banned_calls(tree) == ["matplotlib.use (line 2)", "torch.set_num_threads (line 6)"]
    assert not _forbidden("richards") and not _forbidden("pytransfer.mmd")

"""The shape of the code base: one direction of imports, no cycles, every module importable on its own,
imports inside functions only with a reason, and an installed copy that works without the repository.

Layers (ARCHITECTURE.md): ``mrcore`` <- ``training`` <- ``benchmarks``; ``mrcore`` <- ``serving`` <- ``dicom_node``.
The contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are checked with import-linter; cycles
between modules are found on the same import graph (grimp, import-linter's engine). Imports under
``if TYPE_CHECKING:`` are hints, not run: they are left out of both checks.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mrcore", "training", "serving", "dicom_node", "benchmarks")
#: modules that cannot be imported outside their host: Triton's python backend imports the server's own
#: ``triton_python_backend_utils``; ``__main__`` modules run their CLI.
NOT_IMPORTABLE_ALONE = ("serving.python_backend.model",)


def _modules(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in NOT_IMPORTABLE_ALONE:
            out.append(name)
    return out


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Import cycles: strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_layer_contracts_hold():
    """import-linter with the contracts of pyproject.toml: nothing imports upward, training and the serving
    side never import each other."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout, result.stdout[-2000:]


def test_no_import_cycles_between_modules():
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    assert len(graph.modules) > 100  # the whole tree was read
    cycles = _strongly_connected(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _strongly_connected(graph) == [["p.a", "p.b", "p.c"]]


def test_imports_inside_functions_say_why():
    """An import inside a function defers a heavy optional dependency and says so on its line
    (``# deferred: <reason>``); an import placed there to dodge a cycle has no reason to give."""
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            lines = source.splitlines()
            for func in ast.walk(ast.parse(source)):
                if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and not any(
                            "# deferred:" in line for line in lines[node.lineno - 1:node.end_lineno]):
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno} (in {func.name})")
    assert not missing, "imports inside functions without '# deferred: <reason>':\n" + "\n".join(missing)


@pytest.mark.slow
@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports_in_a_fresh_interpreter(package):
    """Each package's modules, imported one after another by a new interpreter (no test-session state)."""
    names = _modules(package)
    script = ("import importlib, sys, traceback\nbad = []\n"
              f"for name in {names!r}:\n"
              "    try:\n        importlib.import_module(name)\n"
              "    except Exception:\n        bad.append(name + ': ' + traceback.format_exc(limit=3))\n"
              "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_installed_package_runs_without_the_repository(tmp_path):
    """``pip install .`` into a fresh venv (the project's own files only; the dependencies are this
    environment's, on the path through a .pth file), then the CLIs from outside the repository."""
    source = tmp_path / "source"  # a copy: setuptools writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("mrcore", "training", "serving", "dicom_node"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(source)], capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("mri_service-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # only this environment's dependencies, not its editable install of the repository
    deps = [p for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}]
    Path(site, "zz_dependencies.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONWARNINGS"] = "ignore"
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=outside, env=env, capture_output=True, text=True, timeout=300)

    where = run(str(py), "-c", "import serving, training; print(serving.__file__); print(training.__file__)")
    assert where.returncode == 0, where.stderr[-3000:]
    assert str(ROOT) not in where.stdout and site in where.stdout, where.stdout
    assert run(str(py), "-c", "import benchmarks.common").returncode != 0  # the repository is not on the path
    # every installed module imports (what a command needs only when it runs, not for --help, is caught here)
    walk = ("import importlib, pkgutil, sys\nbad = []\n"
            "for pkg in ('mrcore', 'training', 'serving', 'dicom_node'):\n"
            "    mod = importlib.import_module(pkg)\n"
            "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
            f"        if info.name.endswith('__main__') or info.name in {NOT_IMPORTABLE_ALONE!r}:\n"
            "            continue\n"
            "        try:\n            importlib.import_module(info.name)\n"
            "        except Exception as exc:\n            bad.append(f'{info.name}: {exc!r}')\n"
            "from training.export.triton_repo import RUNNER\n"
            "if not RUNNER.is_file():\n    bad.append(f'the python backend runner {RUNNER} is not installed')\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    imported = run(str(py), "-c", walk)
    assert imported.returncode == 0, imported.stdout[-4000:] + imported.stderr[-3000:]
    for cli, args, expected in (("mri-train", ("evaluate-recon", "--help"), "--model"),
                                ("mri-api", ("--help",), "serve"),
                                ("dicom-node", ("--help",), "wrap-kspace")):
        result = run(str(venv / "bin" / cli), *args)
        assert result.returncode == 0, f"{cli} {' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
        assert expected in result.stdout, result.stdout[-2000:]


def test_importing_the_services_leaves_warning_filters_alone():
    """A dependency that resets the process's warning filters on import (ismrmrd does) would make every
    DeprecationWarning of every library print into the services' JSON logs."""
    script = ("import json, warnings\nbefore = list(warnings.filters)\n"
              "import serving.api.app, serving.api.cli, dicom_node.cli, dicom_node.node\n"
              "import mrcore.data.readers\n"
              "print(json.dumps([f[0] + ' ' + f[2].__name__ for f in warnings.filters if f not in before]))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    added = json.loads(result.stdout.strip().splitlines()[-1])  # ["action Category", ...]
    assert not [f for f in added if f.split()[0] in ("default", "always") and f.split()[1] in
                ("Warning", "DeprecationWarning")], added

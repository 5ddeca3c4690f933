"""The package's shape: layers import only downward, modules and training functions stay small.

Layers, bottom to top (a package may import its own modules and any lower layer, never a
higher or a sibling one):

   -1  errors                          one exception type, used everywhere
    0  runtime                         devices, the process group, atomic files, pretrained weights
    1  config                          typed run configuration
    2  store, data                     the feature-store format; datasets, images, batches
    3  models, losses, balancer        the student; the DSMD losses; the balancer
    4  teachers, evaluation            frozen teachers; retrieval metrics and student scoring
    5  extraction, training            pipelines: fill a store, distil
    6  inference, reports              a trained student as an encoder (export folders, checkpoints);
                                       result tables, plots and measurements of runs and checkpoints
    7  export                          writing export folders (weights, transformers, ONNX)
    8  search, sweeps                  indexes, queries, the web page; many runs, one table
    9  demo, scoring                   whole commands
   10  cli                             the command line
   11  __main__, docs_reference        python -m dsmd; the documentation's pages generated from the
                                       command line's parser and the config schema
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dsmd"
LAYERS = {
    "errors": -1,
    "runtime": 0,
    "config": 1,
    "store": 2,
    "data": 2,
    "models": 3,
    "losses": 3,
    "balancer": 3,
    "teachers": 4,
    "evaluation": 4,
    "extraction": 5,
    "training": 5,
    "reports": 6,
    "inference": 6,
    "export": 7,
    "search": 8,
    "sweeps": 8,
    "demo": 9,
    "scoring": 9,
    "cli": 10,
    "cli_parser": 9,
    "__main__": 11,
    "docs_reference": 11,
}
MAX_MODULE_LINES = 450
MAX_TRAINING_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py"))


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if rel.parts else ""


def _imports(path: Path) -> set[str]:
    """The dsmd packages ``path`` imports (at any depth in the file, lazily or not)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dsmd" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_has_a_layer():
    packages = {_package(p) for p in _modules()} - {"__init__"}
    assert packages <= set(LAYERS), f"give these a layer in LAYERS: {sorted(packages - set(LAYERS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    own = _package(path)
    if own == "__init__":
        return
    wrong = sorted(dep for dep in _imports(path) if dep != own and LAYERS[dep] >= LAYERS[own])
    assert not wrong, (
        f"{path.relative_to(SRC)} (layer {LAYERS[own]}) imports {wrong} (layers {[LAYERS[d] for d in wrong]})"
    )


def test_the_layer_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from dsmd.training import train\nimport dsmd.cli\n")
    assert _imports(bad) == {"training", "cli"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_are_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(SRC)} has {lines} lines (at most {MAX_MODULE_LINES})"


def test_training_functions_are_short():
    long = []
    for path in sorted((SRC / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_TRAINING_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} ({length} lines)")
    assert not long, f"over {MAX_TRAINING_FUNCTION_LINES} lines: {long}"

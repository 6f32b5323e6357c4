"""The house rules: bast's layers import only downward, and Stage 2 workers need no torch.

corpora -> pipeline -> model -> report -> demo -> cli, with the small shared modules
(conventions, errors, fileio) beneath them all. Every import is read from the source,
function-level imports included, so a lazy import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import bast

ROOT = Path(bast.__file__).parent
RANKS = {"__init__": 0, "errors": 0, "fileio": 0.5, "options": 0.5, "conventions": 0.5, "sphere": 0.5,
         "seld_metrics": 0.75,
         "corpora": 1, "pipeline": 2, "model": 3, "report": 4, "demo": 5, "cli": 6}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
            if node.module == "bast":  # from bast import conventions
                out += [(node.lineno, f"bast.{a.name}") for a in node.names]
    return [(line, m) for line, m in out if m.split(".")[0] == "bast" and "." in m]


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        assert _layer(path) in RANKS, f"{path}: a module outside the known layers; add it to RANKS with its rank"


def test_layers_import_only_downward():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        mine = _layer(path)
        for line, module in _imports(path):
            target = module.split(".")[1]
            if target == "__version__":
                continue
            assert target in RANKS, f"{path}:{line} imports unknown bast module {module}"
            if target != mine and RANKS[target] >= RANKS[mine]:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {mine} imports {module}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_no_code_cites_the_internal_spec():
    hits = [f"{p.relative_to(ROOT.parent)}:{i}" for p in ROOT.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bSPEC\b", line)]
    assert not hits, "user-facing code points to docs/, not the internal spec: " + ", ".join(hits)


def test_stage2_and_the_cli_start_without_torch():
    code = ("import sys, bast.pipeline.featurize, bast.pipeline.spatialize, bast.cli; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"imported at start: {out.strip()}"

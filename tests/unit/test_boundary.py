"""Production code never imports the lab (issue 12: the product package vs. the lab).

opsbook.lab (lab hosts, demo, load, port scan) is local tooling; everything else in src/opsbook runs against real
hosts. Two checks: the source (ast: no import of opsbook.lab outside it, but for the two lazy imports named below),
and the interpreter (importing every production module, and parsing a production verb, loads no opsbook.lab module).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "opsbook"

# The only places production code may name the lab, inside a function (never at import time), and why:
LAZY = {
    "opsbook.cli": "registers `opsbook lab` and `opsbook demo` when one of them is the verb",
    "opsbook.commands.drill": "boots a lab host to drill when the inventory has no `drill` group",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_lab(name: str) -> bool:
    return name == "opsbook.lab" or name.startswith("opsbook.lab.")


def lab_imports(source: str, module: str) -> list[tuple[int, str, bool]]:
    """(line, imported name, at module level?) for every import of an opsbook.lab module in SOURCE (the text of
    MODULE). Imports under `if TYPE_CHECKING:` are for the type checker only and never run: not counted."""
    tree = ast.parse(source)
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    package = module.rsplit(".", 1)[0] if "." in module else module
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import lab / from .lab import x
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if is_lab(name):
                found.append((node.lineno, name, id(node) not in in_function))
                break
    return found


def production_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if not is_lab(module_name(p))}


def test_production_source_imports_no_lab_module() -> None:
    offenders = []
    for module, path in production_modules().items():
        for line, name, top in lab_imports(path.read_text(), module):
            if top or module not in LAZY:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}"
                                 f"{' at import time' if top else ''}")
    assert offenders == [], "production code imports the lab:\n" + "\n".join(offenders)


def test_the_check_finds_every_form_of_import() -> None:
    """What someone might add: each is found (the test above would fail for it)."""
    forms = ["from opsbook import lab", "import opsbook.lab", "import opsbook.lab.hosts as h",
             "from opsbook.lab import load", "from opsbook.lab.demo import run", "from . import lab",
             "from .lab import portscan"]
    for form in forms:
        assert [top for _, _, top in lab_imports(form + "\n", "opsbook.runner")] == [True], form
    lazy = "def f():\n    from opsbook import lab\n    return lab\n"
    assert lab_imports(lazy, "opsbook.runner") == [(2, "opsbook.lab", False)]
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from opsbook import lab\n"
    assert lab_imports(typing_only, "opsbook.runner") == []
    assert lab_imports("from opsbook import paths, runner\nimport opsbook.labels\n", "opsbook.runner") == []


def test_production_modules_load_no_lab_module() -> None:
    """Import each production module in turn (and parse a production verb): opsbook.lab stays out of sys.modules."""
    script = f"""
import importlib, json, sys
loaded = {{}}
def lab_loaded():
    return sorted(m for m in sys.modules if m == "opsbook.lab" or m.startswith("opsbook.lab."))
for name in {sorted(production_modules())!r}:
    importlib.import_module(name)
    loaded[name] = lab_loaded()
from opsbook import cli
for verb in (["provision", "-q"], ["deploy", "1.0.0", "-q"], ["status", "-q"], ["drill", "-q"]):
    cli.build_parser(verb).parse_args(verb)
    loaded[" ".join(verb)] = lab_loaded()
cli.build_parser(["lab", "status"]).parse_args(["lab", "status"])
loaded["lab status"] = lab_loaded()
print(json.dumps(loaded))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = json.loads(res.stdout)
    assert loaded.pop("lab status"), "`opsbook lab` should load the lab (else this test proves nothing)"
    assert {name: mods for name, mods in loaded.items() if mods} == {}

"""Generate docs/variables.md from every role's meta/argument_specs.yml (so the reference never drifts).

    python -m opsbook.docgen          rewrite docs/variables.md
    python -m opsbook.docgen --check  exit 1 if it is stale
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from opsbook import paths

HEADER = (
    "# Variables reference\n\n"
    "Generated from each role's `meta/argument_specs.yml` by `python -m opsbook.docgen`; do not edit by hand.\n"
    "The tests fail when this file is stale.\n"
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`{text}`" if text else ""


def _description(opt: dict[str, Any]) -> str:
    desc = opt.get("description", "")
    if isinstance(desc, list):
        desc = " ".join(str(d) for d in desc)
    out = " ".join(str(desc).split()).replace("|", "\\|")
    if opt.get("choices"):
        out += " Choices: " + ", ".join(f"`{c}`" for c in opt["choices"]) + "."
    return out


def _type(opt: dict[str, Any]) -> str:
    t = str(opt.get("type", "str"))
    if opt.get("elements"):
        t += f" of {opt['elements']}"
    return t


def render(root: Path) -> str:
    parts = [HEADER]
    for spec_file in sorted((root / "roles").glob("*/meta/argument_specs.yml")):
        role = spec_file.parent.parent.name
        spec = (yaml.safe_load(spec_file.read_text()) or {}).get("argument_specs", {}).get("main", {})
        parts.append(f"\n## {role}\n")
        short = spec.get("short_description")
        if short:
            parts.append(f"\n{' '.join(str(short).split())}\n")
        options: dict[str, Any] = spec.get("options") or {}
        if not options:
            parts.append("\nNo variables.\n")
            continue
        parts.append("\n| variable | type | default | description |\n|---|---|---|---|\n")
        for name in sorted(options):
            opt = options[name] or {}
            default = "(required)" if opt.get("required") else _cell(opt.get("default"))
            parts.append(f"| `{name}` | {_type(opt)} | {default} | {_description(opt)} |\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = paths.project_root()
    target = root / "docs" / "variables.md"
    text = render(root)
    if "--check" in args:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is stale: run python -m opsbook.docgen", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

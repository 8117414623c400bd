"""The prose docs name what the code has (issue 12, "docs say what the code does"): the README's role table lists
exactly the roles in roles/, and every variable the README, docs/ or a role's README names in backticks with a
role's prefix is one that exists: in a role's argument specs or defaults, or read by a playbook. A renamed or
removed variable that a page still tells operators to set fails here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(d.name for d in (ROOT / "roles").iterdir() if (d / "tasks").is_dir())
# pages that document data, not variables: result fields (docs/results.md); the generated reference is checked
# against the specs by test_docs.py
NOT_VARIABLES = {"results.md", "variables.md"}


def known_variables() -> set[str]:
    known: set[str] = set()
    for role in ROLES:
        spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
        for entry in spec["argument_specs"].values():
            known |= set(entry.get("options") or {})
        defaults = ROOT / "roles" / role / "defaults" / "main.yml"
        if defaults.exists():
            known |= set(yaml.safe_load(defaults.read_text()) or {})
    # what the playbooks read beside the roles' variables (status_*, app_serial, ...), and the inventories' groups
    for text in [p.read_text() for p in (ROOT / "playbooks").glob("*.yml")]:
        known |= set(re.findall(r"\b[a-z][a-z0-9_]*\b", text))
    return known


def pages() -> list[Path]:
    docs = [p for p in (ROOT / "docs").rglob("*.md") if p.name not in NOT_VARIABLES]
    return [ROOT / "README.md", *sorted(docs), *sorted(ROOT.glob("roles/*/README.md")),
            *sorted(ROOT.glob("inventories/*/README.md"))]


def test_the_readme_role_table_lists_every_role_and_no_other() -> None:
    table = re.findall(r"^\| `([a-z0-9_]+)` \|", (ROOT / "README.md").read_text(), re.M)
    assert sorted(table) == ROLES


def test_every_variable_the_docs_name_exists() -> None:
    prefixes = (*(f"{role}_" for role in ROLES), "status_")
    known = known_variables()
    unknown = {}
    for page in pages():
        for name in re.findall(r"`([a-z][a-z0-9_]*)`", page.read_text()):
            # a role's published values (<role>__firewall_rules ...) are checked by test_role_contracts.py; a bare
            # prefix ("`status_`") names a family
            if name.startswith(prefixes) and "__" not in name and not name.endswith("_") and name not in known:
                unknown.setdefault(str(page.relative_to(ROOT)), set()).add(name)
    assert unknown == {}, f"variables named in the docs that no role or playbook has: {unknown}"

from __future__ import annotations

from opsbook import docgen, paths


def test_variables_reference_is_current() -> None:
    root = paths.project_root()
    current = (root / "docs" / "variables.md").read_text()
    assert current == docgen.render(root), "docs/variables.md is stale: run python -m opsbook.docgen"


def test_every_role_is_in_the_reference() -> None:
    """Every role (a directory with tasks/) has argument specs, and the reference has a section for it.

    Walks the roles, not the specs docgen reads: a role without meta/argument_specs.yml fails here."""
    root = paths.project_root()
    text = docgen.render(root)
    roles = sorted(d for d in (root / "roles").iterdir() if (d / "tasks").is_dir())
    assert len(roles) >= 10, roles
    missing = [d.name for d in roles if not (d / "meta" / "argument_specs.yml").is_file()]
    assert missing == [], f"roles without meta/argument_specs.yml: {missing}"
    absent = [d.name for d in roles if f"## {d.name}\n" not in text]
    assert absent == [], f"roles missing from docs/variables.md: {absent}"

"""Helpers shared by unit tests that render role templates with Ansible's own templar."""

from __future__ import annotations

from typing import Any


def trusted(value: Any) -> Any:
    """VALUE with every string marked trusted as a template (role defaults read from YAML files are not, in 2.19)."""
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [trusted(v) for v in value]
    return value

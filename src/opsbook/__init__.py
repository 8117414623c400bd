"""opsbook: ops runbook automation on Ansible."""

__version__ = "0.1.0"

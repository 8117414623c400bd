from __future__ import annotations

from pathlib import Path

import pytest

from opsbook import lab, paths
from opsbook.lab import hosts


def test_lab_inventory_hosts_are_in_the_subnet() -> None:
    hosts = lab.inventory_hosts(paths.project_root() / "inventories" / "lab")
    names = {h.name for h in hosts}
    assert {"web1", "client1"} <= names
    assert len({h.ip for h in hosts}) == len(hosts)
    web1 = next(h for h in hosts if h.name == "web1")
    assert "web" in web1.groups


def test_address_outside_the_subnet_is_refused(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    x:\n      ansible_host: 192.168.1.5\n")
    with pytest.raises(lab.LabError, match="outside the lab subnet"):
        lab.inventory_hosts(inv)


def test_missing_address_is_refused(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children:\n    web:\n      hosts:\n        x: {}\n")
    with pytest.raises(lab.LabError, match="no ansible_host"):
        lab.inventory_hosts(inv)


def test_adhoc_addresses_skip_taken_ones() -> None:
    assert lab.allocate_ip(set()) == "10.213.0.100"
    assert lab.allocate_ip({"10.213.0.100", "10.213.0.101"}) == "10.213.0.102"
    with pytest.raises(lab.LabError):
        lab.allocate_ip({f"10.213.0.{i}" for i in lab.ADHOC_RANGE})


def test_veth_names_fit_the_kernel_limit() -> None:
    assert len(hosts._veth_name("10.213.0.199")) <= 15

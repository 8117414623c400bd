"""The alert rules opsbook ships (roles/monitoring/files/opsbook.rules.yml) and the configs the monitoring role
generates, checked with Prometheus's own tools (promtool, amtool: Debian's, unpacked by scripts/bootstrap.sh).

- every rule parses and every `promtool test rules` case passes: each alert fires on a bad series and stays quiet on
  the good series beside it (tests/unit/promtool/);
- the cases bite: an alert whose expression can never fire fails them;
- every alert names a severity and a runbook page that exists;
- prometheus.yml, alertmanager.yml and blackbox.yml rendered for an inventory pass promtool/amtool, with one node
  target per host of the watched groups and one probe per web server name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RULES = ROOT / "roles" / "monitoring" / "files" / "opsbook.rules.yml"
CASES = ROOT / "tests" / "unit" / "promtool" / "opsbook.rules.test.yml"


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}:{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} not found: scripts/bootstrap.sh unpacks it into .venv/bin")
    return found


def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def promtool_test(cases: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), "test", "rules", cases.name], cwd=cases.parent,
                          capture_output=True, text=True, timeout=120)


def test_rules_parse() -> None:
    res = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_case_passes() -> None:
    res = promtool_test(CASES)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_case_that_fires_it() -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    fired = {t["alertname"] for c in cases for t in c.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert fired == {a["alert"] for a in alerts()}


@pytest.mark.parametrize("name", [a["alert"] for a in alerts()])
def test_the_cases_fail_when_the_alert_cannot_fire(name: str, tmp_path: Path) -> None:
    """Mutation: the alert's expression replaced by one that never returns a series; the cases must fail."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                rule["expr"] = "vector(1) == 0"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    cases = yaml.safe_load(CASES.read_text())
    cases["rule_files"] = ["rules.yml"]
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(cases))
    res = promtool_test(tmp_path / "cases.yml")
    assert res.returncode != 0, f"the cases still pass with {name} never firing:\n{res.stdout}{res.stderr}"
    assert name in res.stdout + res.stderr


@pytest.mark.parametrize("name", [a["alert"] for a in alerts()])
def test_every_alert_has_a_severity_and_a_runbook_page(name: str) -> None:
    rule = next(a for a in alerts() if a["alert"] == name)
    assert rule["labels"]["severity"] in {"none", "warning", "critical"}
    page = rule["annotations"]["runbook_url"]
    assert re.fullmatch(r"docs/runbooks/alerts/[a-z0-9-]+\.md", page), page
    assert (ROOT / page).is_file(), f"{name}: runbook {page} missing"


# ------------------------------------------------------------------ the generated configs

PLAY = """
- name: Render the monitoring role's configs for mon1, as the role would write them
  hosts: mon1
  gather_facts: false
  vars_files:
    - {root}/roles/node_exporter/defaults/main.yml
    - {root}/roles/monitoring/defaults/main.yml
    - {root}/roles/monitoring/vars/main.yml
  tasks:
    - name: Write them
      ansible.builtin.copy:
        content: "{{{{ item.value | to_nice_yaml(indent=2) }}}}"
        dest: "{out}/{{{{ item.key }}}}.yml"
        mode: "0600"
      loop: "{{{{ {{'prometheus': __monitoring_prometheus_config, 'alertmanager': __monitoring_alertmanager_config,
                   'blackbox': __monitoring_blackbox_config}} | dict2items }}}}"
      loop_control:
        label: "{{{{ item.key }}}}"
"""


def render(tmp_path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                         "children": {
                             "web": {"hosts": {"web1": {"ansible_host": "10.0.0.11",
                                                        "nginx_server_names": ["shop.example.com",
                                                                               "www.shop.example.com"]},
                                               "web2": {"ansible_host": "10.0.0.12",
                                                        "nginx_server_names": ["shop.example.com"]}}},
                             "db": {"hosts": {"db1": {"ansible_host": "10.0.0.21"}}},
                             "monitoring": {"hosts": {"mon1": {"ansible_host": "10.0.0.51"}}},
                             "lab_clients": {"hosts": {"client1": {"ansible_host": "10.0.0.41"}}}}}}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(PLAY.format(root=ROOT, out=tmp_path))
    (tmp_path / "extra.json").write_text(json.dumps(extra))  # extra vars: above the play's vars_files
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{BIN}:{os.environ['PATH']}")
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
                          "-e", f"@{tmp_path / 'extra.json'}", str(tmp_path / "play.yml")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {k: yaml.safe_load((tmp_path / f"{k}.yml").read_text()) for k in ("prometheus", "alertmanager", "blackbox")}


def test_generated_configs_check_and_target_the_inventory(tmp_path: Path) -> None:
    extra = {"monitoring_alert_webhooks": ["https://hooks.example.com/T0/abc"],
             "monitoring_watchdog_url": "https://hc-ping.com/uuid"}
    configs = render(tmp_path, extra)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shutil.copy(RULES, rules_dir / "opsbook.yml")
    configs["prometheus"]["rule_files"] = [str(rules_dir / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(configs["prometheus"]))
    check = subprocess.run([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 12 rules found" in check.stdout
    am = subprocess.run([tool("amtool"), "check-config", str(tmp_path / "alertmanager.yml")],
                        capture_output=True, text=True, timeout=60)
    assert am.returncode == 0, am.stdout + am.stderr

    jobs = {j["job_name"]: j for j in configs["prometheus"]["scrape_configs"]}
    nodes = {(sc["labels"]["instance"], sc["targets"][0]) for sc in jobs["node"]["static_configs"]}
    # every watched host by inventory name, at its address; not the lab's clients
    assert nodes == {("web1", "10.0.0.11:9100"), ("web2", "10.0.0.12:9100"), ("db1", "10.0.0.21:9100"),
                     ("mon1", "10.0.0.51:9100")}
    assert jobs["site"]["static_configs"][0]["targets"] == ["https://shop.example.com/healthz",
                                                            "https://www.shop.example.com/healthz"]
    receivers = {r["name"]: r for r in configs["alertmanager"]["receivers"]}
    hooks = receivers["opsbook"]["webhook_configs"]
    assert hooks == [{"url": "https://hooks.example.com/T0/abc", "send_resolved": True}]
    assert receivers["watchdog"]["webhook_configs"][0]["url"] == "https://hc-ping.com/uuid"
    assert configs["alertmanager"]["route"]["routes"][0]["receiver"] == "watchdog"


def test_yaml_in_a_value_stays_a_value(tmp_path: Path) -> None:
    """A URL holding YAML syntax (quotes, colons, a newline, a flow mapping) reaches prometheus.yml as one string:
    the configs are dumped from data (to_nice_yaml), never pasted into YAML text."""
    url = "https://example.com/a?b='c'&d=\"e\"#x: {job_name: evil}\n- job_name: injected"
    configs = render(tmp_path, {"monitoring_alert_webhooks": ["https://hooks.example.com/x"],
                                "monitoring_sites": [url]})
    jobs = {j["job_name"]: j for j in configs["prometheus"]["scrape_configs"]}
    assert set(jobs) == {"prometheus", "node", "site"}
    assert jobs["site"]["static_configs"][0]["targets"] == [url]

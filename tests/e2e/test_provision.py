"""End to end: `opsbook provision` on a fresh lab host, then what a hardened host must show from outside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import opsbook.portscan
from tests.e2e.conftest import LabEnv, last_report, outcome

PORTSCAN = Path(opsbook.portscan.__file__)


@pytest.fixture(scope="module")
def provisioned(web_lab: LabEnv) -> LabEnv:
    res = web_lab.opsbook("provision")
    assert res.returncode == 0, f"first provision failed:\n{outcome(res)}"
    report = last_report("provision")
    assert report["hosts"]["e2e-web"]["changed"] > 0  # type: ignore[index]
    return web_lab


def changed(report: dict[str, object]) -> dict[str, int]:
    return {h: t["changed"] for h, t in report["hosts"].items()}  # type: ignore[attr-defined]


def test_second_run_changes_nothing(provisioned: LabEnv) -> None:
    res = provisioned.opsbook("provision")
    assert res.returncode == 0, res.stderr
    assert changed(last_report("provision")) == {"e2e-web": 0}


def test_check_mode_on_a_converged_host_changes_nothing(provisioned: LabEnv) -> None:
    res = provisioned.opsbook("provision", "--check")
    assert res.returncode == 0, res.stderr
    report = last_report("provision")
    assert report["check"] is True
    assert changed(report) == {"e2e-web": 0}


def test_only_ssh_answers_from_a_second_host(provisioned: LabEnv) -> None:
    # something listening on a high port that the firewall must hide
    provisioned.ssh("e2e-web", "systemd-run --unit=e2e-listener --collect python3 -m http.server 8080 "
                    "|| systemctl is-active e2e-listener")
    provisioned.ssh("e2e-web", "for i in $(seq 50); do python3 -c \"import socket;"
                    "socket.create_connection(('127.0.0.1',8080),1)\" 2>/dev/null && exit 0; sleep 0.2; done; exit 1")
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", provisioned.hosts["e2e-client"].netns, sys.executable, str(PORTSCAN),
             provisioned.ip("e2e-web"), "1-1024,3000,5432,8000,8080,8443,9090"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout
    finally:
        provisioned.ssh("e2e-web", "systemctl stop e2e-listener", check=False)
    # a web host: SSH, and nginx on 80/443 (opened through firewall_rules__nginx); nothing else
    assert json.loads(out) == [22, 80, 443]


def test_web_host_serves_https_with_a_certificate_from_the_acme_server(provisioned: LabEnv) -> None:
    import socket
    import ssl
    import urllib.request

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = "e2e-web.opsbook.test"
    ip = provisioned.ip("e2e-web")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the issuer is checked below; Pebble's root changes at every restart
    with socket.create_connection((ip, 443), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert "Pebble" in str(issuer), f"not issued by the lab's ACME server: {issuer}"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == [name]

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    req = urllib.request.Request(f"http://{ip}/some/path?q=1", headers={"Host": name})
    try:
        urllib.request.build_opener(NoRedirect).open(req, timeout=10)
        raise AssertionError("http did not redirect")
    except urllib.error.HTTPError as e:
        assert e.code == 308
        assert e.headers["Location"] == f"https://{name}/some/path?q=1"


def test_bad_input_stops_before_any_change(provisioned: LabEnv) -> None:
    before = provisioned.ssh("e2e-web", "sha256sum /etc/nftables.conf /etc/ssh/sshd_config").stdout
    # a valid change that would be applied if the run got that far, beside a wrongly shaped variable
    res = provisioned.opsbook("provision", "-e", "firewall_allowed_tcp_ports='8080,9090'")
    assert res.returncode == 2
    output = res.stdout + res.stderr
    assert "firewall_allowed_tcp_ports" in output
    report = last_report("provision")
    assert changed(report) == {"e2e-web": 0}
    assert all("preflight" in f["task"].lower() or "variables" in f["task"].lower()  # type: ignore[index]
               for f in report["failures"])  # type: ignore[attr-defined]
    res = provisioned.opsbook("provision", "-e", "fail2ban_maxretry=lots")
    assert res.returncode == 2
    assert "fail2ban_maxretry" in res.stdout + res.stderr
    assert changed(last_report("provision")) == {"e2e-web": 0}
    assert provisioned.ssh("e2e-web", "sha256sum /etc/nftables.conf /etc/ssh/sshd_config").stdout == before

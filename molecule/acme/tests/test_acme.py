"""Verify the acme role (with the nginx role) against the lab's Pebble: the served chain verifies against Pebble's
root, sslyze finds the site compliant with Mozilla "intermediate", certbot.timer renews the 2-minute certificates
on its own under a wrk load with a reload (never a restart), and an unreachable ACME server leaves the unit failed
and the old certificate served."""

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
import testinfra
from cryptography import x509

testinfra_hosts = ["ansible://mol-acme"]

NAME = "mol-acme-site.opsbook.test"  # registered in the mock DNS by prepare.yml
PEBBLE = "10.213.0.1"
LAB_CA = "/var/lib/opsbook/lab/pebble/ca.pem"
HOOK = "/etc/letsencrypt/renewal-hooks/deploy/50-opsbook-reload-nginx"
# ACME server "down" for this host only: its connections to Pebble's directory port are refused by routing
BLOCK_ACME = f"ip rule add to {PEBBLE}/32 ipproto 6 dport 14000 prohibit priority 100"
UNBLOCK_ACME = f"ip rule del to {PEBBLE}/32 ipproto 6 dport 14000 prohibit priority 100"


def wait_for(predicate, timeout, interval=1.0):
    """Poll predicate until it returns something true or timeout seconds have passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="module")
def ip(host):
    return host.ansible.get_variables()["ansible_host"]


@pytest.fixture(scope="module")
def client():
    return testinfra.get_host("ansible://mol-web-client", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="module")
def pebble_root(tmp_path_factory):
    """Pebble's current issuing root (it changes at every Pebble start), fetched over its management API."""
    conn = http.client.HTTPSConnection(PEBBLE, 15000, timeout=10, context=ssl.create_default_context(cafile=LAB_CA))
    try:
        conn.request("GET", "/roots/0")
        pem = conn.getresponse().read()
    finally:
        conn.close()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----"), pem[:300]
    path = tmp_path_factory.mktemp("pebble") / "root.pem"
    path.write_bytes(pem)
    return path


def served_certificate(ip, sni=NAME):
    """The leaf certificate the site serves (not verified here)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ip, 443), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=sni) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True))


def served_serial(ip):
    try:
        return served_certificate(ip).serial_number
    except OSError:
        return None


def master_pid(host):
    return int(host.check_output("cat /run/nginx.pid"))


def worker_pids(host):
    return sorted(host.check_output("ps -o pid= --ppid $(cat /run/nginx.pid)").split())


def certbot_run(host):
    """The last run of certbot.service: invocation id, state, result."""
    out = host.check_output("systemctl show certbot.service -p InvocationID -p ActiveState -p Result")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def next_finished_run(host, after_id, timeout=150):
    """Wait for a certbot.service run other than after_id to have finished; return it."""

    def finished():
        run = certbot_run(host)
        return run if run["InvocationID"] not in ("", after_id) and run["ActiveState"] != "activating" else None

    run = wait_for(finished, timeout, interval=2)
    assert run, f"no certbot.service run finished within {timeout} s"
    return run


# --------------------------------------------------------------------------- acceptance 1 and 2


def test_certificate_is_pebbles_and_verifies_against_its_root_and_the_name(ip, pebble_root):
    ctx = ssl.create_default_context(cafile=str(pebble_root))
    with socket.create_connection((ip, 443), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=NAME) as s:
        cert = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == [NAME]
    assert "Pebble" in cert.issuer.rfc4514_string()
    # control: without Pebble's root (only the lab CA that signed Pebble's own listener) the chain does not verify
    with socket.create_connection((ip, 443), timeout=10) as raw, pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context(cafile=LAB_CA).wrap_socket(raw, server_hostname=NAME)


def test_sslyze_finds_mozilla_intermediate_compliance(ip, pebble_root):
    sslyze = shutil.which("sslyze")
    assert sslyze, "sslyze (PyPI, pinned by the project) is not installed"
    res = subprocess.run(
        [sslyze, "--mozilla_config=intermediate", f"--certinfo_ca_file={pebble_root}", f"{NAME}:443{{{ip}}}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-4000:]
    assert f"{NAME}:443: OK - Compliant." in res.stdout, res.stdout[-4000:]
    for legacy in ("TLS 1.0 Cipher Suites", "TLS 1.1 Cipher Suites"):
        section = res.stdout.split(f"* {legacy}:", 1)[1].split("*", 1)[0]
        assert "rejected all cipher suites" in section, section


def test_http_redirects_and_hsts(ip):
    with socket.create_connection((ip, 80), timeout=10) as s:
        s.sendall(f"GET /a?b=c HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 308 "), head
    assert f"Location: https://{NAME}/a?b=c" in head
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ip, 443), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=NAME) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 200 "), head
    assert "Strict-Transport-Security: max-age=63072000" in head


def test_nginx_reads_certbots_live_directory_and_the_timer_is_set(host):
    link = host.file(f"/etc/nginx/tls/{NAME}")
    assert link.is_symlink
    assert link.linked_to == f"/etc/letsencrypt/live/{NAME}"
    # the temporary self-signed certificate of the first run is still there, unused
    assert host.file(f"/etc/nginx/tls/.selfsigned/{NAME}/fullchain.pem").exists
    assert host.service("certbot.timer").is_enabled
    assert host.service("certbot.timer").is_running
    env = host.check_output("systemctl show certbot.service -p Environment")
    assert "REQUESTS_CA_BUNDLE=/etc/letsencrypt/opsbook-acme-ca.pem" in env
    with open(LAB_CA) as fh:
        assert host.file("/etc/letsencrypt/opsbook-acme-ca.pem").content_string.strip() == fh.read().strip()
    assert host.file(HOOK).mode == 0o755
    conf = host.file(f"/etc/letsencrypt/renewal/{NAME}.conf").content_string
    assert "server = https://10.213.0.1:14000/dir" in conf
    assert "authenticator = webroot" in conf


# --------------------------------------------------------------------------- acceptance 3: renewal under load


def test_timer_renews_under_wrk_load_with_a_reload_not_a_restart(host, client, ip):
    pid = master_pid(host)
    workers = worker_pids(host)
    serial = served_serial(ip)
    last_run = certbot_run(host)["InvocationID"]
    # Paced: 2 connections x 4 requests/s stays under the general rate limit (10r/s, burst 20).
    # "Connection: close": every request on a new TLS connection. A reload closes idle keep-alive connections (old
    # workers exit gracefully); HTTP clients retry a request on such a connection, wrk does not and would count a
    # read error per idle connection per reload - and loses its pacing after reconnecting.
    client.run("printf 'function delay()\\n  return 250\\nend\\n' > /tmp/paced.lua")
    wrk = {}

    def load():
        wrk["result"] = client.run(
            f"wrk -t1 -c2 -d75s --timeout 5s -H 'Connection: close' -s /tmp/paced.lua https://{NAME}:443/")

    thread = threading.Thread(target=load)
    thread.start()
    try:
        # certbot.timer (every 30 s here) renews the 2-minute certificate, the deploy hook reloads nginx
        assert wait_for(lambda: served_serial(ip) not in (None, serial), 70, interval=2), "no new certificate served"
    finally:
        thread.join(150)
    out = wrk["result"].stdout
    print(out)  # figures, shown with pytest -s
    assert wrk["result"].rc == 0, out + wrk["result"].stderr
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    assert requests > 200, out
    assert "Non-2xx or 3xx responses" not in out, out
    assert "Socket errors" not in out, out
    assert master_pid(host) == pid  # never restarted
    assert worker_pids(host) != workers  # reloaded
    assert next_finished_run(host, last_run)["Result"] == "success"
    log = host.check_output("journalctl -t opsbook-acme --since '-5min' --no-pager")
    assert f"nginx reloaded for /etc/letsencrypt/live/{NAME}" in log


# --------------------------------------------------------------------------- acceptance 4: ACME server down


def test_acme_down_fails_the_unit_and_keeps_the_old_certificate(host, ip):
    assert host.run(BLOCK_ACME).rc == 0
    try:
        # a run that may have started before the block does not count
        first = next_finished_run(host, certbot_run(host)["InvocationID"])
        failed = next_finished_run(host, first["InvocationID"])
        assert failed["Result"] == "exit-code" and failed["ActiveState"] == "failed", failed
        assert host.run("systemctl is-failed certbot.service").stdout.strip() == "failed"
        pid, workers, serial = master_pid(host), worker_pids(host), served_serial(ip)
        again = next_finished_run(host, failed["InvocationID"])
        assert again["Result"] == "exit-code", again
        assert served_serial(ip) == serial  # the old certificate keeps serving
        assert worker_pids(host) == workers  # nginx not reloaded
        assert master_pid(host) == pid
        assert "Failed with result 'exit-code'" in host.check_output(
            "journalctl -u certbot.service --since '-3min' --no-pager")
    finally:
        host.run(UNBLOCK_ACME)
    # back up: the next run renews again
    serial = served_serial(ip)
    assert next_finished_run(host, certbot_run(host)["InvocationID"])["Result"] in ("success", "exit-code")
    assert wait_for(lambda: served_serial(ip) not in (None, serial), 90, interval=2)
    assert wait_for(lambda: certbot_run(host)["Result"] == "success", 60, interval=2)


# --------------------------------------------------------------------------- the hook's own guard


def test_deploy_hook_never_reloads_a_config_that_fails_nginx_t(host):
    host.run("systemctl stop certbot.timer")  # no renewal (and hook run) meanwhile
    host.run("echo 'this is not nginx;' > /etc/nginx/conf.d/zz-broken-by-hand.conf")
    try:
        workers = worker_pids(host)
        res = host.run(f"RENEWED_LINEAGE=/etc/letsencrypt/live/{NAME} {HOOK}")
        assert res.rc == 1
        assert "nginx NOT reloaded" in res.stderr
        assert worker_pids(host) == workers
    finally:
        host.run("rm -f /etc/nginx/conf.d/zz-broken-by-hand.conf")
        host.run("systemctl start certbot.timer")
    workers = worker_pids(host)
    res = host.run(f"RENEWED_LINEAGE=/etc/letsencrypt/live/{NAME} {HOOK}")
    assert res.rc == 0, res.stderr
    assert wait_for(lambda: worker_pids(host) != workers, 15)  # control: a good config is reloaded


# --------------------------------------------------------------------------- the expiry, per name, for monitoring

METRICS = "/var/lib/prometheus/node-exporter/opsbook_acme.prom"  # converge.yml: acme_metrics_file
SERIES = re.compile(r'^opsbook_certificate_expiry_timestamp_seconds\{lineage="([^"]+)",name="([^"]+)"\} (\d+)$', re.M)


def published(host):
    """{(lineage, name): expiry} from the acme role's textfile."""
    return {(m[1], m[2]): int(m[3]) for m in SERIES.finditer(host.file(METRICS).content_string)}


def live_expiry(host):
    out = host.check_output(f"date -u -d \"$(openssl x509 -noout -enddate -in /etc/letsencrypt/live/{NAME}/cert.pem"
                            " | cut -d= -f2-)\" +%s")
    return int(out)


def test_the_expiry_of_each_name_is_published_and_follows_every_renewal(host):
    assert host.file(METRICS).mode == 0o644  # the node exporter reads it as its own user
    first = published(host)
    assert set(first) == {(NAME, NAME)}, host.file(METRICS).content_string
    # certbot.timer renews the 2-minute certificate every 30 s here; the deploy hook rewrites the file each time
    later = wait_for(lambda: (p := published(host)) and p.get((NAME, NAME), 0) > first[(NAME, NAME)], 90, interval=2)
    assert later, f"the published expiry stayed at {first} for 90 s of renewals"
    # and it is the certificate certbot keeps (renewals go on: until both read the same one)
    assert wait_for(lambda: published(host).get((NAME, NAME)) == live_expiry(host), 30, interval=1), (
        published(host), live_expiry(host))


# --------------------------------------------------------------------------- certbot runs only when needed


def ansible_converge(extra_vars, timeout=600):
    """Run the scenario's converge.yml; returns (returncode, stdout and stderr together)."""
    scenario = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.dirname(os.path.dirname(__file__)))
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(scenario, "converge.yml"),
            "-e", json.dumps(extra_vars)]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                         check=False, env=env)
    return res.returncode, res.stdout


def served_names(ip):
    cert = served_certificate(ip)
    return sorted(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName))


def mock_dns(name, address):
    """Exactly one A record for name in the lab's mock DNS (pebble-challtestsrv's management API)."""
    for path, body in (("clear-a", {"host": f"{name}."}), ("add-a", {"host": f"{name}.", "addresses": [address]})):
        conn = http.client.HTTPConnection(PEBBLE, 8055, timeout=10)
        try:
            conn.request("POST", f"/{path}", body=json.dumps(body))
            assert conn.getresponse().status == 200
        finally:
            conn.close()


def test_a_changed_name_set_gets_a_new_certificate(host, ip):
    www = "mol-acme-www.opsbook.test"
    mock_dns(www, ip)
    names = {"nginx_server_names": [NAME, www], "acme_domains": [NAME, www]}
    try:
        rc, out = ansible_converge(names)
        assert rc == 0, out[-4000:]
        assert f"names changed: {NAME} -> {NAME} {www}" in out
        assert served_names(ip) == sorted([NAME, www])
    finally:
        rc, out = ansible_converge({})
        assert rc == 0, out[-4000:]
    assert f"names changed: {NAME} {www} -> {NAME}" in out
    assert served_names(ip) == [NAME]

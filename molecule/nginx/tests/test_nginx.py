"""Verify the nginx role by its behaviour: seen from the controller, from a second lab host (mol-web-client), and
through Ansible runs that pass broken settings or switch the upstream the way deploys do."""

import hashlib
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

testinfra_hosts = ["ansible://mol-nginx"]

NAME = "mol-nginx.opsbook.test"
CONTROLLER_IP = "10.213.0.1"
GREEN = "unix:/run/testapp-green/app.sock"
SCENARIO_DIR = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.dirname(os.path.dirname(__file__)))
MOZILLA_TLS12_CIPHERS = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
}


def wait_for(predicate, timeout, interval=0.5):
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
def client_ip(client):
    return client.ansible.get_variables()["ansible_host"]


# --------------------------------------------------------------------------- HTTP from the controller


def fetch(ip, path, scheme="https", method="GET", data=None, headers=None, timeout=10):
    """One request for the site's name (SNI and Host) sent to the host's address; returns (status, headers, body)."""
    port = 443 if scheme == "https" else 80
    raw = socket.create_connection((ip, port), timeout=timeout)
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the temporary self-signed certificate (the acme scenario checks the real one)
        conn = http.client.HTTPSConnection(NAME, port, timeout=timeout, context=ctx)
        conn.sock = ctx.wrap_socket(raw, server_hostname=NAME)
    else:
        conn = http.client.HTTPConnection(NAME, port, timeout=timeout)
        conn.sock = raw
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_http_answers_308_to_https_keeping_the_path(ip):
    status, headers, _ = fetch(ip, "/some/page?x=1", scheme="http")
    assert status == 308
    assert headers["location"] == f"https://{NAME}/some/page?x=1"
    status, headers, _ = fetch(ip, "/", scheme="http", method="POST", data=b"a=1")
    assert status == 308  # 308 keeps the method and body, unlike 301


def test_acme_challenges_are_served_over_plain_http(host, ip):
    token = f"probe-{os.getpid()}"
    path = f"/var/www/acme/.well-known/acme-challenge/{token}"
    host.run(f"echo {token}-content > {path}")
    try:
        status, headers, body = fetch(ip, f"/.well-known/acme-challenge/{token}", scheme="http")
        assert status == 200, headers
        assert body.decode().strip() == f"{token}-content"
        assert fetch(ip, "/.well-known/acme-challenge/missing", scheme="http")[0] == 404
    finally:
        host.run(f"rm -f {path}")


def test_https_proxies_to_the_upstream_with_security_headers(ip):
    status, headers, body = fetch(ip, "/")
    assert status == 200
    assert body.decode().startswith("blue /")
    assert headers["strict-transport-security"] == "max-age=63072000"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert headers["content-security-policy"] == "default-src 'self'"
    assert headers["server"] == "nginx"  # no version
    # headers also on errors (always)
    status, headers, _ = fetch(ip, "/no-such-page")
    assert status == 404
    assert headers["strict-transport-security"] == "max-age=63072000"


def test_unknown_names_get_no_answer(ip):
    with socket.create_connection((ip, 80), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
        assert s.recv(100) == b""  # 444: connection closed without a response
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ip, 443), timeout=10) as raw, pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname="other.example")
    # control: the same handshake with the site's name works
    with socket.create_connection((ip, 443), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=NAME) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_gzip_and_static_cache_headers(ip):
    status, headers, body = fetch(ip, "/static/app.css", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert headers["cache-control"] == "max-age=604800"
    assert "expires" in headers
    assert headers["strict-transport-security"] == "max-age=63072000"  # the static location keeps the headers
    assert len(body) < 4500 / 4  # compressed
    status, headers, _ = fetch(ip, "/big", headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("content-encoding") == "gzip"  # proxied responses too
    status, headers, _ = fetch(ip, "/static/app.css")
    assert "content-encoding" not in headers


def test_request_body_limit(ip):
    assert fetch(ip, "/", method="POST", data=b"x" * 100_000)[0] == 200
    assert fetch(ip, "/", method="POST", data=b"x" * 2_000_000)[0] == 413  # converge sets 1m


# --------------------------------------------------------------------------- TLS


def tls_handshake(ip, port, version, sni=NAME):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1 (OpenSSL 3 refuses them by default)
    with socket.create_connection((ip, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=sni) as tls:
        return tls.version(), tls.cipher()[0], tls.session


@pytest.fixture(scope="module")
def legacy_tls_server(tmp_path_factory):
    """A local TLS server that accepts TLS 1.0 to 1.3 with session tickets: proves the client side can do them."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=control",
                    "-keyout", d / "key.pem", "-out", d / "cert.pem"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(5)
    srv.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(ip, legacy_tls_server, version):
    assert tls_handshake("127.0.0.1", legacy_tls_server, version)[0] is not None  # control: the client can
    with pytest.raises(ssl.SSLError):
        tls_handshake(ip, 443, version)


def test_tls_1_2_uses_mozilla_ciphers_and_no_session_tickets(ip, legacy_tls_server):
    _, _, control_session = tls_handshake("127.0.0.1", legacy_tls_server, ssl.TLSVersion.TLSv1_2)
    assert control_session.has_ticket  # control: a server with tickets is seen as such
    version, cipher, session = tls_handshake(ip, 443, ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"
    assert cipher in MOZILLA_TLS12_CIPHERS
    assert not session.has_ticket
    assert tls_handshake(ip, 443, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"


def test_sslyze_mozilla_intermediate_all_but_the_self_signed_trust(ip, tmp_path):
    """sslyze's Mozilla check; the only issue allowed is the temporary self-signed certificate (not trusted).
    The acme scenario runs the same check with the ACME certificate and requires full compliance."""
    sslyze = shutil.which("sslyze")
    assert sslyze, "sslyze (PyPI, pinned by the project) is not installed"
    out = tmp_path / "sslyze.json"
    res = subprocess.run([sslyze, "--mozilla_config=intermediate", f"--json_out={out}", f"{NAME}:443{{{ip}}}"],
                         capture_output=True, text=True, timeout=300, check=False)
    issues = set(re.findall(r"^\s+\* (\w+):", res.stdout, re.MULTILINE))
    assert "Not compliant" in res.stdout or res.returncode == 0, res.stdout[-3000:]
    assert issues <= {"certificate_path_validation"}, res.stdout[-3000:]
    result = json.loads(out.read_text())["server_scan_results"][0]["scan_result"]
    for legacy in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert not result[f"{legacy}_cipher_suites"]["result"]["accepted_cipher_suites"], legacy
    assert result["tls_1_2_cipher_suites"]["result"]["accepted_cipher_suites"]
    assert result["tls_1_3_cipher_suites"]["result"]["accepted_cipher_suites"]


# --------------------------------------------------------------------------- config safety


def config_fingerprint(host):
    """sha256 of every file and link target under /etc/nginx."""
    out = host.check_output(
        "find /etc/nginx \\( -type f -o -type l \\) -printf '%p %l\\n' | sort"
        " | while read -r p l; do echo \"$p $l $(sha256sum < \"$p\" | cut -c1-64)\"; done")
    return hashlib.sha256(out.encode()).hexdigest(), out


def master_pid(host):
    return int(host.check_output("cat /run/nginx.pid"))


def worker_pids(host):
    return sorted(host.check_output("ps -o pid= --ppid $(cat /run/nginx.pid)").split())


class Poller:
    """Requests https://NAME/ every 0.2 s in a thread; counts answers that are not 200."""

    def __init__(self, ip, path="/"):
        self.ip, self.path = ip, path
        self.total, self.bad, self.bodies = 0, [], set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                status, _, body = fetch(self.ip, self.path, timeout=5)
                self.bodies.add(body.decode().split()[0])
                if status != 200:
                    self.bad.append(status)
            except OSError as exc:
                self.bad.append(repr(exc))
            self.total += 1
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)


def ansible_playbook(playbook, extra_vars, timeout=600):
    """Run a scenario playbook on mol-nginx; returns (returncode, stdout and stderr together)."""
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(SCENARIO_DIR, playbook),
            "--limit", "mol-nginx", "-e", json.dumps(extra_vars)]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                         check=False, env=env)
    return res.returncode, res.stdout


@pytest.mark.parametrize(
    ("playbook", "extra_vars"),
    [
        ("converge.yml", {"nginx_client_max_body_size": "1 lots"}),
        ("switch_upstream.yml", {"nginx_upstream_servers": ["127.0.0.1:notaport"]}),
    ],
    ids=["body-size", "upstream"],
)
def test_broken_setting_fails_at_validation_and_the_site_stays_up(host, ip, playbook, extra_vars):
    before, listing = config_fingerprint(host)
    pid = master_pid(host)
    with Poller(ip) as poller:
        rc, out = ansible_playbook(playbook, extra_vars)
    assert rc != 0, out[-3000:]
    assert "failed to validate" in out, out[-3000:]
    assert "[emerg]" in out and "test failed" in out  # nginx -t said why
    assert poller.total >= 3 and not poller.bad, poller.bad
    assert config_fingerprint(host)[0] == before, listing  # nothing of the candidate reached the disk
    assert host.run("nginx -t").rc == 0
    assert master_pid(host) == pid
    assert fetch(ip, "/")[0] == 200


def test_no_reload_of_a_config_that_fails_nginx_t(host, ip):
    """A broken file dropped by hand: every role task is then refused (staged test), and no reload happens."""
    host.run("echo 'this is not nginx;' > /etc/nginx/conf.d/zz-broken-by-hand.conf")
    try:
        workers = worker_pids(host)
        servers = ["127.0.0.1:8001", "127.0.0.1:8009"]
        rc, out = ansible_playbook("switch_upstream.yml", {"nginx_upstream_servers": servers})
        assert rc != 0, out[-3000:]
        assert "failed to validate" in out, out[-3000:]
        assert "zz-broken-by-hand.conf" in out  # nginx -t names the culprit
        assert worker_pids(host) == workers  # not reloaded
        assert fetch(ip, "/")[0] == 200
    finally:
        host.run("rm -f /etc/nginx/conf.d/zz-broken-by-hand.conf")
    assert host.run("nginx -t").rc == 0


def test_deploy_switches_the_upstream_with_a_reload_and_no_failed_request(host, ip):
    pid = master_pid(host)
    try:
        with Poller(ip) as poller:
            rc, out = ansible_playbook("switch_upstream.yml", {"nginx_upstream_servers": [GREEN]})
            assert rc == 0, out[-3000:]
            assert wait_for(lambda: fetch(ip, "/")[2].decode().startswith("green"), 20)
        assert not poller.bad, poller.bad
        assert f"server {GREEN};" in host.file("/etc/nginx/conf.d/opsbook-upstream.conf").content_string
        assert master_pid(host) == pid  # reloaded, not restarted
        assert "changed=0" in ansible_playbook("switch_upstream.yml", {"nginx_upstream_servers": [GREEN]})[1]
    finally:
        rc, out = ansible_playbook("switch_upstream.yml", {"nginx_upstream_servers": ["127.0.0.1:8001"]})
        assert rc == 0, out[-3000:]
    assert wait_for(lambda: fetch(ip, "/")[2].decode().startswith("blue"), 20)


# --------------------------------------------------------------------------- logs, jails, rate limits, bans


def banned(host, jail):
    status = host.check_output(f"fail2ban-client status {jail}")
    match = re.search(r"Banned IP list:\s*(.*)$", status, re.MULTILINE)
    return match.group(1).split() if match else []


def nft_banned(host):
    """Addresses in the elements of fail2ban's nftables sets."""
    ruleset = host.check_output("nft list table inet f2b-table 2>/dev/null || true")
    return [e.strip().split()[0] for m in re.findall(r"elements = \{([^}]*)\}", ruleset) for e in m.split(",")]


def test_logs_jails_and_rotation(host):
    assert host.file("/var/log/nginx/access.log").is_file
    assert host.file("/var/log/nginx/error.log").is_file
    jails = host.check_output("fail2ban-client status")
    assert "nginx-limit-req" in jails and "opsbook-nginx-scan" in jails
    assert host.check_output("fail2ban-client get nginx-limit-req logpath").strip().endswith("/var/log/nginx/error.log")
    assert "/var/log/nginx/access.log" in host.check_output("fail2ban-client get opsbook-nginx-scan logpath")
    # the rotation nginx publishes (nginx__logrotate_configs), written by the logrotate role, replaces Debian's
    rotate = host.run("logrotate -d /etc/logrotate.d/opsbook-nginx")
    assert rotate.rc == 0, rotate.stderr
    assert not re.search(r"^error", rotate.stderr, re.MULTILINE), rotate.stderr
    assert "/var/log/nginx/access.log" in rotate.stderr and "/var/log/nginx/error.log" in rotate.stderr, rotate.stderr
    # one config for these logs: Debian's is gone
    rotating = host.check_output("grep -l /var/log/nginx -r /etc/logrotate.d/").split()
    assert rotating == ["/etc/logrotate.d/opsbook-nginx"]


JAILS = ("nginx-limit-req", "opsbook-nginx-scan")


def unban(host, client, client_ip):
    """Unban the client until it stays unbanned (failures still in the log may get it banned once more)."""

    def settled():
        for jail in JAILS:
            host.run(f"fail2ban-client set {jail} unbanip {client_ip}")
        time.sleep(3)  # fail2ban reads new log lines about every second
        return all(client_ip not in banned(host, jail) for jail in JAILS) and client_connects(client)

    assert wait_for(settled, 90, interval=1), "the client stays banned"


@pytest.fixture
def unbanned_client(host, client, client_ip):
    unban(host, client, client_ip)
    yield client_ip
    unban(host, client, client_ip)


def client_codes(client, path, count):
    curl = f"curl -sk -o /dev/null -m 5 -w '%{{http_code}}\\n' https://{NAME}{path}"
    out = client.check_output(f"for i in $(seq {count}); do {curl}; done; true")
    return out.split()


def client_connects(client):
    return client.run(f"curl -sk -o /dev/null -m 5 https://{NAME}/").rc == 0


def test_rate_limit_throttles_then_fail2ban_bans_the_client(host, client, unbanned_client):
    client_ip = unbanned_client
    # the login zone: 30r/m, burst 5 -> most of 40 quick requests are refused with 429
    codes = client_codes(client, "/login", 40)
    assert set(codes) <= {"200", "429", "000"}, codes  # 000: no answer any more (banned)
    assert 5 <= codes.count("200") <= 8, codes  # the burst, then about one every 2 s
    assert codes.count("429") >= 10, codes  # the jail's maxretry
    if "000" in codes:  # refused first, banned after
        assert codes.index("429") < codes.index("000"), codes
    assert wait_for(lambda: client_ip in banned(host, "nginx-limit-req"), 60), host.check_output(
        "fail2ban-client status nginx-limit-req")
    assert wait_for(lambda: client_ip in nft_banned(host), 15), nft_banned(host)
    assert not client_connects(client)
    # the controller is never banned and still gets the site
    assert CONTROLLER_IP not in nft_banned(host)
    assert CONTROLLER_IP in host.check_output("fail2ban-client get nginx-limit-req ignoreip")


def test_general_rate_limit_throttles_the_app_but_not_static_files(client, unbanned_client):
    # static files first: the app's 429s get the client banned again soon after
    script = (f"seq 60 | xargs -P 20 -I{{}} curl -sk -o /dev/null -m 5 -w 'static-%{{http_code}}\\n' "
              f"https://{NAME}/static/app.css; true; "
              f"seq 60 | xargs -P 20 -I{{}} curl -sk -o /dev/null -m 5 -w '%{{http_code}}\\n' https://{NAME}/; true")
    codes = client.check_output(script).split()
    app = [c for c in codes if not c.startswith("static-")]
    assert app.count("429") > 0, codes  # 10r/s burst 20: 60 parallel requests overflow
    assert app.count("200") >= 20, codes
    assert all(c == "static-200" for c in codes if c.startswith("static-")), codes


def test_scanner_probes_get_the_client_banned(host, client, unbanned_client):
    client_ip = unbanned_client
    probes = ["/.env", "/wp-login.php", "/.git/config", "/phpmyadmin/index.php", "/cgi-bin/test.cgi", "/xmlrpc.php"]
    for path in probes:
        if client_ip in banned(host, "opsbook-nginx-scan"):
            break
        client.run(f"curl -sk -o /dev/null -m 5 https://{NAME}{path}")
    assert wait_for(lambda: client_ip in banned(host, "opsbook-nginx-scan"), 60), host.check_output(
        "fail2ban-client status opsbook-nginx-scan")
    assert wait_for(lambda: not client_connects(client), 15)


def test_malformed_requests_count_as_scanner_failures(host):
    lines = "\n".join([
        '10.9.9.9 - - [22/Nov/2026:01:04:38 +0000] "GARBAGE" 400 150 "-" "-"',
        '10.9.9.9 - - [22/Nov/2026:01:04:38 +0000] "GET / HTTP/1.1" 444 0 "-" "zgrab"',
        '10.9.9.9 - - [22/Nov/2026:01:04:38 +0000] "GET /.env HTTP/1.1" 404 10 "-" "x"',
        '10.9.9.8 - - [22/Nov/2026:01:04:38 +0000] "GET /.env HTTP/1.1" 200 10 "-" "x"',
        '10.9.9.8 - - [22/Nov/2026:01:04:38 +0000] "GET /static/app.css HTTP/1.1" 404 10 "-" "x"',
        '10.9.9.8 - - [22/Nov/2026:01:04:38 +0000] "GET /blog/php-tips HTTP/1.1" 404 10 "-" "x"',
    ])
    out = host.check_output(f"printf '%s\\n' '{lines}' > /tmp/f2b-sample.log && "
                            "fail2ban-regex /tmp/f2b-sample.log /etc/fail2ban/filter.d/opsbook-nginx-scan.conf; "
                            "rm -f /tmp/f2b-sample.log")
    assert re.search(r"Lines: 6 lines, 0 ignored, 3 matched, 3 missed", out), out

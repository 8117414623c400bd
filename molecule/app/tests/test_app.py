"""app: the example app deployed blue/green behind live.sock, as a hardened unprivileged service."""

from __future__ import annotations

import json

testinfra_hosts = ["ansible://mol-app"]

GET = (
    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); "
    "s.sendall(b'GET ' + sys.argv[2].encode() + b' HTTP/1.0\\r\\n\\r\\n'); data = b''\n"
    "while chunk := s.recv(65536): data += chunk\n"
    "print(data.decode())"
)


def get(host, path: str, sock: str = "/srv/app/live.sock", user: str = "root"):
    """GET path over the unix socket, as user (HTTP/1.0, whole answer printed)."""
    return host.run("runuser -u %s -- python3 -c %s %s %s", user, GET, sock, path)


def test_live_socket_serves_the_release(host):
    out = get(host, "/", user="www-data")
    assert out.rc == 0, out.stderr
    assert "200 OK" in out.stdout and "opsbook example app 1.0.0" in out.stdout
    assert "X-App-Version: 1.0.0" in out.stdout
    health = get(host, "/healthz", user="www-data").stdout
    assert '"status": "ok"' in health and '"database": "not configured"' in health


def test_other_users_cannot_reach_the_socket(host):
    out = get(host, "/", user="nobody")
    assert out.rc != 0 and "Permission denied" in out.stderr


def test_layout_and_state(host):
    assert host.file("/srv/app/live.sock").linked_to == "/run/app/blue.sock"
    assert host.file("/srv/app/current").linked_to == "/srv/app/releases/1.0.0"
    assert host.file("/srv/app/releases/1.0.0/.complete").exists
    assert host.file("/srv/app/releases/1.0.0/venv/bin/gunicorn").exists
    fact = json.loads(host.file("/etc/ansible/facts.d/opsbook_app.fact").content_string)
    assert fact["live_version"] == "1.0.0" and fact["live_colour"] == "blue" and fact["releases"] == ["1.0.0"]
    assert host.service("app@blue").is_running and host.service("app@blue").is_enabled
    assert not host.service("app@green").is_running


def test_runs_unprivileged_and_cannot_change_its_code(host):
    pids = host.check_output("pgrep -f 'gunicorn --bind unix:/run/app/blue.sock'").split()
    assert len(pids) >= 2  # master and workers
    for pid in pids:
        assert host.check_output(f"ps -o user= -p {pid}").strip() == "app"
    assert host.run("runuser -u app -- touch /srv/app/releases/1.0.0/x").rc != 0
    props = host.check_output("systemctl show app@blue -p NoNewPrivileges -p ProtectSystem -p PrivateTmp")
    assert "NoNewPrivileges=yes" in props and "ProtectSystem=strict" in props and "PrivateTmp=yes" in props


def test_release_was_built_by_the_app_user_and_belongs_to_root(host):
    # the venv build (the release's own pip and packages) ran as the app user, then the tree went to root
    assert host.file("/srv/app/releases/1.0.0/.built-by").content_string.strip() == "app"
    assert host.run("find /srv/app/releases/1.0.0 ! -user root").stdout.strip() == ""
    assert host.run("find /srv/app/releases/1.0.0 -perm /022 ! -type l").stdout.strip() == ""


def test_sandbox_scores_on_the_host(host):
    # the running unit, as systemd on the host sees it (tests/unit/test_unit_sandbox.py scores the template)
    out = host.check_output("systemd-analyze security --no-pager app@blue.service | tail -1")
    score = float(out.split(":")[1].split()[0])
    assert score <= 2.0, out
    props = host.check_output("systemctl show app@blue -p MemoryDenyWriteExecute -p PrivateUsers -p ProtectProc")
    assert "MemoryDenyWriteExecute=yes" in props and "PrivateUsers=yes" in props, props


def test_gunicorn_control_socket_is_under_run_not_home(host):
    assert host.file("/run/app/blue.ctl").is_socket
    assert not host.file("/srv/app/.gunicorn").exists


def test_env_file_is_root_only_and_reaches_the_app(host):
    env = host.file("/etc/app/app.env")
    assert env.user == "root" and env.mode == 0o600
    assert 'APP_SECRET_TOKEN="molecule-secret-token"' in env.content_string
    master = host.check_output("systemctl show -p MainPID --value app@blue").strip()
    environ = host.check_output(f"tr '\\0' '\\n' < /proc/{master}/environ")
    assert "APP_GREETING=hello" in environ and "APP_COLOUR=blue" in environ

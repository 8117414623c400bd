"""End to end, kind node: blue/green deploys and rollbacks of examples/node-app on a provisioned web host, under wrk
load, through the same gate as the WSGI app.

node-web1 gets the whole provisioning; the app's inventory says app_kind: node. Each release is built on the
controller (Node 20, npm ci from the lockfile) and runs on the host's Debian Node (18): a release whose engines.node
the host's Node does not satisfy, or whose native addon was compiled for the controller's Node ABI, is refused on
the host before any cutover, while the old release keeps serving. The example app gets no database here (no db
host in this test): its /healthz answers without one. Figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from opsbook import lab
from tests.e2e.conftest import FAST, ROOT, LabEnv, boot, last_report, make_inventory, outcome
from tests.e2e.test_deploy import Load, served, served_version

NAME = "node-web1"

# a native addon on V8's own API (not N-API): it loads only into the Node ABI it was compiled for
ADDON_GYP = '{"targets": [{"target_name": "hello", "sources": ["hello.cc"]}]}\n'
ADDON_CC = """#include <node.h>
namespace hello {
void Hello(const v8::FunctionCallbackInfo<v8::Value>& args) {
  args.GetReturnValue().Set(v8::String::NewFromUtf8(args.GetIsolate(), "hi").ToLocalChecked());
}
void Init(v8::Local<v8::Object> exports) { NODE_SET_METHOD(exports, "hello", Hello); }
NODE_MODULE(NODE_GYP_MODULE_NAME, Init)
}
"""


@pytest.fixture(scope="module")
def node_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    hosts = boot([NAME])
    inv = make_inventory(tmp_path_factory.mktemp("inv") / "lab", {"web": [hosts[NAME]]}, FAST)
    web = inv / "group_vars" / "web.yml"
    settings = yaml.safe_load(web.read_text())
    settings.update({"app_kind": "node", "app_node_entry": "server.js",
                     "app_source_dir": str(ROOT / "examples" / "node-app"),
                     "app_migrate_command": "", "app_secret_env": {},  # no database in this test
                     "app_memory_max": "384M", "app_limit_nofile": 16384,
                     "app_env": {**(settings.get("app_env") or {}), "GREETING": "hello"},
                     "app_required_env": ["GREETING"]})
    web.write_text(yaml.safe_dump(settings, sort_keys=False))
    try:
        env = LabEnv(hosts, inv)
        started = time.monotonic()
        res = env.opsbook("provision")
        assert res.returncode == 0, f"provision failed:\n{outcome(res)}"
        print(f"provision: {time.monotonic() - started:.0f} s")
        yield env
    finally:
        lab.down([NAME], progress=False)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Source trees of the example node app: good ones, one that needs a newer Node than the host's, one with a
    native addon built for the controller's Node."""
    base = tmp_path_factory.mktemp("node-releases")
    out = {}
    for version in ("1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0", "6.0.0", "7.0.0"):
        src = base / version
        shutil.copytree(ROOT / "examples" / "node-app", src, ignore=shutil.ignore_patterns("node_modules"))
        if version == "3.0.0":  # the controller's Node 20 builds it; Debian 12's Node 18 does not satisfy it
            package = json.loads((src / "package.json").read_text())
            package["engines"] = {"node": ">=20"}
            (src / "package.json").write_text(json.dumps(package, indent=2) + "\n")
        if version == "4.0.0":  # npm ci compiles it (node-gyp) for the controller's Node ABI
            (src / "binding.gyp").write_text(ADDON_GYP)
            (src / "hello.cc").write_text(ADDON_CC)
        server = src / "server.js"
        if version == "6.0.0":  # a release that throws at start
            server.write_text(server.read_text().replace('const server = http.createServer(',
                                                         'throw new Error("no such config: boom");\n'
                                                         'const server = http.createServer(', 1))
        if version == "7.0.0":  # a release that starts but whose health check answers 500
            server.write_text(server.read_text().replace('return answer(res, 200, JSON.stringify(result)',
                                                         'return answer(res, 500, JSON.stringify(result)', 1))
        out[version] = src
    return out


def build_dir(env: LabEnv) -> str:
    """This run's own artifact directory, beside its inventory: the node app's app-1.0.0 ... app-7.0.0 never meet
    the shared .opsbook/build, where test_deploy (run in parallel, pytest -n 2) builds the WSGI app under the same
    names, nor an earlier run's artifacts (versions are immutable: an existing one would be reused, not built)."""
    return str(env.inventory.parent / "build")


def deploy(env: LabEnv, src: Path, version: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    res = env.opsbook("deploy", str(src), "--version", version, "--limit", NAME,
                      "-e", f"app_artifact_dir={build_dir(env)}", *extra)
    return res, time.monotonic() - started


def test_first_node_deploy_serves_v1(node_lab: LabEnv, releases: dict[str, Path]) -> None:
    res, took = deploy(node_lab, releases["1.0.0"], "1.0.0")
    assert res.returncode == 0, outcome(res)
    print(f"first deploy 1.0.0: {took:.1f} s")
    assert served_version(node_lab, NAME) == "1.0.0"
    # node runs the entry point itself, APP_VERSION in its environment, its socket reachable by nginx (www-data)
    show = node_lab.ssh(NAME, "systemctl show -p ExecStart --value app@blue").stdout
    assert "argv[]=/usr/bin/node server.js ;" in show and "npm" not in show, show
    pid = node_lab.ssh(NAME, "systemctl show -p MainPID --value app@blue").stdout.strip()
    environ = node_lab.ssh(NAME, f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.splitlines()
    assert "APP_VERSION=1.0.0" in environ and "PORT=/run/app/blue.sock" in environ, environ
    assert node_lab.ssh(NAME, "stat -c '%G %A' /run/app/blue.sock").stdout.split() == ["www-data", "srwxrwx---"]
    node = node_lab.ssh(NAME, "node --version").stdout.strip()
    print(f"host node {node}")
    # the limits: open files as the process has them; the memory ceiling as systemd and, where the lab's cgroup
    # has the memory controller, the kernel have it
    limits = node_lab.ssh(NAME, f"grep 'Max open files' /proc/{pid}/limits").stdout.split()
    assert limits[3:5] == ["16384", "16384"], limits
    assert node_lab.ssh(NAME, "systemctl show -p MemoryMax --value app@blue").stdout.strip() == str(384 * 2 ** 20)
    cg = node_lab.ssh(NAME, "cat /sys/fs/cgroup/system.slice/app@blue.service/memory.max 2>/dev/null || true")
    print(f"app@blue cgroup memory.max: {cg.stdout.strip() or 'no memory controller in this container'}")
    if cg.stdout.strip():
        assert cg.stdout.strip() == str(384 * 2 ** 20)
    assert "GREETING=hello" in environ


def test_node_deploy_v2_under_load_fails_no_request(node_lab: LabEnv, releases: dict[str, Path]) -> None:
    with Load(node_lab, NAME) as load:
        res, took = deploy(node_lab, releases["2.0.0"], "2.0.0")
    assert res.returncode == 0, outcome(res)
    print(f"deploy 2.0.0 under load: {took:.1f} s, {load.figures}")
    load.assert_no_failed_request()
    assert served_version(node_lab, NAME) == "2.0.0"
    units = node_lab.ssh(NAME, "systemctl is-active app@blue app@green; systemctl is-enabled app@green",
                         check=False).stdout.split()
    assert units == ["inactive", "active", "enabled"], units


def test_redeploying_the_live_node_version_changes_nothing(node_lab: LabEnv) -> None:
    res = node_lab.opsbook("deploy", "2.0.0", "--limit", NAME, "-e", f"app_artifact_dir={build_dir(node_lab)}")
    assert res.returncode == 0, outcome(res)
    host = last_report("deploy", NAME)["hosts"][NAME]  # type: ignore[index]
    assert host["changed"] == 0, host


def test_a_node_deploy_in_check_mode_changes_nothing(node_lab: LabEnv, releases: dict[str, Path]) -> None:
    res, _ = deploy(node_lab, releases["5.0.0"], "5.0.0", "--check")
    assert res.returncode == 0, outcome(res)
    assert f"{NAME}: would go from 2.0.0 to 5.0.0 (check mode)" in res.stdout, outcome(res)
    assert served_version(node_lab, NAME) == "2.0.0"
    assert node_lab.ssh(NAME, "ls /srv/app/releases").stdout.split() == ["1.0.0", "2.0.0"]


@pytest.mark.parametrize(("version", "why"), [
    ("3.0.0", r"engines\.node '>=20' is not satisfied by this host's Node v18\."),
    ("4.0.0", r"native addon build/Release/hello\.node does not load with this host's Node v18\.\S+ \(ABI 108; "
              r"built with v20\.\S+ \(ABI 115\)\).*NODE_MODULE_VERSION"),
])
def test_a_release_the_hosts_node_cannot_run_is_refused_before_cutover_under_load(
        node_lab: LabEnv, releases: dict[str, Path], version: str, why: str) -> None:
    with Load(node_lab, NAME) as load:
        res, took = deploy(node_lab, releases[version], version)
    out = res.stdout + res.stderr
    print(f"refused {version} under load: {took:.1f} s, {load.figures}")
    assert res.returncode == 2, outcome(res)
    flat = " ".join(out.split())
    assert f"app {version} REFUSED on {NAME} before any cutover" in flat, outcome(res)
    assert re.search(why, flat), outcome(res)
    assert "still serving: 2.0.0" in flat, outcome(res)
    load.assert_no_failed_request()
    assert served_version(node_lab, NAME) == "2.0.0"
    left = node_lab.ssh(NAME, f"test -e /srv/app/releases/{version} && echo left || echo gone").stdout.strip()
    assert left == "gone"
    units = node_lab.ssh(NAME, "systemctl is-active app@blue app@green", check=False).stdout.split()
    assert units == ["inactive", "active"], units  # the idle colour was never started


@pytest.mark.parametrize(("version", "check", "why"), [
    ("6.0.0", "Health gate", r"Error: no such config: boom"),
    ("7.0.0", "Health gate", r"answered 500"),
])
def test_a_node_release_the_gate_refuses_is_refused_under_load(node_lab: LabEnv, releases: dict[str, Path],
                                                                version: str, check: str, why: str) -> None:
    with Load(node_lab, NAME) as load:
        res, took = deploy(node_lab, releases[version], version, "-e", "app_health_timeout=15")
    print(f"refused {version} under load: {took:.1f} s, {load.figures}")
    flat = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2, outcome(res)
    assert f"app {version} REFUSED on {NAME} at" in flat and check in flat, outcome(res)
    assert re.search(why, flat), outcome(res)
    assert "still serving: 2.0.0" in flat, outcome(res)
    load.assert_no_failed_request()
    assert served_version(node_lab, NAME) == "2.0.0"
    units = node_lab.ssh(NAME, "systemctl is-active app@blue app@green", check=False).stdout.split()
    # the refused colour was stopped ("failed" once its start limit was hit: a release that throws at start)
    assert units[0] in ("inactive", "failed") and units[1] == "active", units


def test_node_rollback_to_previous_and_to_a_named_release_under_load(node_lab: LabEnv) -> None:
    with Load(node_lab, NAME) as load:
        started = time.monotonic()
        res = node_lab.opsbook("rollback", "--limit", NAME)
        took = time.monotonic() - started
    assert res.returncode == 0, outcome(res)
    print(f"rollback under load: {took:.1f} s, {load.figures}")
    load.assert_no_failed_request()
    assert served_version(node_lab, NAME) == "1.0.0"
    with Load(node_lab, NAME) as load:
        started = time.monotonic()
        res = node_lab.opsbook("rollback", "--to", "2.0.0", "--limit", NAME)
        took = time.monotonic() - started
    assert res.returncode == 0, outcome(res)
    print(f"rollback --to 2.0.0 under load: {took:.1f} s, {load.figures}")
    load.assert_no_failed_request()
    assert served_version(node_lab, NAME) == "2.0.0"


def test_a_killed_node_leaves_a_stale_socket_that_does_not_stop_its_restart(node_lab: LabEnv) -> None:
    live = node_lab.ssh(NAME, "basename $(readlink /srv/app/live.sock) .sock").stdout.strip()
    # the main process only (systemctl kill fails in the lab's containers: cgroup v1, "Input/output error")
    node_lab.ssh(NAME, f"kill -KILL $(systemctl show -p MainPID --value app@{live}); sleep 0.5; "
                       f"test -S /run/app/{live}.sock")  # SIGKILL leaves the socket behind
    deadline = time.monotonic() + 60
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = served(node_lab, NAME)
            if status == 200 and body.endswith("2.0.0"):
                break
            last = (status, body)
        except OSError as exc:
            last = exc
        time.sleep(1)
    else:
        raise AssertionError(f"2.0.0 not served again within 60 s of SIGKILL; last: {last}")
    restarts = node_lab.ssh(NAME, f"systemctl show -p NRestarts --value app@{live}").stdout.strip()
    assert int(restarts) >= 1, restarts

"""Kind node of the app role, without lab hosts: the controller's build (opsbook-app-build: a real npm ci of a tiny
project with a lockfile), the host's release check (opsbook-app node-check, run with this machine's own node) and
npm's range syntax for engines.node."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.unit.test_app_tool import builder, tool

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "node-build"
needs_npm = pytest.mark.skipif(shutil.which("npm") is None or shutil.which("node") is None,
                               reason="needs node and npm on the controller")


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("v18.20.4", ">=18", True),
    ("v18.20.4", ">=20", False),
    ("v18.20.4", ">= 18.0.0", True),
    ("v18.20.4", "^18.0.0 || >=20", True),
    ("v18.20.4", "^20", False),
    ("v18.20.4", "18.x", True),
    ("v18.20.4", "~18.19", False),
    ("v18.20.4", "~18.20.1", True),
    ("v18.20.4", ">=14 <19", True),
    ("v18.20.4", ">=14 <18", False),
    ("v18.20.4", "16 - 18", True),
    ("v18.20.4", "16 - 18.19", False),
    ("v18.20.4", "*", True),
    ("v18.20.4", "", True),
    ("v18.20.4", ">18", False),
    ("v18.20.4", ">17", True),
    ("v18.20.4", "<=18", True),
    ("v18.20.4", "<18", False),
    ("v18.20.4", "=18.20.4", True),
    ("v18.20.4", "18.20.5", False),
    ("v20.1.0", "^18 || ^20", True),
    ("v0.2.5", "^0.2.3", True),
    ("v0.3.0", "^0.2.3", False),
])
def test_engines_ranges(version: str, spec: str, ok: bool) -> None:
    assert tool.satisfies(version, spec) is ok


def test_an_unreadable_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a version"):
        tool.satisfies("v18.20.4", ">= eighteen")


def test_a_project_without_a_lockfile_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "app"
    shutil.copytree(FIXTURE, src)
    (src / "package-lock.json").unlink()
    with pytest.raises(SystemExit, match=r"has no package-lock.json .*built only from its lockfile"):
        builder.build_node(src, tmp_path / "out", "app", "1.0.0", False)
    assert not (tmp_path / "out" / "app-1.0.0.tar.gz").exists()
    with pytest.raises(SystemExit, match="not a Node project"):
        builder.build_node(tmp_path, tmp_path / "out", "app", "1.0.0", False)


def test_the_kind_is_read_from_the_project(tmp_path: Path) -> None:
    assert builder.detect_kind(FIXTURE) == "node"
    assert builder.detect_kind(ROOT / "examples" / "app") == "wsgi"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("needs node and npm on the controller")
    out = tmp_path_factory.mktemp("out")
    try:
        return dict(builder.build_node(FIXTURE, out, "app", "v4.2.0", False))
    except SystemExit as exc:  # no npm registry reachable: say so instead of failing on the network
        if "npm ci" in str(exc) and ("ENOTFOUND" in str(exc) or "ECONNREFUSED" in str(exc) or "ETIMEDOUT" in str(exc)):
            pytest.skip(f"no npm registry: {exc}")
        raise


@needs_npm
def test_build_runs_npm_ci_the_build_script_and_prunes_dev_dependencies(built: dict[str, object]) -> None:
    assert built["kind"] == "node" and built["version"] == "4.2.0" and not built["reused"]
    with tarfile.open(str(built["artifact"])) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        env = tar.extractfile("release.env").read().decode()  # type: ignore[union-attr]
        package = json.loads(tar.extractfile("package.json").read())  # type: ignore[union-attr]
        sums = tar.extractfile("SHA256SUMS").read().decode()  # type: ignore[union-attr]
        owners = {(m.uid, m.gid) for m in tar.getmembers()}
    assert "node_modules/ms/index.js" in names  # a dependency
    assert not any(n.startswith("node_modules/is-number") for n in names)  # a devDependency: pruned
    assert "dist/built.txt" in names  # the build script ran (with the devDependency)
    assert "index.js" in names and "package-lock.json" in names
    assert env == "APP_VERSION=4.2.0\n" and package["version"] == "4.2.0"
    assert owners == {(0, 0)}
    lock = (FIXTURE / "package-lock.json").read_bytes()
    assert manifest["lockfile_sha256"] == hashlib.sha256(lock).hexdigest()
    assert manifest["engines"] == {"node": ">=18"} and manifest["native_addons"] == []
    assert manifest["built_with"]["node"].startswith("v") and manifest["built_with"]["modules"].isdigit()
    assert "  node_modules/ms/index.js\n" in sums and "  release.env\n" in sums
    assert json.loads((FIXTURE / "package.json").read_text())["version"] == "0.1.0"  # the source is never touched
    assert not (FIXTURE / "node_modules").exists()


@needs_npm
def test_an_existing_version_is_reused(built: dict[str, object]) -> None:
    out = Path(str(built["artifact"])).parent
    again = builder.build_node(FIXTURE, out, "app", "4.2.0", False)
    assert again["reused"] and again["sha256"] == built["sha256"]


def unpack(artifact: object, dest: Path) -> Path:
    with tarfile.open(str(artifact)) as tar:
        tar.extractall(dest, filter="data")
    return dest


@needs_npm
def test_node_check_passes_a_good_release(built: dict[str, object], tmp_path: Path) -> None:
    release = unpack(built["artifact"], tmp_path / "r")
    facts, problems = tool.node_check(release, "index.js", shutil.which("node") or "node")
    assert problems == [], problems
    assert facts["version"] == "4.2.0"


@needs_npm
def test_node_check_refuses_engines_a_missing_entry_a_changed_file_and_an_addon_that_does_not_load(
        built: dict[str, object], tmp_path: Path) -> None:
    release = unpack(built["artifact"], tmp_path / "r")
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["engines"] = {"node": ">=99"}
    # a native addon that is not a loadable shared object for this Node (as one built for another ABI is not)
    addon = release / "node_modules" / "ms" / "build" / "Release" / "ms.node"
    addon.parent.mkdir(parents=True)
    addon.write_bytes(b"\x7fELF not really")
    manifest["native_addons"] = [{"path": "node_modules/ms/build/Release/ms.node", "sha256": "x"}]
    (release / "manifest.json").write_text(json.dumps(manifest))
    (release / "node_modules" / "ms" / "index.js").write_text("module.exports = 1\n")
    node = shutil.which("node") or "node"
    _, problems = tool.node_check(release, "server.js", node)
    text = " | ".join(problems)
    assert "engines.node '>=99' is not satisfied by this host's Node v" in text, text
    assert "the entry point server.js is not in the release" in text, text
    assert "native addon node_modules/ms/build/Release/ms.node does not load" in text and "ABI" in text, text
    assert "files differ from the artifact's SHA256SUMS: node_modules/ms/index.js" in text, text
    assert tool.main(["node-check", "--release", str(release), "--entry", "index.js", "--node", node]) == 1


VALIDATE = """
- name: The app role's checks, as deploy's first play runs them
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The app role's checks
      ansible.builtin.include_role:
        name: app
        tasks_from: validate
"""


def validate(tmp_path: Path, extra: dict[str, object]) -> subprocess.CompletedProcess[str]:
    play = tmp_path / "play.yml"
    play.write_text(VALIDATE)
    (tmp_path / "vars.json").write_text(json.dumps({"app_version": "1.0.0", "app_nginx": False, **extra}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{tmp_path / 'vars.json'}", str(play)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("extra", [
    {}, {"app_kind": "node", "app_node_entry": "dist/main.js"},
    {"app_memory_max": "512M", "app_limit_nofile": 4096}, {"app_memory_max": "80%"},
    {"app_required_env": ["DATABASE_URL", "WORKERS"], "app_env": {"WORKERS": 3},
     "app_secret_env": {"DATABASE_URL": "postgres://app:s3cret@db1/app"}},
])
def test_the_kinds_settings_pass(tmp_path: Path, extra: dict[str, object]) -> None:
    res = validate(tmp_path, extra)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.parametrize(("extra", "named"), [
    ({"app_kind": "java"}, 'app_kind must be wsgi or node (got "java")'),
    ({"app_kind": "node", "app_node_entry": "../../etc/passwd"}, 'app_node_entry must be a path inside the release'),
    ({"app_kind": "node", "app_node_entry": "/srv/x.js"}, 'got "/srv/x.js"'),
    ({"app_kind": "node", "app_node_port_env": "PORT-1"}, 'got "PORT-1"'),
    ({"app_memory_max": "lots"}, 'app_memory_max a size systemd takes for MemoryMax= (512M, 2G, 80%) or "" for no '
                                 'limit (got "lots")'),
    ({"app_memory_max": "0"}, 'got "0"'),
    ({"app_limit_nofile": 100}, "app_limit_nofile must be a number of open files from 1024 to 1048576 (got 100)"),
    ({"app_required_env": ["DATABASE_URL", "REDIS_URL", "SESSION_SECRET"],
      "app_secret_env": {"DATABASE_URL": "", "SESSION_SECRET": "hunter2-not-shown"}},
     "app_required_env names DATABASE_URL, REDIS_URL, not set (or empty) in app_env or app_secret_env"),
    # the env file takes app_secret_env's value over app_env's: an empty secret leaves the variable empty
    ({"app_required_env": ["GREETING"], "app_env": {"GREETING": "hi"}, "app_secret_env": {"GREETING": ""}},
     "app_required_env names GREETING, not set"),
])
def test_bad_kind_settings_are_refused_naming_them(tmp_path: Path, extra: dict[str, object], named: str) -> None:
    res = validate(tmp_path, extra)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2 and named in out, out[-3000:]
    assert "hunter2" not in out  # a secret's value is never shown, even beside a missing name

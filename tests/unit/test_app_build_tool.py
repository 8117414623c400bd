"""The app artifact build (roles/app/files/opsbook-app-build), run as a real process on temporary directories.

Offline: the source builds through a small in-tree PEP 517 backend (no build requirements to download) and pip's
own wheel, which every artifact carries, comes from the interpreter's ensurepip bundle (PIP_NO_INDEX, PIP_FIND_LINKS).
"""

from __future__ import annotations

import ensurepip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = Path(os.environ.get("OPSBOOK_APP_BUILD_TOOL", ROOT / "roles" / "app" / "files" / "opsbook-app-build"))
BUNDLED = Path(ensurepip.__file__).parent / "_bundled"

# a PEP 517 backend that writes the wheel of pkg_y: its version is the VERSION file's, else 1.0.0
BACKEND = '''
import base64, hashlib, os, zipfile


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    version = open("VERSION").read().strip() if os.path.exists("VERSION") else "1.0.0"
    info = f"pkg_y-{version}.dist-info"
    files = {
        "pkg_y/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: pkg-y\\nVersion: {version}\\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = "".join(
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\\n"
        for p, d in files.items()) + f"{info}/RECORD,,\\n"
    name = f"pkg_y-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{info}/RECORD", record)
    return name
'''
PYPROJECT = ('[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
             '[project]\nname = "pkg-y"\ndynamic = ["version"]\n')


def source(root: Path, version: str | None = None) -> Path:
    src = root / "app"
    src.mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "backend.py").write_text(BACKEND)
    if version:
        (src / "VERSION").write_text(version + "\n")
    return src


def build(src: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    pips = sorted(BUNDLED.glob("pip-*.whl"))
    if not pips:
        pytest.skip(f"no bundled pip wheel in {BUNDLED}")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(BUNDLED))
    return subprocess.run([sys.executable, str(TOOL), str(src), "--out", str(out), "--name", "y", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def result(res: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1, res.stdout
    data: dict[str, object] = json.loads(lines[0])
    return data


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_artifact_pins_and_hashes_every_wheel_and_the_source_keeps_its_version(tmp_path: Path) -> None:
    src = source(tmp_path, "0.1.0")
    out = tmp_path / "out"
    got = result(build(src, out, "--version", "v2.0.0"))
    artifact = out / "y-2.0.0.tar.gz"
    assert got == {"artifact": str(artifact), "name": "y", "kind": "wsgi", "package": "pkg_y", "version": "2.0.0",
                   "sha256": sha256(artifact), "reused": False}  # one JSON line, without the wheel list
    with tarfile.open(artifact) as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        requirements = tar.extractfile("requirements.txt").read().decode().splitlines()  # type: ignore[union-attr]
        wheels = {n: hashlib.sha256(tar.extractfile(n).read()).hexdigest()  # type: ignore[union-attr]
                  for n in members if n.startswith("wheels/")}
    pip = sorted(BUNDLED.glob("pip-*.whl"))[-1].name
    assert set(wheels) == {"wheels/pkg_y-2.0.0-py3-none-any.whl", f"wheels/{pip}"}
    assert manifest == {"name": "y", "package": "pkg_y", "version": "2.0.0",
                        "wheels": {n.removeprefix("wheels/"): h for n, h in wheels.items()}}
    assert sorted(requirements) == sorted(["pkg_y==2.0.0", f"pip=={pip.split('-')[1]}"])
    assert all(m.mode == 0o644 for m in members.values())
    assert (src / "VERSION").read_text() == "0.1.0\n"  # only the scratch copy was set to 2.0.0
    assert [p.name for p in out.iterdir()] == ["y-2.0.0.tar.gz"]  # no .part left behind


def test_a_built_version_is_reused_and_only_force_rebuilds_it(tmp_path: Path) -> None:
    src = source(tmp_path, "3.1.0")
    out = tmp_path / "out"
    first = result(build(src, out))  # no --version: the version the source declares
    artifact = out / "y-3.1.0.tar.gz"
    assert first["artifact"] == str(artifact) and first["reused"] is False
    before = artifact.stat()
    again = result(build(src, out, "--version", "3.1.0"))
    assert again == first | {"reused": True}
    assert artifact.stat().st_ino == before.st_ino and artifact.stat().st_mtime_ns == before.st_mtime_ns
    # without --version it builds to learn the version, and then keeps the artifact of that version
    assert result(build(src, out)) == first | {"reused": True}
    assert artifact.stat().st_ino == before.st_ino
    forced = result(build(src, out, "--version", "3.1.0", "--force"))
    assert forced["reused"] is False and forced["sha256"] == sha256(artifact)
    assert artifact.stat().st_ino != before.st_ino  # a new file put in place


def test_a_requested_version_the_source_does_not_build_is_refused(tmp_path: Path) -> None:
    src = source(tmp_path)  # no VERSION file: the backend builds 1.0.0
    out = tmp_path / "out"
    res = build(src, out, "--version", "2.0")
    assert res.returncode == 1 and res.stdout == ""
    assert "builds version 1.0.0, not 2.0" in res.stderr
    assert list(out.iterdir()) == []


def test_an_existing_artifact_of_the_version_is_reused_without_building(tmp_path: Path) -> None:
    src = tmp_path / "app"
    src.mkdir()
    (src / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "no_such_backend"\n')
    out = tmp_path / "out"
    out.mkdir()
    artifact = out / "y-1.2.0.tar.gz"
    manifest = {"name": "y", "package": "pkg_y", "version": "1.2.0", "wheels": {"pkg_y-1.2.0-py3-none-any.whl": "ab"}}
    with tarfile.open(artifact, "w:gz") as tar:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    digest = sha256(artifact)
    got = result(build(src, out, "--version", "V1.2.0"))  # v/V prefixes name the same version
    assert got == {"artifact": str(artifact), "name": "y", "kind": "wsgi", "package": "pkg_y", "version": "1.2.0",
                   "sha256": digest, "reused": True}
    assert sha256(artifact) == digest
    res = build(src, out, "--version", "1.2.0", "--force")  # now it builds, and this source cannot be built
    assert res.returncode == 1 and "pip wheel failed" in res.stderr
    assert sha256(artifact) == digest and [p.name for p in out.iterdir()] == ["y-1.2.0.tar.gz"]


def test_a_directory_without_pyproject_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text("")
    out = tmp_path / "out"
    res = build(tmp_path, out, "--version", "1.0")
    assert res.returncode == 1 and "has no pyproject.toml (not a Python project)" in res.stderr
    assert not out.exists()

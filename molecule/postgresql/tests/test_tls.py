"""Issue 11 item 11: web->db traffic in the clear. pg_hba had `host` lines for the app hosts, so an app host (here the
controller, 10.213.0.1, the scenario's app host) logged in without TLS, and nothing let a client check whose server it
talked to. Now: `hostssl` only, and a certificate signed by the db host's own CA, which the app host pins
(sslrootcert, sslmode=verify-full). Before the change: sslmode=disable logged in, and there was no CA to verify against.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_postgresql import DATABASE, PASSWORD, USER, address, apply_role, local_psql

testinfra_hosts = ["ansible://mol-pg"]

TLS_DIR = "/etc/postgresql/opsbook-tls"
CLIENT_CA = "/etc/opsbook/postgresql-ca.crt"  # postgresql_client_ca_file's default, on mol-pg-client
EXTRA_NAME = "db.mol-pg.test"  # postgresql_ssl_extra_names of converge.yml


@pytest.fixture
def ca_file(host: Any, tmp_path: Path) -> Path:
    """mol-pg's CA certificate, on the controller (what the client tasks give an app host)."""
    path = tmp_path / "ca.crt"
    path.write_text(host.file(f"{TLS_DIR}/ca.crt").content_string)
    return path


def psql(conninfo: str, sql: str = "SELECT current_user") -> subprocess.CompletedProcess[str]:
    """psql from the controller (the app host) with CONNINFO plus the app's database, user and password."""
    binary = shutil.which("psql")
    assert binary, "psql is needed on the controller"
    return subprocess.run(
        [binary, "--no-psqlrc", "-Atc", sql, f"{conninfo} port=5432 dbname={DATABASE} user={USER} connect_timeout=10"],
        env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True, text=True, timeout=60,
    )


def server_certificate(ip: str) -> bytes:
    """The certificate the server presents now (PostgreSQL's SSLRequest, then a TLS handshake), DER."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ip, 5432), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert sock.recv(1) == b"S"
        with context.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der
    return der


def test_app_host_without_tls_is_refused_by_pg_hba(host: Any) -> None:
    result = psql(f"host={address(host)} sslmode=disable")
    assert result.returncode != 0, result.stdout
    assert "no pg_hba.conf entry" in result.stderr and "no encryption" in result.stderr, result.stderr


def test_verify_full_with_the_pinned_ca_logs_in_over_tls(host: Any, ca_file: Path) -> None:
    result = psql(f"host={address(host)} sslmode=verify-full sslrootcert={ca_file}",
                  "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert result.returncode == 0, result.stderr
    ssl_on, version = result.stdout.strip().split("|")
    assert ssl_on == "t"
    assert version in ("TLSv1.2", "TLSv1.3")
    assert local_psql(host, "SHOW ssl_min_protocol_version") == "TLSv1.2"


@pytest.mark.parametrize("name", ["mol-pg", EXTRA_NAME])
def test_certificate_names_the_inventory_name_and_extra_names(host: Any, ca_file: Path, name: str) -> None:
    result = psql(f"host={name} hostaddr={address(host)} sslmode=verify-full sslrootcert={ca_file}")
    assert result.returncode == 0, result.stderr


def test_verify_full_refuses_a_name_the_certificate_does_not_have(host: Any, ca_file: Path) -> None:
    result = psql(f"host=wrong.opsbook.test hostaddr={address(host)} sslmode=verify-full sslrootcert={ca_file}")
    assert result.returncode != 0
    assert 'does not match host name "wrong.opsbook.test"' in result.stderr, result.stderr


def test_verify_full_refuses_another_ca(host: Any, tmp_path: Path) -> None:
    """A CA of the same name as mol-pg's (an impostor's) is not the pinned one: the login fails."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opsbook PostgreSQL CA mol-pg")])  # same name
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256()))
    other = tmp_path / "other-ca.crt"
    other.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    result = psql(f"host={address(host)} sslmode=verify-full sslrootcert={other}")
    assert result.returncode != 0
    # OpenSSL finds the issuer by name, then the signature does not verify: "EVP lib" (another name would give
    # "certificate verify failed")
    assert "SSL error" in result.stderr or "certificate verify failed" in result.stderr, result.stderr


def test_keys_stay_private_and_the_client_got_the_ca(host: Any) -> None:
    ca_key = host.file(f"{TLS_DIR}/ca.key")
    assert ca_key.user == "root" and ca_key.mode == 0o600
    server_key = host.file(f"{TLS_DIR}/server.key")
    assert server_key.user == "postgres" and server_key.mode == 0o600
    client = host.get_host("ansible://mol-pg-client", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])
    pinned = client.file(CLIENT_CA)
    assert pinned.user == "root" and pinned.mode == 0o644
    assert pinned.content_string == host.file(f"{TLS_DIR}/ca.crt").content_string
    assert not client.file(f"{TLS_DIR}/ca.key").exists


def test_server_certificate_is_renewed_before_expiry_and_kept_otherwise(host: Any, tmp_path: Path,
                                                                          ca_file: Path) -> None:
    """A run renews the server certificate once fewer than postgresql_ssl_renew_days remain (365 = its whole
    life, so now), keeps the CA (the app hosts' pin still works), and the server serves the new one at once."""
    before = server_certificate(address(host))
    ca_before = host.file(f"{TLS_DIR}/ca.crt").content_string
    renewed = apply_role({"postgresql_ssl_renew_days": 365}, tmp_path)
    assert renewed.returncode == 0, renewed.stdout[-3000:]
    after = server_certificate(address(host))
    assert after != before
    assert host.file(f"{TLS_DIR}/ca.crt").content_string == ca_before
    result = psql(f"host={address(host)} sslmode=verify-full sslrootcert={ca_file}")
    assert result.returncode == 0, result.stderr
    # the default policy (30 days) keeps a certificate with a year left: a re-run changes nothing
    again = apply_role({}, tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    # the recap (molecule's environment may colour it)
    recap = re.search(r"mol-pg\s+:\s+ok=\d+\s+changed=(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", again.stdout))
    assert recap and recap.group(1) == "0", again.stdout[-3000:]
    assert server_certificate(address(host)) == after

"""The example app reads libpq's sslmode/sslrootcert from DATABASE_URL (issue 11 item 11: web->db traffic over TLS,
verified by the client). Before, the query was ignored: pg8000 then tries TLS without checking the certificate, so a
man in the middle with any certificate got the app's password.

The contexts are exercised the way pg8000 uses them (wrap_socket with server_hostname=host) against a local TLS
server whose certificate a throwaway CA signed for 127.0.0.1 only."""

from __future__ import annotations

import datetime as dt
import importlib
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def db():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "examples" / "app" / "src"))
    try:
        yield importlib.import_module("opsbook_example_app.db")
    finally:
        sys.path.remove(str(ROOT / "examples" / "app" / "src"))


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    """A TLS server on 127.0.0.1 (certificate for IP 127.0.0.1 only, signed by a CA); its port, the CA, another CA."""
    tmp = tmp_path_factory.mktemp("tls")
    ca_key, ca = _ca("test CA")
    _, other = _ca("other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db1")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "server.crt").write_bytes(_pem(cert))
    (tmp / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    (tmp / "ca.crt").write_bytes(_pem(ca))
    (tmp / "other.crt").write_bytes(_pem(other))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "server.crt", tmp / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], tmp / "ca.crt", tmp / "other.crt"
    stop.set()
    thread.join(5)
    listener.close()


def _handshake(context: ssl.SSLContext, port: int, host: str) -> bytes:
    """What pg8000 does after the server's 'S': wrap the TCP socket with server_hostname=host."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            context.wrap_socket(sock, server_hostname=host) as tls:
        return tls.recv(2)


def test_verify_full_with_the_right_ca_and_address_connects(db, tls_server) -> None:  # type: ignore[no-untyped-def]
    port, ca, _ = tls_server
    context = db.ssl_option(f"sslmode=verify-full&sslrootcert={ca}")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert _handshake(context, port, "127.0.0.1") == b"ok"


def test_verify_full_refuses_a_name_the_certificate_does_not_have(db, tls_server) -> None:  # type: ignore[no-untyped-def]
    port, ca, _ = tls_server
    context = db.ssl_option(f"sslmode=verify-full&sslrootcert={ca}")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn't match"):
        _handshake(context, port, "db1.wrong.test")


def test_verify_full_refuses_a_certificate_of_another_ca(db, tls_server) -> None:  # type: ignore[no-untyped-def]
    port, _, other = tls_server
    context = db.ssl_option(f"sslmode=verify-full&sslrootcert={other}")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(context, port, "127.0.0.1")


def test_verify_ca_checks_the_chain_but_not_the_name(db, tls_server) -> None:  # type: ignore[no-untyped-def]
    port, ca, other = tls_server
    assert _handshake(db.ssl_option(f"sslmode=verify-ca&sslrootcert={ca}"), port, "db1.wrong.test") == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(db.ssl_option(f"sslmode=verify-ca&sslrootcert={other}"), port, "127.0.0.1")


def test_the_other_modes_map_to_pg8000s_options(db) -> None:  # type: ignore[no-untyped-def]
    assert db.ssl_option("sslmode=disable") is False
    assert db.ssl_option("") is None  # libpq's default, prefer
    assert db.ssl_option("sslmode=prefer") is None
    assert db.ssl_option("sslmode=require") is True
    # libpq: require with a root certificate verifies the chain (verify-ca)
    assert isinstance(db.ssl_option("sslmode=require&sslrootcert=/etc/ssl/certs/ca-certificates.crt"), ssl.SSLContext)


@pytest.mark.parametrize(("query", "message"), [
    ("sslmode=verify-full", "needs sslrootcert"),
    ("sslmode=verify-everything", "is not one of"),
    ("sslmode=require&sslcert=/x", "unsupported parameter"),
])
def test_bad_tls_parameters_are_refused(db, query: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        db.ssl_option(query)


def test_connect_hands_the_verifying_context_to_pg8000(db, tls_server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What the app does with the lab's DATABASE_URL: pg8000 gets a context that verifies (before: none, so pg8000
    used TLS without checking the certificate, or no TLS at all)."""
    import types

    seen: dict[str, object] = {}

    class Connection:
        def __init__(self, **kwargs: object) -> None:
            seen.update(kwargs)

    native = types.ModuleType("pg8000.native")
    native.Connection = Connection  # type: ignore[attr-defined]
    package = types.ModuleType("pg8000")
    package.native = native  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pg8000", package)
    monkeypatch.setitem(sys.modules, "pg8000.native", native)
    port, ca, _ = tls_server
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:pw@127.0.0.1:{port}/app?sslmode=verify-full&sslrootcert={ca}")
    db.connect()
    context = seen.get("ssl_context")
    assert isinstance(context, ssl.SSLContext), seen
    assert seen["host"] == "127.0.0.1" and seen["database"] == "app"
    assert _handshake(context, port, "127.0.0.1") == b"ok"

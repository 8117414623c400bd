"""roles/acme/files/opsbook-acme-metrics (the certificates' expiry per name, for the node exporter) on real
certificates made with openssl: one series per DNS name, promtool accepts the file, a second run writes nothing."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "roles" / "acme" / "files" / "opsbook-acme-metrics"
PROMTOOL = Path(sys.executable).parent / "promtool"


def certificate(live: Path, lineage: str, days: int, san: str) -> int:
    """A self-signed certificate in LIVE/LINEAGE/cert.pem; returns its notAfter as a Unix time."""
    d = live / lineage
    d.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(d / "privkey.pem"), "-out", str(d / "cert.pem"), "-days", str(days),
                    "-subj", f"/CN={lineage}", "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
    end = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(d / "cert.pem")], check=True,
                         capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    return int(datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC).timestamp())


def run(out: Path, live: Path) -> str:
    return subprocess.run(["sh", str(TOOL), str(out), str(live)], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_one_series_per_dns_name_and_promtool_accepts_the_file(tmp_path: Path) -> None:
    live, out = tmp_path / "live", tmp_path / "opsbook_acme.prom"
    shop = certificate(live, "shop.example.com", 20, "DNS:shop.example.com,DNS:www.shop.example.com,IP:192.0.2.1")
    blog = certificate(live, "blog.example.com", 80, "DNS:blog.example.com")
    assert run(out, live) == "written"
    series = sorted(line for line in out.read_text().splitlines() if not line.startswith("#"))
    metric = "opsbook_certificate_expiry_timestamp_seconds"
    assert series == [
        f'{metric}{{lineage="blog.example.com",name="blog.example.com"}} {blog}',
        f'{metric}{{lineage="shop.example.com",name="shop.example.com"}} {shop}',
        f'{metric}{{lineage="shop.example.com",name="www.shop.example.com"}} {shop}',
    ]
    assert out.stat().st_mode & 0o777 == 0o644
    check = subprocess.run([str(PROMTOOL), "check", "metrics"], input=out.read_text(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_second_run_writes_nothing_and_a_renewal_is_written(tmp_path: Path) -> None:
    live, out = tmp_path / "live", tmp_path / "opsbook_acme.prom"
    certificate(live, "shop.example.com", 20, "DNS:shop.example.com")
    assert run(out, live) == "written"
    before = out.stat().st_ino
    assert run(out, live) == "unchanged"
    assert out.stat().st_ino == before
    # a renewal: the lineage's certificate replaced by a later one
    renewed = tmp_path / "renewed"
    expiry = certificate(renewed, "shop.example.com", 90, "DNS:shop.example.com")
    (live / "shop.example.com" / "cert.pem").write_bytes((renewed / "shop.example.com" / "cert.pem").read_bytes())
    assert run(out, live) == "written"
    assert out.read_text().rstrip().endswith(f" {expiry}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "opsbook_acme.prom", "renewed"]  # no temp file left


def test_no_certificate_yet_is_an_empty_family(tmp_path: Path) -> None:
    out = tmp_path / "opsbook_acme.prom"
    assert run(out, tmp_path / "live") == "written"
    assert [line for line in out.read_text().splitlines() if not line.startswith("#")] == []

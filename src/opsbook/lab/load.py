"""Load for the lab: wrk against a lab site by name, from this machine, for as long as a with-block runs.

Used by the demo, the benchmarks and the tests to prove that an operation failed no request. wrk resolves the
site's name through /etc/hosts: it gets one of its own in a private mount namespace (nothing on the machine
changes). wrk keeps its connections alive (HTTP/1.1 keep-alive), like a browser.
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

SCALE_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(out: str) -> dict[str, float]:
    """requests, non2xx, socket_errors, p50_ms, p99_ms, seconds and rps from wrk --latency output."""

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        return round(float(m.group(1)) * SCALE_MS[m.group(2)], 3) if m else 0.0

    def duration() -> float:  # wrk prints "requests in 12.34s", "in 3.31m" or "in 1.02h"
        m = re.search(r"requests in ([\d.]+)(us|ms|s|m|h)\b", out)
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        return round(float(m.group(1)) * scale[m.group(2)], 3) if m else 0.0

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": num(r"(\d+) requests in"),
        "seconds": duration(),
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
        "non2xx": num(r"Non-2xx or 3xx responses: (\d+)"),
        "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
    }


class Load:
    """`with Load(ip, name) as load: ...` runs wrk -c32 on https://NAME/ during the block; load.figures after."""

    def __init__(self, ip: str, name: str, path: str = "/", connections: int = 32, threads: int = 2,
                 warmup: float = 2.0, nice: int = 0) -> None:
        self.url = f"https://{name}{path}"
        self._hosts = Path(tempfile.mkstemp(prefix="opsbook-load-hosts.")[1])
        self._hosts.write_text(f"127.0.0.1 localhost\n{ip} {name}\n")
        self._hosts.chmod(0o644)
        # nice > 0: wrk yields the cores to everything else here, as a load generator on its own machine would
        self.cmd = [*(["nice", "-n", str(nice)] if nice else []), "unshare", "-m", "sh", "-c",
                    f"mount --bind {self._hosts} /etc/hosts && exec wrk -t{threads} -c{connections} -d3600s "
                    f"--timeout 10s --latency {self.url}"]
        self.warmup = warmup
        self.out = ""
        self.figures: dict[str, float] = {}

    def __enter__(self) -> Load:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(self.warmup)  # connections open and requests flowing before the operation starts
        if self.proc.poll() is not None:
            raise RuntimeError(f"wrk did not start: {self.proc.communicate()[0]}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        time.sleep(1)
        self.proc.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        try:
            self.out = self.proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out = self.proc.communicate()[0]
        self._hosts.unlink(missing_ok=True)
        self.figures = parse_wrk(self.out)

    @property
    def failed(self) -> int:
        return int(self.figures.get("non2xx", 0) + self.figures.get("socket_errors", 0))


def https_get(ip: str, name: str, path: str = "/", timeout: float = 10) -> tuple[int, str]:
    """GET https://NAME/PATH connected to IP (SNI and Host NAME, certificate not checked): status and body."""
    import http.client
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((ip, 443), timeout=timeout)
    conn = http.client.HTTPSConnection(name, 443, timeout=timeout)
    conn.sock = ctx.wrap_socket(raw, server_hostname=name)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace").strip()
    finally:
        conn.close()


def served_version(ip: str, name: str) -> str:
    """The example app's version served at https://NAME/ ("" when it does not answer 200)."""
    try:
        status, body = https_get(ip, name)
    except OSError:
        return ""
    return body.rsplit(" ", 1)[-1] if status == 200 else ""

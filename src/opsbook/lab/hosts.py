"""The local lab: Debian 12 hosts as systemd-nspawn containers, each in its own network namespace.

Facts this relies on are in shared/LAB.md. Layout on the machine:

- ``/var/lib/opsbook/lab/base/<key>/``   cached debootstrap root (shared by every host)
- ``/var/lib/opsbook/lab/hosts/<name>/`` per-host root (a copy of the base)
- ``/var/lib/opsbook/lab/ssh/``          the controller's lab key and known_hosts
- ``/run/opsbook-lab/``                  runtime state: one JSON file per running host, infra pids

Every host sits on the bridge ``obr0`` (gateway 10.213.0.1/24); the gateway also serves the apt caching
proxy (port 3142). Nothing here talks to anything but this machine and deb.debian.org (through the proxy).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

STATE_DIR = Path(os.environ.get("OPSBOOK_LAB_STATE", "/var/lib/opsbook/lab"))
RUN_DIR = Path(os.environ.get("OPSBOOK_LAB_RUN", "/run/opsbook-lab"))
BRIDGE = "obr0"
SUBNET = ipaddress.ip_network("10.213.0.0/24")
GATEWAY = ipaddress.ip_address("10.213.0.1")
# A fixed (locally administered) address for the bridge. Without one, Linux gives a bridge the lowest MAC of its
# ports and changes it whenever that port goes: every host torn down could move the gateway's MAC, and the other
# hosts then sent to a MAC nobody had until their ARP entry expired, about 45 s of SSH stalls and apt proxy
# "connection timed out" (measured: 33 failed connects in a row after one port was removed; none with this).
BRIDGE_MAC = "02:6f:70:73:62:01"
APT_PROXY_PORT = 3142
ADHOC_RANGE = range(100, 200)  # last octets handed to hosts not declared in an inventory
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "procps",
    "ca-certificates",
]
ACME_DIR_PORT = 14000
ACME_MGMT_PORT = 15000
DNS_PORT = 8053
DNS_MGMT_PORT = 8055
LAB_DOMAIN = "opsbook.test"
DEFAULT_CERT_SECONDS = 90 * 24 * 3600  # lab hosts are <name>.opsbook.test in the ACME server's mock DNS
# Bump when the recipe below changes: it is part of the base image's cache key.
BASE_RECIPE_VERSION = "4"


class LabError(RuntimeError):
    """A lab operation failed; the message says what and how to recover."""


@dataclass
class Host:
    name: str
    ip: str
    pid: int = 0
    veth: str = ""
    root: str = ""
    groups: tuple[str, ...] = ()

    @property
    def netns(self) -> str:
        return f"olab-{self.name}"


# --------------------------------------------------------------------------- helpers


def run(cmd: list[str], check: bool = True, quiet: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, text=True, capture_output=quiet, **kw)  # type: ignore[call-overload]
    if check and res.returncode != 0:
        err = (res.stderr or "").strip() if quiet else ""
        raise LabError(f"command failed ({res.returncode}): {' '.join(cmd)}\n{err}")
    return res  # type: ignore[no-any-return]


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, bridges, systemd-nspawn): run as root")


def require_tools() -> None:
    missing = [t for t in ("systemd-nspawn", "debootstrap", "apt-cacher-ng", "ip", "ssh", "ssh-keygen", "openssl",
                           "pebble", "pebble-challtestsrv")
               if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing tools: {', '.join(missing)}; run scripts/bootstrap.sh first")


@contextlib.contextmanager
def lock() -> Iterator[None]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_open(ip: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def ssh_key() -> Path:
    return STATE_DIR / "ssh" / "id_ed25519"


def known_hosts() -> Path:
    return STATE_DIR / "ssh" / "known_hosts"


def secrets_dir() -> Path:
    return STATE_DIR / "secrets"


LAB_SECRETS = ("postgresql_app_password",)


def ensure_secrets() -> None:
    """Random lab secrets in 0600 files (the lab inventory reads them with a file lookup; none is in git)."""
    import secrets as _secrets

    d = secrets_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in LAB_SECRETS:
        f = d / name
        if not f.exists():
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(_secrets.token_urlsafe(24))
    ensure_age_key(d)


# the lab's age key pair for the backup copies (inventories/lab/group_vars/all.yml reads both)
AGE_IDENTITY, AGE_RECIPIENT = "backup_age_identity", "backup_age_recipient"


def ensure_age_key(d: Path) -> None:
    """The age key pair the lab's off-host backup copies are encrypted to: the private key (age-keygen's file) and
    its public key, 0600 files in D. Made once: a new pair would leave the copies made before unreadable."""
    identity, recipient = d / AGE_IDENTITY, d / AGE_RECIPIENT
    if identity.exists() and recipient.exists():
        return
    if not shutil.which("age-keygen"):
        raise LabError("age-keygen not found: apt-get install age (scripts/bootstrap.sh installs it)")
    if not identity.exists():
        tmp = d / f".{AGE_IDENTITY}.tmp"
        tmp.unlink(missing_ok=True)
        run(["age-keygen", "-o", str(tmp)])  # age-keygen creates it 0600
        os.replace(tmp, identity)
    public = run(["age-keygen", "-y", str(identity)]).stdout.strip()
    tmp = d / f".{AGE_RECIPIENT}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(public + "\n")
    os.replace(tmp, recipient)


def ensure_ssh_key() -> Path:
    key = ssh_key()
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "opsbook-lab", "-f", str(key)])
    return key


# --------------------------------------------------------------------------- inventory


def inventory_hosts(inventory: Path) -> list[Host]:
    """Hosts declared in a static YAML inventory (the lab's), with their groups and addresses."""
    path = inventory / "hosts.yml" if inventory.is_dir() else inventory
    data = yaml.safe_load(path.read_text()) or {}
    found: dict[str, Host] = {}

    def walk(group: str, node: dict[str, object]) -> None:
        hosts = node.get("hosts") or {}
        assert isinstance(hosts, dict)
        for name, hvars in hosts.items():
            ip = (hvars or {}).get("ansible_host")
            if not ip:
                raise LabError(f"{path}: lab host {name} has no ansible_host address")
            h = found.setdefault(name, Host(name=name, ip=str(ip)))
            if group != "all":
                h.groups = (*h.groups, group)
        children = node.get("children") or {}
        assert isinstance(children, dict)
        for child, cnode in children.items():
            walk(child, cnode or {})

    walk("all", data.get("all", {}))
    for h in found.values():
        if ipaddress.ip_address(h.ip) not in SUBNET:
            raise LabError(f"{path}: {h.name} address {h.ip} is outside the lab subnet {SUBNET}")
    return list(found.values())


# --------------------------------------------------------------------------- state


def host_state_file(name: str) -> Path:
    return RUN_DIR / "hosts" / f"{name}.json"


def load_hosts() -> list[Host]:
    d = RUN_DIR / "hosts"
    if not d.is_dir():
        return []
    out = []
    for f in sorted(d.glob("*.json")):
        data = json.loads(f.read_text())
        data["groups"] = tuple(data.get("groups", ()))
        out.append(Host(**data))
    return out


def save_host(h: Host) -> None:
    f = host_state_file(h.name)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(h)))
    tmp.replace(f)


def allocate_ip(taken: set[str]) -> str:
    for octet in ADHOC_RANGE:
        ip = str(SUBNET.network_address + octet)
        if ip not in taken:
            return ip
    raise LabError("no free lab address left in the ad-hoc range")


# --------------------------------------------------------------------------- infrastructure


def bridge_exists() -> bool:
    return run(["ip", "link", "show", BRIDGE], check=False).returncode == 0


def ensure_bridge() -> None:
    if not bridge_exists():
        run(["ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge"])
    if Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip() != BRIDGE_MAC:
        run(["ip", "link", "set", BRIDGE, "address", BRIDGE_MAC])  # a bridge made by an older opsbook
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f"{GATEWAY}/" not in addrs:
        run(["ip", "addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def _infra_pidfile(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def _infra_pid(name: str) -> int:
    f = _infra_pidfile(name)
    try:
        pid = int(f.read_text())
    except (OSError, ValueError):
        return 0
    return pid if pid_alive(pid) else 0


def _spawn(name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                env=env)
    _infra_pidfile(name).write_text(str(proc.pid))
    return proc.pid


def ensure_apt_proxy() -> None:
    """apt-cacher-ng on the gateway, with its own config (the machine's /etc is left alone)."""
    if _infra_pid("apt-cacher-ng") and port_open(str(GATEWAY), APT_PROXY_PORT):
        return
    conf = STATE_DIR / "acng"
    conf.mkdir(parents=True, exist_ok=True)
    cache = Path("/var/cache/opsbook-acng")
    cache.mkdir(parents=True, exist_ok=True)
    (conf / "acng.conf").write_text(
        "\n".join([
            f"CacheDir: {cache}",
            f"LogDir: {RUN_DIR / 'acng-log'}",
            "SupportDir: /usr/lib/apt-cacher-ng",
            f"Port: {APT_PROXY_PORT}",
            f"BindAddress: {GATEWAY} 127.0.0.1",
            f"PidFile: {RUN_DIR / 'acng-daemon.pid'}",
            f"SocketPath: {RUN_DIR / 'acng.socket'}",
            "ExThreshold: 4",
            "DlMaxRetries: 5",  # retry a broken upstream download instead of passing a short answer on
            "PassThroughPattern: .*",
            "",
        ])
    )
    (RUN_DIR / "acng-log").mkdir(parents=True, exist_ok=True)
    _spawn("apt-cacher-ng", ["apt-cacher-ng", "-c", str(conf), "ForeGround=1"], RUN_DIR / "apt-cacher-ng.log")
    _wait_port(APT_PROXY_PORT, "apt-cacher-ng", RUN_DIR / "apt-cacher-ng.log")


def stop_infra(name: str) -> None:
    pid = _infra_pid(name)
    if pid:
        _terminate(pid, 10)
    _infra_pidfile(name).unlink(missing_ok=True)


def _wait_exit(pid: int, seconds: float) -> bool:
    """Wait up to SECONDS for PID to exit (reaping it if it is our child); True when it is gone."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _terminate(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_exit(pid, grace):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_exit(pid, 5)


# --------------------------------------------------------------------------- ACME server (Pebble)


def pebble_dir() -> Path:
    return STATE_DIR / "pebble"


def acme_directory_url() -> str:
    return f"https://{GATEWAY}:{ACME_DIR_PORT}/dir"


def _ensure_pebble_tls() -> None:
    d = pebble_dir()
    d.mkdir(parents=True, exist_ok=True)
    if (d / "cert.pem").exists() and (d / "ca.pem").exists():
        return
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=opsbook lab CA",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem")])
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=pebble", "-keyout", str(d / "key.pem"),
         "-out", str(d / "cert.csr")])
    (d / "ext.cnf").write_text(f"subjectAltName=IP:{GATEWAY},IP:127.0.0.1,DNS:pebble,DNS:localhost\n"
                               "extendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", str(d / "cert.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
         str(d / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(d / "ext.cnf"),
         "-out", str(d / "cert.pem")])
    for f in ("ca.key", "key.pem"):
        os.chmod(d / f, 0o600)


def ensure_pebble(cert_seconds: int | None = None) -> None:
    """Pebble (ACME directory on the gateway) and its mock DNS. cert_seconds makes short-lived certificates."""
    _ensure_pebble_tls()
    d = pebble_dir()
    conf: dict[str, object] = {
        "listenAddress": f"{GATEWAY}:{ACME_DIR_PORT}",
        "managementListenAddress": f"{GATEWAY}:{ACME_MGMT_PORT}",
        "certificate": str(d / "cert.pem"),
        "privateKey": str(d / "key.pem"),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    # 90 days like Let's Encrypt (Pebble's own default, 5 years, fails Mozilla's maximum lifespan check)
    conf["certificateValidityPeriod"] = cert_seconds or DEFAULT_CERT_SECONDS
    text = json.dumps({"pebble": conf}, indent=2)
    conf_file = d / "pebble-config.json"
    same = conf_file.exists() and conf_file.read_text() == text
    if not _infra_pid("challtestsrv"):
        _spawn("challtestsrv", [
            "pebble-challtestsrv", "-dns01", f"{GATEWAY}:{DNS_PORT}", "-http01", "", "-https01", "",
            "-tlsalpn01", "", "-management", f"{GATEWAY}:{DNS_MGMT_PORT}", "-defaultIPv4", "", "-defaultIPv6", "",
        ], RUN_DIR / "challtestsrv.log")
        _wait_port(DNS_MGMT_PORT, "pebble-challtestsrv", RUN_DIR / "challtestsrv.log")
    if _infra_pid("pebble") and (same or cert_seconds is None):
        return
    stop_infra("pebble")
    conf_file.write_text(text)
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
    log = RUN_DIR / "pebble.log"
    _spawn("pebble", ["pebble", "-config", str(conf_file), "-dnsserver", f"{GATEWAY}:{DNS_PORT}"], log, env)
    _wait_port(ACME_DIR_PORT, "pebble", log)


def _wait_port(port: int, what: str, log: Path) -> None:
    for _ in range(100):
        if port_open(str(GATEWAY), port, 0.2):
            return
        time.sleep(0.1)
    raise LabError(f"{what} did not start; see {log}")


def register_dns(hosts: list[Host]) -> None:
    """A records in the mock DNS: <name>.opsbook.test -> the host's lab address."""

    for h in hosts:
        # add-a appends: clear first, or stale addresses pile up until answers overflow
        _dns_call("clear-a", {"host": f"{h.name}.{LAB_DOMAIN}."})
        _dns_call("add-a", {"host": f"{h.name}.{LAB_DOMAIN}.", "addresses": [h.ip]})


def _dns_call(endpoint: str, payload: dict[str, object]) -> None:
    import urllib.request

    req = urllib.request.Request(f"http://{GATEWAY}:{DNS_MGMT_PORT}/{endpoint}", data=json.dumps(payload).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - fixed lab address
        resp.read()


# --------------------------------------------------------------------------- base image


def base_key() -> str:
    recipe = json.dumps([SUITE, MIRROR, BASE_PACKAGES, BASE_RECIPE_VERSION])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def base_dir() -> Path:
    return STATE_DIR / "base" / f"{SUITE}-{base_key()}"


def ensure_base(progress: bool = True) -> Path:
    """Build (once) and return the cached base root. Built in a temp dir and renamed: never half-built."""
    final = base_dir()
    if (final / ".opsbook-base").exists():
        return final
    ensure_apt_proxy()
    tmp = final.with_name(final.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, http_proxy=f"http://127.0.0.1:{APT_PROXY_PORT}")
    if progress:
        print(f"lab: building base image {final.name} with debootstrap (about 70 s, once)", flush=True)
    res = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(tmp), MIRROR],
        env=env, capture_output=True, text=True,
    )
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-20:])
        raise LabError(f"debootstrap failed:\n{tail}")
    _customise_base(tmp)
    (tmp / ".opsbook-base").write_text(base_key() + "\n")
    tmp.rename(final)
    # older bases are garbage now
    for old in final.parent.iterdir():
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def _customise_base(root: Path) -> None:
    (root / "etc/apt/apt.conf.d/01opsbook-lab-proxy").write_text(
        f'Acquire::http::Proxy "http://{GATEWAY}:{APT_PROXY_PORT}";\n'
    )
    (root / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
    )
    # lab hosts are thrown away, never power-cut: dpkg skips its fsyncs (about 10 % of a package install here, as
    # Debian's own container images do), and apt fetches no translations
    (root / "etc/dpkg/dpkg.cfg.d/opsbook-lab-unsafe-io").write_text("force-unsafe-io\n")
    (root / "etc/apt/apt.conf.d/03opsbook-lab-no-translations").write_text('Acquire::Languages "none";\n')
    # no resolver: lookups fail fast instead of stalling (LAB.md)
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("")
    # systemd-networkd configures host0 from a per-host file
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "systemd-networkd.service"
    if not link.exists():
        link.symlink_to("/lib/systemd/system/systemd-networkd.service")
    # host keys and machine-id are made per host
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    # no console gettys in a headless container
    for unit in ("console-getty.service", "getty@tty1.service"):
        mask = root / "etc/systemd/system" / unit
        if not mask.exists():
            mask.symlink_to("/dev/null")
    # the image starts from the point releases and security updates of the day it is built: otherwise every host
    # booted from it spends its first provisioning on the same upgrades (17 s a host measured)
    proxy = f"Acquire::http::Proxy=http://127.0.0.1:{APT_PROXY_PORT}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["chroot", str(root), "apt-get", "-o", proxy, "-q", "update"], env=env)
    run(["chroot", str(root), "apt-get", "-o", proxy, "-q", "-y", "-o", "DPkg::Options::=--force-confold", "upgrade"],
        env=env)
    run(["chroot", str(root), "apt-get", "clean"], check=False)


# --------------------------------------------------------------------------- hosts


def host_root(name: str) -> Path:
    return STATE_DIR / "hosts" / name / "rootfs"


def _prepare_root(h: Host, base: Path) -> None:
    root = host_root(h.name)
    if root.exists():
        shutil.rmtree(root.parent)
    root.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", str(base), str(root)])
    (root / ".opsbook-base").unlink(missing_ok=True)
    (root / "etc/hostname").write_text(h.name + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{h.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
    (root / "etc/machine-id").write_text(hashlib.md5(f"{h.name}{time.time()}".encode()).hexdigest() + "\n")  # noqa: S324
    # apt through the lab's proxy: one request per connection (a pipelined request lost when the proxy closed the
    # connection once left apt-get update waiting forever, its http method idle), a timeout and retries
    (root / "etc/apt/apt.conf.d/02opsbook-lab-robust").write_text(
        'Acquire::http::Pipeline-Depth "0";\nAcquire::http::Timeout "30";\nAcquire::Retries "3";\n'
    )
    (root / "etc/systemd/network/10-lab.network").write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={h.ip}/{SUBNET.prefixlen}\nGateway={GATEWAY}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    run(["ssh-keygen", "-A", "-f", str(root)])
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    pub = ensure_ssh_key().with_suffix(".pub").read_text()
    (ssh_dir / "authorized_keys").write_text(pub)
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    h.root = str(root)


def _write_known_hosts() -> None:
    lines = []
    for h in load_hosts():
        root = Path(h.root)
        for pub in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub")):
            kind, key = pub.read_text().split()[:2]
            lines.append(f"{h.ip} {kind} {key}")
            lines.append(f"{h.name} {kind} {key}")
    f = known_hosts()
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
    tmp.replace(f)


def _veth_name(ip: str) -> str:
    return f"olv{ip.rsplit('.', 1)[1]}"


def _setup_netns(h: Host) -> None:
    if Path(f"/run/netns/{h.netns}").exists():
        run(["ip", "netns", "del", h.netns], check=False)
    run(["ip", "link", "del", h.veth], check=False)
    run(["ip", "netns", "add", h.netns])
    run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "host0", "netns", h.netns])
    run(["ip", "link", "set", h.veth, "master", BRIDGE])
    run(["ip", "link", "set", h.veth, "up"])
    run(["ip", "-n", h.netns, "link", "set", "lo", "up"])


def start_host(h: Host, base: Path) -> Host:
    h.veth = _veth_name(h.ip)
    _prepare_root(h, base)
    _setup_netns(h)
    return _boot(h)


def _boot(h: Host) -> Host:
    """Boot the host's root (prepared) in its network namespace (set up)."""
    log = STATE_DIR / "hosts" / h.name / "console.log"
    cmd = [
        "systemd-nspawn", "-D", h.root, "--register=no", "--keep-unit", "--console=passive", "-b",
        f"--network-namespace-path=/run/netns/{h.netns}",
        "--capability=CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_PTRACE",
        f"--hostname={h.name}",
        "--resolv-conf=off",
        "--timezone=off",
    ]
    # /proc/sys/net of the host's own network namespace writable (net.* sysctls), the rest of /proc/sys read-only
    env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="network")
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                env=env)
    h.pid = proc.pid
    save_host(h)
    return h


def wait_ssh(h: Host, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(h.pid):
            log = Path(h.root).parent / "console.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise LabError(f"lab host {h.name} exited while booting:\n{tail}")
        try:
            with socket.create_connection((h.ip, 22), timeout=1) as s:
                s.settimeout(3)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise LabError(f"lab host {h.name} ({h.ip}) did not answer on SSH within {timeout:.0f} s")


def _kill_container(pid: int) -> None:
    """Stop a host whose root is thrown away next: SIGKILL to its init (nspawn's child, PID 1 of the container's PID
    namespace) ends every process in it at once, and nspawn exits after it. A clean poweroff (SIGTERM to nspawn) took
    15-45 s a host here, waiting on services' stop timeouts, for a disk that is deleted right after."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        for child in children.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
    if not _wait_exit(pid, 10):  # nspawn exits when its child is gone
        _terminate(pid, 10)


def stop_host(h: Host) -> None:
    if pid_alive(h.pid):
        _kill_container(h.pid)
    run(["ip", "link", "del", h.veth], check=False) if h.veth else None
    if Path(f"/run/netns/{h.netns}").exists():
        run(["ip", "netns", "del", h.netns], check=False)
    if h.root:
        root = Path(h.root)
        # nspawn mounts live in its own mount namespace; check none leaked into ours before deleting
        mounts = Path("/proc/self/mounts").read_text()
        if f" {root}" in mounts:
            run(["umount", "-R", "-l", str(root)], check=False)
        shutil.rmtree(root.parent, ignore_errors=True)
    host_state_file(h.name).unlink(missing_ok=True)
    if _infra_pid("challtestsrv"):
        with contextlib.suppress(OSError):
            _dns_call("clear-a", {"host": f"{h.name}.{LAB_DOMAIN}."})


# --------------------------------------------------------------------------- public operations


def up(hosts: list[Host], progress: bool = True, acme_cert_seconds: int | None = None) -> list[Host]:
    """Boot the given hosts (idempotent: running ones are left alone). Returns their state.

    Also makes sure the lab's services run: bridge, apt proxy, Pebble (ACME) with its mock DNS.
    acme_cert_seconds: make Pebble issue certificates valid that long (restarts Pebble when it changes).
    """
    require_root()
    require_tools()
    with lock():
        ensure_bridge()
        ensure_apt_proxy()
        ensure_pebble(acme_cert_seconds)
        ensure_ssh_key()
        ensure_secrets()
        base = ensure_base(progress)
        running = {h.name: h for h in load_hosts()}
        taken = {h.ip for h in running.values()}
        started: list[Host] = []
        result: list[Host] = []
        for want in hosts:
            cur = running.get(want.name)
            if cur and pid_alive(cur.pid):
                if want.ip and cur.ip != want.ip:
                    raise LabError(f"lab host {want.name} runs with {cur.ip}, the inventory says {want.ip}: "
                                   "run 'opsbook lab down' first")
                result.append(cur)
                continue
            if cur:
                stop_host(cur)  # stale state from a crashed run
                taken.discard(cur.ip)
            if not want.ip:
                want.ip = allocate_ip(taken)
            if want.ip in taken:
                raise LabError(f"address {want.ip} for {want.name} is already used by another lab host")
            taken.add(want.ip)
            if progress:
                print(f"lab: starting {want.name} ({want.ip})", flush=True)
            h = start_host(want, base)
            started.append(h)
            result.append(h)
        _write_known_hosts()
        register_dns(load_hosts())
    for h in started:
        wait_ssh(h)
    return result


def restart(names: list[str], progress: bool = True) -> list[Host]:
    """Power the hosts off (a clean shutdown of their systemd) and boot them again with the same root and address."""
    require_root()
    with lock():
        hosts = {h.name: h for h in load_hosts()}
        missing = [n for n in names if n not in hosts]
        if missing:
            raise LabError(f"not running in the lab: {', '.join(missing)}")
        for name in names:
            h = hosts[name]
            if progress:
                print(f"lab: restarting {name}", flush=True)
            if pid_alive(h.pid):
                _terminate(h.pid, 60)
            _boot(h)
    for name in names:
        wait_ssh(hosts[name])
    return [hosts[n] for n in names]


def down(names: list[str] | None = None, progress: bool = True) -> None:
    """Stop hosts (all when names is None) and, when none is left, the lab's bridge and proxy."""
    require_root()
    with lock():
        for h in load_hosts():
            if names is None or h.name in names:
                if progress:
                    print(f"lab: stopping {h.name}", flush=True)
                stop_host(h)
        _write_known_hosts()
        if not load_hosts():
            for name in ("pebble", "challtestsrv", "apt-cacher-ng"):
                stop_infra(name)
            if bridge_exists():
                run(["ip", "link", "del", BRIDGE], check=False)


def status() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for h in load_hosts():
        rows.append({
            "name": h.name, "ip": h.ip, "pid": h.pid, "running": pid_alive(h.pid),
            "ssh": port_open(h.ip, 22, 0.5), "groups": list(h.groups),
        })
    return rows


def infra_status() -> dict[str, object]:
    return {
        "bridge": bridge_exists(),
        "apt_proxy": bool(_infra_pid("apt-cacher-ng")),
        "acme": acme_directory_url() if _infra_pid("pebble") else None,
        "base_image": str(base_dir()) if (base_dir() / ".opsbook-base").exists() else None,
    }


def ssh_command(name: str, extra: list[str] | None = None) -> list[str]:
    hosts = {h.name: h for h in load_hosts()}
    if name not in hosts:
        raise LabError(f"no running lab host named {name}; 'opsbook lab status' lists them")
    return [
        "ssh", "-i", str(ssh_key()), "-o", f"UserKnownHostsFile={known_hosts()}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", f"root@{hosts[name].ip}", *(extra or []),
    ]

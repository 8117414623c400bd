"""opsbook status: the judgement of playbooks/status.yml, as Jinja filters (controller side).

The play only gathers raw results (systemctl show, the app's local fact, `opsbook-backup list --json`, the backup
metrics, the certificates); these filters turn them into the host's report (docs/results.md, `opsbook_status`) and
say what is a problem. Plain functions, unit-tested in tests/unit/test_status_filter.py.

    opsbook_status_metrics_files(config_results)   the metrics_file of each database's backup configuration
    opsbook_status(raw, now=..., ...)              the host's report (keys: host, checked_at, units, app, backups,
                                                   certificates, problems)
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

ISO = "%Y-%m-%dT%H:%M:%SZ"
UNIT_PROPERTY = re.compile(r"^(\w+)=(.*)$", re.MULTILINE)
METRIC = re.compile(r"^opsbook_backup_(\w+)\{[^}]*\} (\S+)$", re.MULTILINE)
WHY = {
    "firewall": "the firewall is not loaded (fix /etc/nftables.conf: nft -c -f); the services it guards stay down",
    "database": "the database is not running",
}


def _iso(ts: float) -> str:
    return time.strftime(ISO, time.gmtime(ts))


def _epoch(iso: str) -> float:
    return dt.datetime.strptime(iso, ISO).replace(tzinfo=dt.UTC).timestamp()


def _decoded(res: Mapping[str, Any] | None) -> str | None:
    """The text of a slurp result, or None when the file was not read."""
    if not isinstance(res, Mapping) or "content" not in res:
        return None
    try:
        return base64.b64decode(str(res["content"])).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def _said(res: Mapping[str, Any]) -> str:
    """What a failed command or module said (stderr of a command, else its msg)."""
    return str(res["stderr"] if "stderr" in res else res.get("msg", "?")).strip()


def _results(registered: Any) -> list[Mapping[str, Any]]:
    if isinstance(registered, Mapping):
        registered = registered.get("results") or []
    return [r if isinstance(r, Mapping) else {} for r in registered or []]


def _at(items: Sequence[Mapping[str, Any]], i: int) -> Mapping[str, Any]:
    return items[i] if i < len(items) else {}


# ---------------------------------------------------------------- units

def units(checks: Sequence[Mapping[str, str]], results: Any) -> list[dict[str, Any]]:
    """One entry per (what, unit) check from its `systemctl show` result: loaded and active, or a problem."""
    out = []
    res_list = _results(results)
    for i, check in enumerate(checks):
        res = _at(res_list, i)
        what, unit = str(check["what"]), str(check["unit"])
        state = dict(UNIT_PROPERTY.findall(str(res.get("stdout") or ""))) if res.get("rc", 1) == 0 else {}
        active = state.get("ActiveState")
        p = f"{what} {unit}: "
        why = WHY.get(what, "")
        problems = []
        if not state:
            problems.append(p + "cannot read its state: " + _said(res))
        elif state.get("LoadState", "") != "loaded":
            problems.append(f"{p}not installed ({state.get('LoadState')}); {why}")
        elif active != "active":
            problems.append(f"{p}{active} ({state.get('SubState', '?')}, result {state.get('Result', '?')}): {why}")
        out.append({
            "what": what, "unit": unit,
            "load_state": state.get("LoadState"), "active_state": active,
            "sub_state": state.get("SubState"), "result": state.get("Result"),
            "problems": problems,
            "summary": p + (f"{active} ({state.get('SubState', '?')})" if active else "unknown"),
        })
    return out


# ---------------------------------------------------------------- the app

def app(fact_result: Mapping[str, Any] | None, fact_file: str, required: bool) -> tuple[dict[str, Any] | None,
                                                                                       list[str]]:
    """The live release from the app role's local fact, and the problems (a required host without one)."""
    text = _decoded(fact_result)
    fact: Mapping[str, Any] | None = None
    if text is not None:
        try:
            loaded = json.loads(text)
            fact = loaded if isinstance(loaded, Mapping) else None
        except ValueError:
            fact = None
    if fact is None:
        why = (fact_result or {}).get("msg") or ("not JSON" if text is not None else "unreadable")
        return None, ([f"app: no live release ({fact_file}: {why})"] if required else [])
    name = fact.get("name")
    live = fact.get("live_version")
    problems = [f"app {name or '?'}: no live release"] if required and not live else []
    releases = list(fact.get("releases") or [])
    summary = (f"app {name or '?'}: "
               + (f"{live} live on {fact.get('live_colour') or '?'} since {fact.get('deployed_at') or '?'}"
                  if live else "no live release")
               + f"; previous {fact.get('previous_version') or 'none'}"
               + f"; releases on the host: {', '.join(str(r) for r in releases) or 'none'}")
    return {
        "name": name, "live_version": live, "live_colour": fact.get("live_colour"),
        "previous_version": fact.get("previous_version"), "releases": releases,
        "deployed_at": fact.get("deployed_at"), "problems": problems, "summary": summary,
    }, problems


# ---------------------------------------------------------------- backups

def metrics_files(config_results: Any) -> list[str]:
    """The metrics_file of each database's backup configuration ('' when not configured or not set)."""
    out = []
    for res in _results(config_results):
        text = _decoded(res)
        try:
            cfg = json.loads(text) if text is not None else {}
        except ValueError:
            cfg = {}
        out.append(str(cfg.get("metrics_file") or "") if isinstance(cfg, Mapping) else "")
    return out


def backup(database: str, config: Mapping[str, Any], listing: Mapping[str, Any], metrics: Mapping[str, Any],
           now: float, max_age_hours: float, config_dir: str) -> dict[str, Any]:
    """One database's newest verified backup, its age and the last run's result, with the problems."""
    configured = "content" in config
    listed = configured and listing.get("rc", 1) == 0
    dumps: list[Mapping[str, Any]] = []
    if listed:
        try:
            dumps = list(json.loads(str(listing.get("stdout") or "{}")).get("backups") or [])
        except (ValueError, AttributeError):
            listed = False
    good = [d for d in dumps if d.get("latest_good")]
    newest = good[-1] if good else None
    age_seconds = now - _epoch(str(newest["snapshot_time"])) if newest is not None else None
    age_hours = round(age_seconds / 3600, 1) if age_seconds is not None else None
    text = _decoded(metrics)
    values = dict(METRIC.findall(text)) if text is not None else {}
    last_run_at = _iso(float(values["last_run_timestamp_seconds"])) if "last_run_timestamp_seconds" in values else None
    last_run_ok = float(values["last_run_success"]) == 1 if "last_run_success" in values else None
    verification = (("passed" if float(values["verification_success"]) == 1 else "failed")
                    if "verification_success" in values else None)
    p = f"backup {database}: "
    problems = []
    if not configured:
        problems.append(f"{p}not configured on this host ({config_dir}/{database}.json is missing; "
                        "run opsbook provision)")
    if configured and not listed:
        problems.append(p + "cannot list the backups: " + _said(listing))
    if listed and not dumps and not values:
        problems.append(p + "never ran (no backup, no metrics)")
    if listed and newest is None and (dumps or values):
        problems.append(f"{p}no verified backup ({len(dumps)} backups, none passed verification)")
    if age_seconds is not None and age_seconds > max_age_hours * 3600:
        problems.append(f"{p}stale: the newest verified backup is {age_hours} h old (limit {max_age_hours} h)")
    if last_run_ok is False:
        problems.append(f"{p}the last run ({last_run_at}) failed: "
                        + ("verification passed, the off-host copy or pruning failed" if verification == "passed"
                           else "dump or restore verification failed"))
    summary = p + (f"newest verified {newest['file']} (snapshot {newest['snapshot_time']}, {age_hours} h old)"
                   if newest is not None else "no verified backup")
    summary += "; last run " + (f"{last_run_at} {'ok' if last_run_ok else 'FAILED'}, verification "
                                f"{verification or 'unknown'}" if last_run_at else "unknown")
    return {
        "database": database,
        "newest_verified": newest["file"] if newest is not None else None,
        "newest_verified_at": newest["snapshot_time"] if newest is not None else None,
        "age_hours": age_hours, "max_age_hours": max_age_hours, "backups": len(dumps),
        "last_run_at": last_run_at, "last_run_success": last_run_ok, "verification": verification,
        "problems": problems, "summary": summary,
    }


# ---------------------------------------------------------------- certificates

def _cert_info(pem: str) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem.encode())

    def attr(oid: x509.ObjectIdentifier) -> str | None:
        found = cert.issuer.get_attributes_for_oid(oid)
        return str(found[0].value) if found else None

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) if isinstance(n, x509.DNSName) else f"{type(n).__name__}:{n.value}" for n in san]
    except x509.ExtensionNotFound:
        names = []
    return {"not_after": cert.not_valid_after_utc.timestamp(), "names": names,
            "issuer": attr(NameOID.COMMON_NAME) or attr(NameOID.ORGANIZATION_NAME) or "?"}


def certificate(res: Mapping[str, Any], now: float, min_days: int) -> dict[str, Any]:
    """One certificate (a slurp of DIR/cert.pem; res.item is DIR): the days left, or a problem."""
    path = str(res.get("item") or "?")
    name = os.path.basename(path)
    p = f"certificate {name}: "
    text = _decoded(res)
    info: dict[str, Any] | None = None
    why = str(res.get("msg") or "?")
    if text is not None:
        try:
            info = _cert_info(text)
        except ValueError as exc:
            why = f"not a PEM certificate ({exc})"
    days_left = math.floor((info["not_after"] - now) / 86400) if info else None
    not_after = _iso(info["not_after"]) if info else None
    problems = []
    if info is None:
        problems.append(f"{p}cannot read {path}/cert.pem: {why}")
    elif days_left is not None and days_left < 0:
        problems.append(f"{p}EXPIRED at {not_after}")
    elif days_left is not None and days_left < min_days:
        problems.append(f"{p}expires in {days_left} days ({not_after}; limit {min_days} days)")
    return {
        "name": name, "path": f"{path}/cert.pem", "names": info["names"] if info else [],
        "issuer": info["issuer"] if info else None, "not_after": not_after, "days_left": days_left,
        "min_days": min_days, "problems": problems,
        "summary": p + (f"{days_left} days left (expires {not_after}, issuer {info['issuer']})" if info
                        else "unreadable"),
    }


# ---------------------------------------------------------------- the report

def opsbook_status(raw: Mapping[str, Any], host: str, now: float | None = None, max_age_hours: float = 26,
                   min_days: int = 14, app_required: bool = False, cert_required: bool = False,
                   app_fact_file: str = "", cert_dir: str = "", backup_config_dir: str = "") -> dict[str, Any]:
    """The host's report from the play's raw results.

    RAW keys (registered results of playbooks/status.yml): unit_checks + unit_states, app_fact, databases +
    backup_configs + backup_lists + backup_metrics, cert_files."""
    now = time.time() if now is None else float(now)
    max_age_hours, min_days = float(max_age_hours), int(min_days)
    unit_entries = units(raw.get("unit_checks") or [], raw.get("unit_states"))
    app_entry, app_problems = app(raw.get("app_fact"), app_fact_file, bool(app_required))
    configs, lists, metrics = (_results(raw.get(k)) for k in ("backup_configs", "backup_lists", "backup_metrics"))
    backups = [backup(str(db), _at(configs, i), _at(lists, i), _at(metrics, i), now, max_age_hours,
                      backup_config_dir) for i, db in enumerate(raw.get("databases") or [])]
    certificates = [certificate(r, now, min_days) for r in _results(raw.get("cert_files"))]
    problems = [p for u in unit_entries for p in u["problems"]] + app_problems
    problems += [p for b in backups for p in b["problems"]]
    if cert_required and not certificates:
        problems.append(f"certificates: none in {cert_dir}")
    problems += [p for c in certificates for p in c["problems"]]
    return {"host": host, "checked_at": _iso(now), "app": app_entry, "backups": backups,
            "certificates": certificates, "units": unit_entries, "problems": problems}


class FilterModule:
    """opsbook's status filters."""

    def filters(self) -> dict[str, Any]:
        return {"opsbook_status": opsbook_status, "opsbook_status_metrics_files": metrics_files}

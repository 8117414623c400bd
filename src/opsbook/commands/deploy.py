"""opsbook deploy / rollback / releases: the app on the web hosts (playbooks/deploy.yml, rollback.yml, releases.yml)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from opsbook import options, paths, runner, values
from opsbook.oplock import add_wait, lock_extravars

# the run statistics the playbooks publish (set_stats, docs/results.md): {host: ...}; never a task's name
RELEASES = "opsbook_releases"


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    d = sub.add_parser(
        "deploy",
        help="deploy a release: blue/green, health-gated, one host at a time",
        formatter_class=formatter,
        parents=[options.playbook()],
        description=(
            "Run playbooks/deploy.yml. The new release starts on the idle colour, must answer its health check "
            "N times in a row, then live.sock (nginx's upstream) is swapped to it, it is checked again through "
            "nginx (switched back by itself if that fails) and the old colour is drained and stopped. An unhealthy "
            "release is never cut over to. Hosts go one at a time; the rollout stops at the first refusal."
        ),
        epilog=(
            "TARGET is one of:\n"
            "  2.0.0                    a version: built from the inventory's app_source_dir unless already built\n"
            "  path/to/app/             an app's source (a Python project; kind node: a Node.js project with its\n"
            "                           lockfile); --version sets its VERSION file (or package.json's version)\n"
            "  path/to/app-2.0.0.tar.gz an artifact made by roles/app/files/opsbook-app-build\n"
            "\nexamples:\n"
            "  opsbook deploy 2.0.0\n"
            "  opsbook deploy examples/app --version 2.1.0\n"
            "  opsbook deploy 2.0.0 --serial 2 -i inventories/prod\n"
            "  opsbook deploy 2.0.0 --wait 300     wait for a host that another run holds (default: refused)"
        ),
    )
    d.add_argument("target", metavar="TARGET")
    d.add_argument("--version", type=values.version, help="with a source directory: the version to build it as")
    d.add_argument("--serial", type=values.positive_int, default=1, metavar="N",
                   help="hosts deployed at a time (default 1)")
    add_wait(d)
    d.set_defaults(func=run_deploy)

    r = sub.add_parser(
        "rollback",
        help="go back to the previous (or a named) release, through the same health gate",
        formatter_class=formatter,
        parents=[options.playbook()],
        description="Run playbooks/rollback.yml: the releases are on the hosts already, nothing is built or shipped.",
        epilog="examples:\n  opsbook rollback\n  opsbook rollback --to 1.0.0",
    )
    r.add_argument("--to", default="", type=values.optional_version, metavar="VERSION",
                   help="release to go back to (default: the previous one)")
    r.add_argument("--serial", type=values.positive_int, default=1, metavar="N",
                   help="hosts rolled back at a time (default 1)")
    add_wait(r)
    r.set_defaults(func=run_rollback)

    s = sub.add_parser("releases", help="the releases on each web host and which one is live",
                       formatter_class=formatter, parents=[options.playbook()],
                       description="Run playbooks/releases.yml (read-only).")
    s.add_argument("--json", action="store_true", help="print the state as JSON")
    s.set_defaults(func=run_releases)


def build_script() -> Path:
    return paths.project_root() / "roles" / "app" / "files" / "opsbook-app-build"


def checked_version(value: Any, where: str) -> str:
    """VALUE if it is a version (values.VERSION, a full match), else exit 1 saying WHERE it came from."""
    try:
        if not isinstance(value, str):
            raise argparse.ArgumentTypeError(f"a version is a string (got {value!r})")
        return values.version(value)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"opsbook deploy: {where}: {exc}") from None


def build_artifact(source: Path, version: str | None, name: str = "app") -> dict[str, Any]:
    """Build SOURCE's artifact now, on the controller (opsbook-app-build; an existing one of that version is reused)."""
    cmd = [sys.executable, str(build_script()), str(source.resolve()), "--name", name,
           "--out", str(paths.state_dir() / "build")]
    if version:
        cmd += ["--version", version]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr.strip() or res.stdout.strip())
    built: dict[str, Any] = json.loads(res.stdout)
    print(f"built {built['artifact']} ({'reused' if built['reused'] else 'new'})", file=sys.stderr)
    return built


def source_version(source: Path) -> str | None:
    """The version a source directory declares in its top-level VERSION file (None without one)."""
    try:
        return (source / "VERSION").read_text().strip() or None
    except OSError:
        return None


def target_vars(target: str, version: str | None, name: str = "app") -> dict[str, Any]:
    """Extra vars for a deploy TARGET: a version, an app source directory or an artifact tarball.

    A source directory is built by the playbook (the app role, on the controller) once it holds the hosts'
    operation lock, so that a busy host refuses the run before any build; the version comes from --version or the
    source's VERSION file. Only a source that declares neither is built here first, to learn its version."""
    path = Path(target)
    if path.is_dir():
        declared = version or source_version(path)
        if declared is None:
            built = build_artifact(path, None, name)
            return {"app_version": checked_version(built["version"], f"the version of {target}"),
                    "app_artifact": built["artifact"], "app_source_dir": ""}
        return {"app_version": checked_version(declared, f"the version of {target} (its VERSION file)"),
                "app_source_dir": str(path.resolve()), "app_artifact": "",
                "app_artifact_dir": str(paths.state_dir() / "build")}
    if target.endswith((".tar.gz", ".tgz")):
        if not path.is_file():
            raise SystemExit(f"opsbook deploy: no artifact at {target}")
        with tarfile.open(path) as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise SystemExit(f"opsbook deploy: {target} has no manifest.json (not an opsbook-app-build artifact)")
            manifest = json.loads(member.read())
        return {"app_version": checked_version(manifest.get("version"), f"the manifest of {target}"),
                "app_artifact": str(path.resolve()), "app_source_dir": ""}
    if version:
        raise SystemExit("opsbook deploy: --version goes with a source directory, not a version")
    return {"app_version": checked_version(target, "TARGET (no such directory or .tar.gz artifact)")}


def run_deploy(args: argparse.Namespace) -> int:
    _, extra = options.user_extravars(args.extra_vars)  # -e app_name names a build (-e itself goes to Ansible)
    extravars = {**target_vars(args.target, args.version, str(extra.get("app_name", "app"))),
                 "app_serial": args.serial, **lock_extravars(args)}
    result = runner.run_playbook("deploy.yml", inventory=args.inventory, limit=args.limit, check=args.check,
                                 extravars=extravars, verb="deploy", quiet=args.quiet, ansible=options.ansible(args),
                                 lock=("web", f"deploy {extravars['app_version']}"))
    print("\n".join(outcome_lines(result.results, "opsbook_deploy")))
    return runner.exit_code(result)


def run_rollback(args: argparse.Namespace) -> int:
    extravars = {"app_rollback_to": args.to, "app_serial": args.serial, **lock_extravars(args)}
    result = runner.run_playbook("rollback.yml", inventory=args.inventory, limit=args.limit, check=args.check,
                                 extravars=extravars, verb="rollback", quiet=args.quiet, ansible=options.ansible(args),
                                 lock=("web", "rollback" + (f" to {args.to}" if args.to else "")))
    print("\n".join(outcome_lines(result.results, "opsbook_rollback")))
    return runner.exit_code(result)


def outcome_lines(results: dict[str, Any], key: str) -> list[str]:
    """Per host that went through: what is live now (the statistic KEY: opsbook_deploy or opsbook_rollback)."""
    lines = []
    for host, o in sorted((results.get(key) or {}).items()):
        if not isinstance(o, dict):
            continue
        if o.get("check"):
            lines.append(f"{host}: would go from {o.get('was') or 'nothing'} to {o.get('version')} (check mode)")
        elif o.get("switched"):
            lines.append(f"{host}: {o.get('version')} live ({o.get('colour')}), was {o.get('was') or 'nothing'}")
        else:
            lines.append(f"{host}: {o.get('version')} live already ({o.get('colour') or '?'}), nothing switched")
    return lines


def releases_table(states: dict[str, dict[str, Any]]) -> list[str]:
    """Plain lines: per host the live release and colour, the previous one, and every release on the host."""
    lines = []
    for host, st in sorted(states.items()):
        if "error" in st:
            lines.append(f"{host}: {st['error']}")
            continue
        live = f"{st.get('live_version')} ({st.get('live_colour')})" if st.get("live_version") else "nothing live"
        rels = []
        for r in st.get("releases", []):
            mark = "*" if r["version"] == st.get("live_version") else ""
            mark += "" if r.get("complete") else " (unfinished)"
            rels.append(f"{r['version']}{mark}")
        lines.append(f"{host}: live {live}; previous {st.get('previous_version') or '-'}; "
                     f"releases: {', '.join(rels) or '-'}")
    return lines


def release_states(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each web host's release state (or {'error': ...}) from a releases run's results."""
    return {str(h): dict(st) for h, st in (results.get(RELEASES) or {}).items() if isinstance(st, dict)}


def run_releases(args: argparse.Namespace) -> int:
    result = runner.run_playbook("releases.yml", inventory=args.inventory, limit=args.limit, check=args.check,
                                 verb="releases", quiet=True, ansible=options.ansible(args))
    states = release_states(result.results)
    if args.json:
        print(json.dumps(states, indent=2, sort_keys=True))
    else:
        print("\n".join(releases_table(states)) or "no web hosts answered")
    return runner.exit_code(result)

"""`tunerd platform`: show the clusters and thermal zones tunerd sees, and where they come from."""
from __future__ import annotations

import json

from ..platform.clusters import Platform, effective_speed
from ..platform.spec import SPEC_HELP, resolve_platform
from ..platform.sysfs import format_cpu_list


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "platform", help="show the CPU clusters and thermal zones",
        description="Show the platform: its source (auto, emulate, board), clusters and thermal zones.")
    parser.add_argument("--platform", default="auto", metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--sysfs-root", default="/sys", metavar="DIR",
                        help="the directory that plays /sys (a fake tree: DIR/sys); default /sys")
    parser.add_argument("--proc-root", default=None, metavar="DIR",
                        help="the directory that plays /proc; default: 'proc' next to the sysfs root")
    parser.add_argument("--json", action="store_true",
                        help="print the platform as JSON (Platform.to_dict() and each cluster's effective_speed now)")
    parser.set_defaults(func=run)


def run(args) -> int:
    platform = resolve_platform(args.platform, sysfs_root=args.sysfs_root, proc_root=args.proc_root)
    if args.json:
        print(json.dumps(platform_json(platform, args.sysfs_root), indent=2))
    else:
        print(render(platform, args.sysfs_root))
    return 0


def _effective(platform: Platform, cluster, sysfs_root) -> float:
    return cluster.speed if platform.source == "board" else effective_speed(cluster, sysfs_root)


def platform_json(platform: Platform, sysfs_root: str = "/sys") -> dict:
    """Platform.to_dict() with each cluster's ``effective_speed`` now (what the table shows as EFF)."""
    data = platform.to_dict()
    for entry, cluster in zip(data["clusters"], platform.clusters):
        entry["effective_speed"] = round(_effective(platform, cluster, sysfs_root), 4)
    return data


def render(platform: Platform, sysfs_root: str = "/sys") -> str:
    """The platform as aligned tables; EFF is the effective speed now (emulated DVFS shows there),
    the slowest of a cluster's policies; THREADS (with SMT) every hardware thread of its cores."""
    spec = f"  ({platform.spec})" if platform.spec not in ("", "auto") else ""
    lines = [f"source: {platform.source}{spec}"]
    smt = any(c.smt_siblings for c in platform.clusters)
    rows = []
    for c in platform.clusters:
        eff = _effective(platform, c, sysfs_root)
        rows.append([c.name, c.core_type, format_cpu_list(c.cpus), _opt(c.capacity), _mhz(c.min_khz),
                     _mhz(c.cur_khz), _mhz(c.max_khz), str(len(c.policies or [c.policy] * bool(c.policy))), f"{c.speed:.2f}",
                     f"{eff:.2f}"] + ([format_cpu_list(c.threads)] if smt else []))
    headers = ["CLUSTER", "CORE", "CPUS", "CAPACITY", "MIN MHz", "CUR MHz", "MAX MHz", "POLICIES", "SPEED",
               "EFF"] + (["THREADS"] if smt else [])
    lines += table(headers, rows)
    if platform.thermal:
        lines.append("")
        zones = [[z.name, z.type, "-" if z.temp_c is None else f"{z.temp_c:.1f}",
                  " ".join(f"{t.temp_mc / 1000:g}/{t.type}" for t in z.trips) or "-"]
                 for z in platform.thermal]
        lines += table(["ZONE", "TYPE", "TEMP C", "TRIPS (C/type)"], zones)
    else:
        lines.append("thermal zones: none")
    return "\n".join(lines)


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in [headers, *rows]]


def _opt(value) -> str:
    return "-" if value is None else str(value)


def _mhz(khz: int | None) -> str:
    return "-" if khz is None else f"{khz / 1000:g}"

#!/usr/bin/env python3
"""Write a fake sysfs/procfs tree: a real board's, or the cpufreq files of an emulated platform.

    python tools/make_sysfs.py hikey970 DIR                       # DIR/sys + DIR/proc/cpuinfo
    python tools/make_sysfs.py jetson-tx2 DIR --online 0,3-5      # Denver cores hot-unplugged
    python tools/make_sysfs.py emulate:big=0@1.0,little=1@0.5 DIR

Prints the directory to pass as --sysfs-root (DIR/sys). The generator is tunerd.platform.fakesysfs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import tunerd  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunerd.errors import TunerdError
from tunerd.platform.fakesysfs import BOARDS, make_emulated_tree, make_tree
from tunerd.platform.sysfs import parse_cpu_list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", help=f"a board ({', '.join(sorted(BOARDS))}) or emulate:NAME=CPUS@SPEED,...")
    parser.add_argument("dir", type=Path, help="the fake filesystem root to write (DIR/sys, DIR/proc)")
    parser.add_argument("--online", metavar="CPUS", help="boards: only these CPUs online, e.g. 0,3-5")
    parser.add_argument("--max-khz", type=int, default=2_000_000, help="emulate: cpuinfo_max_freq (kHz)")
    args = parser.parse_args(argv)
    try:
        if args.what.startswith("emulate:"):
            sys_root = make_emulated_tree(args.what, args.dir, max_khz=args.max_khz)
        else:
            online = parse_cpu_list(args.online) if args.online is not None else None
            sys_root = make_tree(args.what, args.dir, online=online)
    except (TunerdError, ValueError, OSError) as err:
        print(f"make_sysfs: {err}", file=sys.stderr)
        return 1
    print(sys_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())

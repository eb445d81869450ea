#!/usr/bin/env python3
"""Print (or --write into docs/metrics.md) the table of the daemon's Prometheus metrics.

The table is made by the code that makes the metrics (tunerd.daemon.metrics.families, over a
snapshot with every field set), and tests/test_metrics.py fails when docs/metrics.md holds another
one or when a live daemon serves a metric the table lacks: run this with --write after changing a metric.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tunerd.daemon.metrics import example_snapshot, metrics_table  # noqa: E402

DOC = ROOT / "docs" / "metrics.md"
BEGIN, END = "<!-- metrics table: tools/metrics_table.py --write -->", "<!-- end of metrics table -->"


def replace_table(text: str, table: str) -> str:
    head, sep, rest = text.partition(BEGIN)
    if not sep or END not in rest:
        raise SystemExit(f"{DOC}: no {BEGIN} ... {END} block to fill")
    return head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"replace the table in {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    table = metrics_table(example_snapshot())
    if args.write:
        DOC.write_text(replace_table(DOC.read_text(), table))
        print(f"wrote the table into {DOC}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Draw a saved `tunerctl history --json` as the convergence plot (what `tunerctl history --plot` draws).

    tunerctl history --json > history.json
    python tools/plot_convergence.py history.json -o convergence.png

Needs matplotlib (pip install 'tunerd[plot]').
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tunerd.errors import TunerdError  # noqa: E402
from tunerd.wire.convergence_plot import plot_convergence, plural  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("history", help="a file of `tunerctl history --json` ('-': standard input)")
    parser.add_argument("-o", "--output", default="convergence.png", help="the PNG to write (default convergence.png)")
    parser.add_argument("--title", help="the plot's title (default: evaluations and retunes)")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.history == "-" else Path(args.history).read_text()
        reply = json.loads(text)
        if not isinstance(reply, dict):
            raise TunerdError("not a `tunerctl history --json` map")
        drawn = plot_convergence(reply, args.output, title=args.title)
    except (OSError, ValueError, TunerdError) as err:
        print(f"plot_convergence: {err}", file=sys.stderr)
        return 1
    print(f"wrote {drawn['path']}: {plural(drawn['evaluations'], 'evaluation')}, {plural(drawn['retunes'], 'retune')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

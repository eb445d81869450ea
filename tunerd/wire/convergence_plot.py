"""The convergence plot: a daemon's evaluations (``tunerctl history --json``) as a PNG.

Two panels, fps against evaluation number and against time: every measured config as a point
(coloured by the tuner's state when it was measured), the best so far as a step line, each retune
as a vertical line labelled with its cause, and the best single-cluster config measured (what a
user gets without a pipeline across clusters) as a dashed reference line. The best-so-far and the
reference restart at each retune: a throttled board measures lower from then on, and a best from
before would hide the new search.

``episodes`` is pure (tested without matplotlib); ``plot_convergence`` draws with matplotlib, an
optional extra (``pip install tunerd[plot]``), imported only here and only when called.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import TunerdError
from ..pipeconfig import parse_config

STATE_COLOURS = {"tuning": "tab:blue", "retuning": "tab:orange", "converged": "tab:green",
                 "pinned": "tab:purple", "idle": "tab:gray"}


@dataclass
class Episode:
    """One search and what follows it: from the start or a retune to the next retune."""
    cause: str | None                      # None: the first search
    start_time: float | None
    points: list[dict] = field(default_factory=list)   # history entries: index, time, fps, state, config

    @property
    def baseline_fps(self) -> float | None:
        single = [p["fps"] for p in self.points if is_single_cluster(p.get("config"))]
        return max(single) if single else None


def is_single_cluster(config: Any) -> bool:
    try:
        return len({stage.cluster for stage in parse_config(str(config)).stages}) == 1
    except TunerdError:
        return False


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def episodes(reply: dict) -> list[Episode]:
    """Split a ``history`` reply into episodes at its retunes (``retunes``: after_evaluation, time,
    reason). Replies of daemons without ``retunes`` are split where the state turns to retuning."""
    # copies: the caller's reply is not changed (its entries get an index where they lack one)
    history = [dict(h) for h in reply.get("history") or [] if isinstance(h, dict) and _number(h.get("fps"))]
    if not history:
        raise TunerdError("no evaluations to plot yet (the tuner starts with the first frames)")
    for i, h in enumerate(history):
        h.setdefault("index", i + 1)
    retunes = [r for r in reply.get("retunes") or [] if isinstance(r, dict) and _number(r.get("after_evaluation"))]
    if "retunes" not in reply:
        prev = None
        for h in history:
            if h.get("state") == "retuning" and prev not in (None, "retuning"):
                retunes.append({"after_evaluation": h["index"] - 1, "time": h.get("time"), "reason": "retune"})
            prev = h.get("state")
    out = [Episode(None, history[0].get("time"))]
    pending = sorted(retunes, key=lambda r: r["after_evaluation"])
    for h in history:
        while pending and h["index"] > pending[0]["after_evaluation"]:
            r = pending.pop(0)
            out.append(Episode(str(r.get("reason") or "retune"), r.get("time") if _number(r.get("time")) else h.get("time")))
        out[-1].points.append(h)
    return [e for e in out if e.points or e.cause is not None]


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise TunerdError("plotting needs matplotlib: pip install 'tunerd[plot]'") from err
    return Figure


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def plot_convergence(reply: dict, path: str, *, title: str | None = None) -> dict:
    """Write the plot of ``reply`` (a ``history`` reply) to ``path`` (PNG); returns what it drew."""
    eps = episodes(reply)
    Figure = _matplotlib()
    fig = Figure(figsize=(10, 7), layout="constrained")
    by_index, by_time = fig.subplots(2, 1)
    t0 = next((p["time"] for e in eps for p in e.points if _number(p.get("time"))), None)
    for ax, x_of, label in ((by_index, lambda p: p["index"], "evaluation"),
                            (by_time, lambda p: p["time"] - t0 if _number(p.get("time")) and t0 is not None
                             else None, "seconds since the first evaluation")):
        seen_states, baseline_labelled = set(), False
        for n, ep in enumerate(eps):
            pts = [p for p in ep.points if x_of(p) is not None]
            for state in sorted({p.get("state", "?") for p in pts}):
                mine = [p for p in pts if p.get("state", "?") == state]
                ax.scatter([x_of(p) for p in mine], [p["fps"] for p in mine], s=18, zorder=3,
                           color=STATE_COLOURS.get(state, "black"),
                           label=None if state in seen_states else f"measured ({state})")
                seen_states.add(state)
            if pts:
                best, xs, ys = 0.0, [], []
                for p in pts:
                    best = max(best, p["fps"])
                    xs.append(x_of(p))
                    ys.append(best)
                ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="best so far" if n == 0 else None)
                if ep.baseline_fps is not None:
                    ax.hlines(ep.baseline_fps, xs[0], xs[-1], colors="gray", linestyles="--",
                              label=None if baseline_labelled else "best single-cluster config")
                    baseline_labelled = True
            if ep.cause is not None:
                first = ep.points[0] if ep.points else None
                x = (first["index"] - 0.5 if ax is by_index else
                     (ep.start_time - t0 if _number(ep.start_time) and t0 is not None else None)) if first else None
                if x is not None:
                    ax.axvline(x, color="tab:red", linestyle=":", linewidth=1.2)
                    ax.annotate(_short(f"retune: {ep.cause}"), (x, 1.0), xycoords=("data", "axes fraction"),
                                rotation=90, va="top", ha="right", fontsize=7, color="tab:red")
        ax.set_xlabel(label)
        ax.set_ylabel("fps")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    by_index.legend(loc="lower right", fontsize=8)
    n = sum(len(e.points) for e in eps)
    fig.suptitle(title or f"tunerd convergence: {n} evaluations, {plural(len(eps) - 1, 'retune')}")
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as err:      # ValueError: a file name matplotlib has no format for
        raise TunerdError(f"cannot write the plot to {path}: {err}") from err
    return {"path": str(path), "evaluations": n, "retunes": len(eps) - 1,
            "baselines": [e.baseline_fps for e in eps]}

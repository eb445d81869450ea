"""Tuner states (DESIGN.md): constants only, importing nothing."""

IDLE = "idle"            # no frames yet
TUNING = "tuning"        # searching: configs are being evaluated live
CONVERGED = "converged"  # serving the best config found
RETUNING = "retuning"    # searching again after a cpufreq/thermal/drift event, warm-started
PINNED = "pinned"        # an operator pinned a config; no search

ALL = (IDLE, TUNING, CONVERGED, RETUNING, PINNED)
SEARCHING = (TUNING, RETUNING)

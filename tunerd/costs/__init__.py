"""The costs wing: what each unit is predicted to cost on each core type and core count.

Owns the analytic cost model (costmodel), calibration of its coefficients on this machine (calibrate)
and the hint files the tuner starts from (hints). It may import the ground floor, tunerd.model (to
count FLOPs and run synthetic layers) and tunerd.platform; never the search, pipeline or daemon.
"""

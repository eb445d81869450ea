"""The costs wing: what each unit is predicted to cost on each core type and core count.

Owns the analytic cost model (costmodel), calibration of its coefficients on this machine (calibrate;
the sweep's layers in calibration_sweep, the pinned measuring processes in calibration_child, the fit
in calibration_fit, the file in calibration_file) and the hint files the tuner starts from (hints).
It may import the ground floor, tunerd.model (to count FLOPs and build synthetic layers),
tunerd.platform and tunerd.backends (calibrations and hints are per backend: the measuring child
runs the sweep through the backend's runners); never the search, pipeline or daemon.
"""

"""The platform wing: which CPUs there are, in which clusters, at which speed now.

Owns sysfs reading (sysfs: one root-configurable reader, pure parsers), the cluster and platform
data (clusters), cluster discovery from sysfs (discovery), the platform specs auto/emulate:/board:
(spec), fake sysfs trees for tests and emulation (fakesysfs), and board files of simulated boards
(boards). It may import the ground floor only (tunerd.errors, tunerd.files, tunerd.pipeconfig).
"""

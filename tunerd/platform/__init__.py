"""The platform wing: which CPUs there are, in which clusters, at which speed now.

Owns sysfs reading (sysfs: one root-configurable reader, pure parsers), cluster discovery and the
platform specs auto/emulate:/board: (clusters), fake sysfs trees for tests and emulation (fakesysfs),
and board files of simulated boards (boards). It may import the ground floor only (tunerd.errors,
tunerd.files, tunerd.pipeconfig).
"""

"""The pipeline wing: running a config as pinned worker processes over shared memory.

Owns the executor that starts stages, feeds frames and reconfigures live (executor; its worker handles
and epochs in epochs, its stats and host placement in reports, the records it hands out in outcomes),
the stage worker process (worker), the shared-memory rings (shm), the per-unit times measured from the
stages (measured_costs) and the in-process benchmark (bench). It may import the ground floor,
tunerd.model and tunerd.platform; never the search, the daemon or the wire.
"""

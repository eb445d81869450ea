"""The tuning wing: choosing a pipeline config, as pure logic over cost tables.

Owns the throughput model (throughput), the genome and its operators (genome), the design-space
exploration (dse), the online tuner (tuner; its surrogate cost table in surrogate, its proposal
sources in proposals, its choice of live evaluations and convergence in choice) and its states
(states), and the board simulator (simulator). The unit cost table it reads is tunerd.costs.table.
It may import the ground floor, tunerd.platform (board files) and tunerd.costs; it never starts a
process and never imports the pipeline, the daemon or the wire: the daemon drives it.
"""

"""The tuning wing: choosing a pipeline config, as pure logic over cost tables.

Owns the throughput model (throughput), the genome and its operators (genome), the design-space
exploration (dse), the online tuner (tuner) and its states (states), and the board simulator
(simulator). It may import the ground floor, tunerd.platform (board files) and tunerd.costs; it never
starts a process and never imports the pipeline, the daemon or the wire: the daemon drives it.
"""

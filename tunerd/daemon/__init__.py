"""The daemon wing: the resident service that serves frames and tunes while it serves.

Owns the poll loop and the frame path (server), its two sockets (sockets), the control commands and
status (control), live evaluation of candidate configs (live), the DVFS and thermal monitor
(monitor), the persisted tuned state (state), the TOML config (config) and systemd notification
(sdnotify). It may import every wing except tunerd.commands.
"""

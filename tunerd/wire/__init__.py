"""The wire wing: the daemon's protocol and the processes on the other end of it.

Owns the message formats and limits (protocol), the Python client (client), `tunerctl` (ctl) and
CURVE keys and settings (security). It may import the ground floor only: a client never loads a model
or starts a pipeline.
"""

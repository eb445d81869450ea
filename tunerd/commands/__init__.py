"""The commands wing: the `tunerd` command line (cli) and one module per sub-command.

Each sub-command module exposes register(subparsers). It may import any wing; nothing imports it.
"""

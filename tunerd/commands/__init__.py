"""Sub-commands of the `tunerd` CLI, one module each (see tunerd.cli)."""

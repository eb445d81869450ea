"""One root error class for everything tunerd raises on purpose; entry points catch it."""


class TunerdError(Exception):
    """Base class: a failure with a message meant for the user (no traceback needed)."""


class ModelError(TunerdError, ValueError):
    """A model cannot be loaded or run: bad file, unsupported op, wrong input."""


class UnsupportedOpError(ModelError):
    """The graph uses an operator (or attribute) tunerd has no kernel for."""


class ConfigError(TunerdError, ValueError):
    """A pipeline config, platform spec or configuration file is invalid."""


class PlatformError(TunerdError):
    """The platform (sysfs, CPUs, emulation) cannot be read or used."""


class HintsError(TunerdError, ValueError):
    """A hints or board file is missing fields, has the wrong version, or does not match."""

"""The package version, on its own so the wire protocol and the ctl need not import the package face."""
__version__ = "0.1.0"

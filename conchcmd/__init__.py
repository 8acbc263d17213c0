"""conchcmd: a small, hardened SSH server on Twisted Conch that serves a fixed set of ops commands."""

__version__ = "0.1.0"

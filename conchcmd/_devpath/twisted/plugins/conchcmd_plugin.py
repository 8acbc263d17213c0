"""Twisted plugin: makes `twistd conchcmd` available (installed as twisted/plugins/conchcmd_plugin.py)."""

from conchcmd.edge.twistd import service_maker

__all__ = ["service_maker"]

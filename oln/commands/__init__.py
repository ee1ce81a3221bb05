"""Handlers of the `oln` subcommands, one module per stage; importing registers them."""

from oln.commands import affinity, data, detector, evaluate, provenance, pseudo, report  # noqa: F401

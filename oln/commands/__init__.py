"""Handlers of the `oln` subcommands, one module per command, named after it.

Importing a command module registers it (`oln.commands.registry`); `oln.cli` imports them
all. This package's `__init__` imports nothing, so a stage's code (`oln.code_hash`) is its
own command module and what that imports.
"""

"""ACME's digit reader: the team's model, data, trainer, metrics and compression code.

A stand-in for a team's own repository, laid out as one: optcheck knows nothing of it except the
``module:function`` names its recipe gives (``recipes/acme.toml``).
"""

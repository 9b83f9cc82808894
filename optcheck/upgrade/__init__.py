"""Upgrades without fear: the shipped recipes run under candidate dependency versions and diffed
against today's, on one machine, in one command (``python -m optcheck.upgrade``; ``cli.py``).

    environment.py   today's environment with some requirements changed, built in seconds
    sessions.py      one side: pytest --optcheck over the recipes; the checkpoint probes
    probe.py         inside an environment: restore stage checkpoints, save their logits
    diff.py          the comparison as plain data, and what fails it
    render.py        terminal text and step-summary Markdown
    cli.py           the command
"""

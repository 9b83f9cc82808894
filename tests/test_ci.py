"""The README's two commands are the ones CI and the workflow run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ", 1)[0]  # the commands live above the first section
    return re.findall(r"```(?:bash|sh)?\n(.+?)\n```", head, flags=re.S)


def test_readme_starts_with_the_main_job_and_the_test_suite():
    main, suite = readme_commands()
    assert main.endswith("pytest --optcheck recipes")
    assert suite.endswith("pytest tests")
    assert main.startswith("python3 -m venv .venv") and suite.startswith("python3 -m venv .venv")


def test_ci_runs_the_readmes_test_command():
    _, suite = readme_commands()
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l and not l.startswith("#")]
    assert lines[-1] == suite
    assert "set -euo pipefail" in lines


def test_workflow_runs_the_readmes_commands():
    workflow = (ROOT / ".github" / "workflows" / "optcheck.yml").read_text()
    runs = [l.strip()[len("run: "):] for l in workflow.splitlines() if l.strip().startswith("run: ")]
    assert runs == readme_commands()

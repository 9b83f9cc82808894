"""The README's two commands are the ones CI and the workflow run; the workflow keeps the cache
and the reports the way the README says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ", 1)[0]  # the commands live above the first section
    return re.findall(r"```(?:bash|sh)?\n(.+?)\n```", head, flags=re.S)


def workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "optcheck.yml").read_text())


def steps() -> list[dict]:
    [job] = workflow()["jobs"].values()
    return job["steps"]


def test_readme_starts_with_the_main_job_and_the_test_suite():
    main, suite = readme_commands()
    args = shlex.split(main.split("&&")[-1])
    assert args[:3] == [".venv/bin/pytest", "--optcheck", "recipes"] and "-n" in args
    assert suite.endswith("pytest tests")
    assert main.startswith("python3 -m venv .venv") and suite.startswith("python3 -m venv .venv")


def test_ci_runs_the_readmes_test_command():
    _, suite = readme_commands()
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l and not l.startswith("#")]
    assert lines[-1] == suite
    assert "set -euo pipefail" in lines


def test_workflow_runs_the_readmes_commands():
    runs = [s["run"] for s in steps() if "run" in s]
    assert runs == readme_commands()


def test_workflow_restores_and_saves_the_cache_around_the_main_job_and_uploads_the_reports():
    names = [s.get("uses", "run").split("@")[0] for s in steps()]
    main_at = next(i for i, s in enumerate(steps()) if "--optcheck" in s.get("run", ""))
    assert names.index("actions/cache/restore") < main_at < names.index("actions/cache/save")
    restore = steps()[names.index("actions/cache/restore")]["with"]
    save = steps()[names.index("actions/cache/save")]["with"]
    assert restore["path"] == save["path"] == ".optcheck/cache" and restore["key"] == save["key"]
    key = workflow()["jobs"]["optcheck"]["env"]["CACHE_KEY"]
    assert "recipes/**/*.toml" in key and "pyproject.toml" in key  # keyed on the recipes and the pins
    assert steps()[names.index("actions/cache/save")]["if"] == "always()"  # a red run still saves
    args = shlex.split(steps()[main_at]["run"].split("&&")[-1])
    report, plot = args[args.index("--optcheck-report") + 1], args[args.index("--optcheck-plot") + 1]
    upload = steps()[names.index("actions/upload-artifact")]
    assert upload["if"] == "always()" and set(upload["with"]["path"].split()) == {report, plot}


def test_the_default_cache_folder_is_ignored_by_git():
    assert ".optcheck/" in (ROOT / ".gitignore").read_text().splitlines()

"""The README's two commands are the ones CI and the workflow run; the workflow keeps the cache
and the reports the way the README says."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ", 1)[0]  # the commands live above the first section
    return re.findall(r"```(?:bash|sh)?\n(.+?)\n```", head, flags=re.S)


WORKFLOW = ROOT / ".github" / "workflows" / "optcheck.yml"


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers() -> dict:
    wf = workflow()
    return wf.get("on", wf.get(True))  # YAML 1.1 reads the bare key `on` as True


def steps(job: str = "optcheck") -> list[dict]:
    return workflow()["jobs"][job]["steps"]


def all_steps() -> list[dict]:
    return [s for job in workflow()["jobs"].values() for s in job["steps"]]


def readme_zoo_command() -> str:
    """The README's zoo command (section "The model-zoo matrix")."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```bash\n(.+?)\n```$", text, flags=re.S | re.M)
    [cmd] = [c for c in blocks if "--optcheck-recipes zoo" in c]
    return cmd


def test_readme_starts_with_the_main_job_and_the_test_suite():
    main, suite = readme_commands()
    args = shlex.split(main.split("&&")[-1])
    assert args[:3] == [".venv/bin/pytest", "--optcheck", "recipes"] and "-n" in args
    assert suite.endswith("pytest tests -n 2 --dist loadfile")  # tests/conftest.py: why two workers
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
    assert "if" not in steps()[names.index("actions/cache/restore")]  # every run may read
    args = shlex.split(steps()[main_at]["run"].split("&&")[-1])
    report, plot = args[args.index("--optcheck-report") + 1], args[args.index("--optcheck-plot") + 1]
    upload = steps()[names.index("actions/upload-artifact")]
    assert upload["if"] == "always()" and set(upload["with"]["path"].split()) == {report, plot}


def test_only_pushes_to_main_save_the_cache():
    """The cache holds pickles that run as code on load: pull requests (forks included) and other
    branches may read main's entries but never write one; a red run on main still saves."""
    [save] = [s for s in steps() if s.get("uses", "").startswith("actions/cache/save@")]
    terms = {t.strip() for t in save["if"].split("&&")}  # a conjunction of exactly these three
    assert terms == {"always()", "github.event_name == 'push'", "github.ref == 'refs/heads/main'"}
    assert not any(s.get("uses", "").startswith("actions/cache@") for s in steps())  # no implicit post-save
    assert "pull_request_target" not in triggers() and "workflow_run" not in triggers()


def test_the_workflow_is_pinned_and_least_privileged():
    assert workflow()["permissions"] == {"contents": "read"}
    assert all("permissions" not in job for job in workflow()["jobs"].values())
    uses = re.findall(r"^\s*-?\s*uses:\s*(\S+)(.*)$", WORKFLOW.read_text(), flags=re.M)
    assert len(uses) == sum("uses" in s for s in all_steps())
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), ref
        assert re.fullmatch(r"\s+# v\d+\.\d+\.\d+", comment), (ref, comment)
    checkouts = [s for s in all_steps() if s.get("uses", "").startswith("actions/checkout@")]
    assert len(checkouts) == len(workflow()["jobs"])
    assert all(c["with"]["persist-credentials"] is False for c in checkouts)
    for step in all_steps():  # no ${{ }} expansion inside a shell script (template injection)
        assert "${{" not in step.get("run", "")


def test_the_zoo_runs_sharded_with_the_readmes_command_and_one_job_merges_the_shards():
    jobs = workflow()["jobs"]
    shards = jobs["zoo"]["strategy"]["matrix"]["shard"]
    assert shards == [1, 2]
    [run] = [s for s in steps("zoo") if "--optcheck" in s.get("run", "")]
    args = shlex.split(run["run"].split("&&")[-1])
    readme = shlex.split(readme_zoo_command().split("&&")[-1])
    assert args[:len(readme)] == readme  # the README's command, then the shard's options
    assert args[len(readme):] == ["--optcheck-shard", "$SHARD/2", "--optcheck-report", ".optcheck/zoo-$SHARD.json"]
    assert run["env"]["SHARD"] == "${{ matrix.shard }}" and run["env"]["GITHUB_STEP_SUMMARY"] == ""
    names = [s.get("uses", "run").split("@")[0] for s in steps("zoo")]
    assert names.index("actions/cache/restore") < names.index("run") < names.index("actions/cache/save")
    assert steps("zoo")[names.index("actions/cache/save")]["if"] == steps()[
        [s.get("uses", "run").split("@")[0] for s in steps()].index("actions/cache/save")]["if"]
    upload = steps("zoo")[names.index("actions/upload-artifact")]
    assert upload["if"] == "always()" and upload["with"]["path"] == ".optcheck/zoo-${{ matrix.shard }}.json"
    merge = jobs["zoo-matrix"]
    assert merge["needs"] == "zoo" and merge["if"] == "always()"
    [download] = [s for s in merge["steps"] if s.get("uses", "").startswith("actions/download-artifact@")]
    assert download["with"]["pattern"] == "zoo-report-*" and download["with"]["merge-multiple"] is True
    [cmd] = [s["run"] for s in merge["steps"] if "run" in s]
    merged = shlex.split(cmd.split("PYTHONPATH=. ", 1)[1])
    assert merged[:4] == ["python3", "-m", "optcheck.merge", ".optcheck/zoo.json"]
    assert merged[4:] == [f"reports/zoo-{k}.json" for k in shards]  # every shard, named: a missing one fails


def zizmor() -> str | None:
    """The zizmor CLI from this interpreter's environment (`pip install -e .[test]`), else PATH."""
    return shutil.which("zizmor", path=sysconfig.get_path("scripts")) or shutil.which("zizmor")


def test_zizmor_finds_nothing_medium_or_high_in_the_workflow():
    exe = zizmor()
    if exe is None:
        pytest.skip("zizmor is not installed (it is in the `test` extra: pip install -e '.[test]')")
    # Offline (no GitHub API), the broadest persona, and no config or inline ignore comments, so
    # a finding can only be fixed in the workflow, not silenced next to it.
    cmd = [exe, "--offline", "--persona", "auditor", "--no-config", "--no-ignores", "--no-exit-codes",
           "--no-progress", "--format", "json", str(WORKFLOW.relative_to(ROOT))]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout)
    serious = [
        f"{f['ident']} ({f['determinations']['severity']}): {f['desc']}"
        for f in findings
        if f["determinations"]["severity"].lower() in {"medium", "high"}
    ]
    assert serious == [], "\n".join(serious)


def test_the_default_cache_folder_is_ignored_by_git():
    assert ".optcheck/" in (ROOT / ".gitignore").read_text().splitlines()


def test_a_pull_request_that_changes_the_pins_runs_the_upgrade_ab_against_the_base_branchs_pins():
    """The upgrade job (docs/upgrades.md "In CI"): on pull requests, only when requirements.lock changed;
    today's side from the base branch's lock, the candidate the pull request's; the comparison uploaded
    even when the A/B fails."""
    from optcheck.upgrade.environment import read_requirements, requirement_name

    job = workflow()["jobs"]["upgrade"]
    assert "pull_request" in triggers() and job["if"] == "github.event_name == 'pull_request'"
    by_name = {s.get("name", ""): s for s in job["steps"]}
    pins = by_name["did the pins change?"]
    assert 'git diff --quiet "origin/$BASE_REF" HEAD -- requirements.lock' in pins["run"]
    gated = [s for s in job["steps"] if "pins" not in s.get("id", "") and "run" in s]
    assert gated and all("steps.pins.outputs.changed == 'true'" in s["if"] for s in gated)
    today = by_name["today's environment (the base branch's pins)"]["run"]
    assert 'git show "origin/$BASE_REF:requirements.lock"' in today and "pip install -r" in today
    [ab] = [s for s in job["steps"] if "optcheck.upgrade" in s.get("run", "")]
    assert ".venv/bin/python -m optcheck.upgrade -r requirements.lock" in ab["run"]
    [upload] = [s for s in job["steps"] if "upload-artifact" in s.get("uses", "")]
    assert upload["if"].startswith("always()") and upload["with"]["path"] in ab["run"]
    # the lock the job compares is one the A/B reads: name==version lines for the stack it guards
    names = {requirement_name(r) for r in read_requirements(ROOT / "requirements.lock")}
    assert {"nvidia-modelopt", "torch", "torchvision", "torchprofile", "torch-pruning", "onnxruntime"} <= names

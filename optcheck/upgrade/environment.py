"""A candidate environment: today's environment with some requirements changed, built in seconds.

    python -m venv --without-pip <work>/envs/<key>/venv       an empty interpreter
    <its site-packages>/_optcheck_base.pth                     ``import site; site.addsitedir(<today's>)``
    pip install --dry-run --report ... <requirements>          what must change, resolved against today's
    pip --python <venv> install --no-deps --ignore-installed   only those distributions, into the venv

The venv's own site-packages come first on its ``sys.path``, today's after them, so a changed
distribution shadows today's and everything else is today's, unchanged (optcheck itself included, so
both sides run the same optcheck). Nothing is installed into today's environment: ``--ignore-installed``
never uninstalls, and the venv is its own prefix. The resolution is pip's, against what is installed
today, so only what the candidate needs changes (``nvidia-modelopt==0.46.1``: one wheel, about 10 s
with a warm pip cache). A plain venv + pip was chosen over ``uv``: with one wheel to install, the
resolver's report, which pip writes as JSON, is the part that matters, and pip is always there.

A distribution today's environment has and the candidate's resolution would remove stays visible: the
environment is today's plus changes. ``changes`` lists every version that differs, and the report shows
it, so a moved dependency is never silent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optcheck.core.errors import OptcheckError

PTH = "_optcheck_base.pth"
DONE = "environment.json"


class CandidateError(OptcheckError):
    """A candidate that cannot be resolved or installed: names the requirement and pip's reason."""


@dataclass
class Environment:
    """One side of the comparison: an interpreter, and what differs from today's environment."""

    label: str
    python: str
    requirements: list[str] = field(default_factory=list)  # as given; [] for today's environment
    changes: dict[str, list[str | None]] = field(default_factory=dict)  # name -> [today, here]
    seconds: float = 0.0  # building it (0 when reused or today's)
    reused: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "python": self.python, "requirements": self.requirements,
                "changes": self.changes, "seconds": round(self.seconds, 2), "reused": self.reused}


def today() -> Environment:
    return Environment("today", sys.executable)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a requirements / lock file (``name==version``, one per line; comments,
    blank lines and pip options skipped)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(line)
    if not out:
        raise CandidateError(f"{path}: no requirements in it (one 'name==version' per line)")
    return out


def requirement_name(requirement: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return canonical(Requirement(requirement).name)
    except InvalidRequirement as exc:
        raise CandidateError(f"{requirement!r} is not a requirement pip understands ({exc}); write it as "
                             "'name==version', e.g. nvidia-modelopt==0.46.1") from None


def installed(python: str) -> dict[str, str]:
    """``{canonical name: version}`` of what ``python`` imports first (the venv's shadowing today's)."""
    code = ("import importlib.metadata as m, json, re\nout = {}\nfor d in m.distributions():\n"
            "    n = re.sub(r'[-_.]+', '-', d.metadata['Name'] or '').lower()\n"
            "    out.setdefault(n, d.version)\nprint(json.dumps(out))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def _pip_reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR") or "conflict" in ln.lower() or "requires" in ln]
    return " / ".join((errors or lines)[-4:])[:800]


def build(requirements: list[str], work: Path, *, label: str = "candidate", pip_args: tuple[str, ...] = (),
          log=print) -> Environment:
    """Today's environment with ``requirements`` changed, in ``work/envs/<key>`` (reused when the same
    requirements were built against the same today). Raises ``CandidateError``."""
    for requirement in requirements:
        requirement_name(requirement)
    now = installed(sys.executable)
    key = hashlib.sha256(json.dumps({"requirements": sorted(requirements), "pip": list(pip_args),
                                     "python": sys.executable, "today": now}, sort_keys=True).encode()).hexdigest()[:16]
    folder = work / "envs" / key
    done = folder / DONE
    venv = folder / "venv"
    python = str(venv / "bin" / "python")
    if done.exists():
        env = Environment(**{**json.loads(done.read_text()), "reused": True, "seconds": 0.0})
        log(f"[optcheck] {label}: reusing {folder} ({', '.join(requirements)})")
        return env
    started = time.perf_counter()
    log(f"[optcheck] {label}: resolving {' '.join(requirements)} against today's environment ...")
    report = folder / "resolution.json"
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                           *pip_args, *requirements], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CandidateError(f"the candidate {' '.join(requirements)} cannot be installed beside today's "
                             f"environment: pip's resolver says: {_pip_reason(proc.stderr)}")
    plan = json.loads(report.read_text())
    pins = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in plan.get("install", [])]
    links = [item["download_info"]["url"] for item in plan.get("install", [])
             if item.get("download_info", {}).get("url", "").startswith("file:")]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    base = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / PTH).write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in base))
    if pins:
        log(f"[optcheck] {label}: installing {' '.join(pins)}")
        sources = [url.removeprefix("file://") for url in links] or pins
        proc = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
                               "--ignore-installed", "--no-warn-script-location", *pip_args,
                               *(sources if len(sources) == len(pins) else pins)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise CandidateError(f"installing {' '.join(pins)} into {venv} failed: {_pip_reason(proc.stderr)}")
    there = installed(python)
    changes = {name: [now.get(name), there.get(name)] for name in sorted(set(now) | set(there))
               if now.get(name) != there.get(name)}
    env = Environment(label, python, list(requirements), changes, time.perf_counter() - started)
    done.write_text(json.dumps(env.as_dict(), indent=1))
    log(f"[optcheck] {label}: ready in {env.seconds:.1f} s: "
        + (", ".join(f"{n} {a} -> {b}" for n, (a, b) in changes.items()) or "nothing changed"))
    return env


def clean_env(env: Environment, base: dict[str, str] | None = None) -> dict[str, str]:
    """The process environment for running ``env``'s interpreter: no outer virtualenv leaking in."""
    out = dict(base if base is not None else os.environ)
    out.pop("PYTHONHOME", None)
    if env.python != sys.executable:
        out["VIRTUAL_ENV"] = str(Path(env.python).parent.parent)
        out["PATH"] = os.pathsep.join([str(Path(env.python).parent), out.get("PATH", "")])
    return out

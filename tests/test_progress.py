"""Live progress and a quiet warnings summary, as a user sees them: pytest in its own process, in a
project without this repository's pyproject (so none of its filterwarnings apply)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from conftest import tiny_recipe

USER_MODEL = '''
import warnings

from optcheck.build.models import SmallCNN


class Chatty(SmallCNN):
    def forward(self, x):
        warnings.warn("user model: this layer is deprecated in our codebase", UserWarning)
        return super().forward(x)


def make(num_classes=10, in_channels=3):
    return Chatty(num_classes, in_channels)
'''


def run_pytest(project, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=project,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(project)})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress")
    (path / "pytest.ini").write_text("[pytest]\noptcheck_ledger = off\n")  # no filterwarnings at all
    (path / "mymodel.py").write_text(USER_MODEL)
    (path / "recipes").mkdir()
    (path / "recipes" / "tiny.toml").write_text(tiny_recipe().replace('name = "small_cnn"', 'name = "mymodel:make"'))
    return path


@pytest.fixture(scope="module")
def under_xdist(project):
    return run_pytest(project, "--optcheck", "-n", "2", "--optcheck-no-cache", "recipes")


def test_worker_progress_reaches_the_controller_under_xdist(under_xdist):
    out = under_xdist.stdout
    assert under_xdist.returncode == 0, out[-4000:] + under_xdist.stderr[-2000:]
    # the relay thread writes while pytest's main thread prints progress characters: a line may start
    # after a "." on the same terminal line, so each relayed line is looked for from its tag on
    lines = ["[optcheck gw" + part for ln in out.splitlines() for part in ln.split("[optcheck gw")[1:]]
    text = "\n".join(lines)
    assert any("tiny: building baseline" in ln for ln in lines), out[-4000:]
    assert any("baseline: epoch 1/6" in ln and "s/epoch, ETA" in ln for ln in lines), text  # ETA once an epoch ran
    assert any("tiny: built baseline in" in ln for ln in lines), text
    assert any("tiny: built finetuned in" in ln for ln in lines), text
    # in order, and before the session's end
    assert out.index("building baseline") < out.index("built baseline") < out.index("optcheck results")


def test_library_noise_is_silenced_and_the_users_own_warnings_are_kept(under_xdist):
    out = under_xdist.stdout
    for noise in ("torch.jit.script", "model_fields", "data queue not filled", "Per-rank checkpoint",
                  "Initializing from scratch"):
        assert noise not in out, f"{noise!r} in the user's warnings summary:\n{out[-4000:]}"
    assert "user model: this layer is deprecated in our codebase" in out, out[-4000:]


def test_quiet_runs_print_no_progress(project):
    proc = run_pytest(project, "--optcheck", "-n", "2", "-q", "--optcheck-no-cache", "recipes")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "[optcheck" not in proc.stdout


def test_a_ci_log_gets_whole_lines_without_carriage_returns(under_xdist):
    assert "\r" not in under_xdist.stdout


class _Screen(io.StringIO):
    """What a terminal shows: a carriage return moves back to the line's start, text overwrites."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def rendered(self) -> list[str]:
        lines = []
        for raw in self.getvalue().split("\n"):
            cells: list[str] = []
            for part in raw.split("\r"):
                cells = list(part) + cells[len(part):]
            lines.append("".join(cells).rstrip())
        return [ln for ln in lines if ln]


def _writer(pytestconfig, tty: bool):
    from _pytest.terminal import TerminalReporter

    from optcheck.plugin.terminal import TerminalLines

    screen = _Screen(tty)
    reporter = TerminalReporter(pytestconfig, screen)

    class Plugins:
        def get_plugin(self, name):
            return reporter if name == "terminalreporter" else None

    class Config:
        pluginmanager = Plugins()

    return TerminalLines(Config()), reporter, screen


RUN = ["[optcheck] tiny: building baseline",
       "[optcheck] baseline: epoch 1/3  loss 1.2  val acc 0.5 (n=60)  0.4 s/epoch, ETA 1 s",
       "[optcheck gw1] baseline: epoch 2/3  loss 0.9  val acc 0.7 (n=60)  0.4 s/epoch, ETA 0 s",
       "[optcheck gw0] fastnas: scored 64 subnets, best val accuracy 0.9100",
       "[optcheck] tiny: built baseline in 1.3 s"]


def test_on_a_tty_each_tick_redraws_one_status_line_and_lasting_lines_stay(pytestconfig):
    write, _reporter, screen = _writer(pytestconfig, tty=True)
    for line in RUN:
        write(line)
    assert "\r" in screen.getvalue()
    assert screen.rendered() == [RUN[0], RUN[-1]], screen.getvalue()
    write(RUN[1])  # a status line left on screen while the run goes on
    shown = screen.rendered()[-1]  # cut to the terminal's width: a wrapped line could not be redrawn
    assert len(shown) >= 60 and RUN[1].startswith(shown), shown


def test_on_a_tty_the_status_line_never_overwrites_pytests_own_output(pytestconfig):
    write, reporter, screen = _writer(pytestconfig, tty=True)
    write(RUN[1])
    reporter.write_fspath_result("recipes/tiny.toml", ".")  # pytest reports results meanwhile
    write(RUN[2])
    write(RUN[-1])
    shown = screen.rendered()
    assert any(ln.startswith("recipes/tiny.toml .") for ln in shown), shown
    assert shown[-1] == RUN[-1], shown


def test_off_a_tty_every_line_is_printed_whole(pytestconfig):
    write, _reporter, screen = _writer(pytestconfig, tty=False)
    for line in RUN:
        write(line)
    assert "\r" not in screen.getvalue()
    assert screen.rendered() == RUN

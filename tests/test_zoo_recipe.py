"""A zoo recipe (``[zoo]``) under pytest: one item per model and phase, known failures from the ledger
(xfail strict: a fixed one fails the run), the matrix in the terminal, the JSON report and the step
summary, results replayed from the cache, models spread over xdist workers with each model's phases on
one worker, and CI shards merged into one matrix (``python -m optcheck.merge``)."""

from __future__ import annotations

import json
import sys

import pytest

from optcheck.plugin.schedule import parse_shard, recipe_scope, shard_items

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MODELS = '''
import torch.nn as nn

_BUILT = {"n": 0}


def good(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def growing(num_classes=10):
    """Not deterministic: every call after the first adds a layer, so restore gets another model."""
    _BUILT["n"] += 1
    layers = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    if _BUILT["n"] > 1:
        layers += [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    layers += [nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes)]
    return nn.Sequential(*layers)
'''

ZOO = '''
name = "tiny_zoo"
[zoo]
models = ["zoo_models:good", "zoo_models:growing"]
input_size = 16
num_classes = 4
channel_divisor = 8
feature_divisor = 8
restores = 1
'''

KNOWN = '''
[tiny_zoo.cpu."zoo_models:growing"]
known_failure = "#7: the factory is not deterministic"
phase = "restore"
match = "{match}"
'''

PHASES = ["build", "convert", "sample", "export", "save", "restore", "compare"]


@pytest.fixture(autouse=True, scope="module")
def heavy_modules_loaded_once():
    """pytester's in-process runs drop modules first imported inside them (see test_plugin.py)."""
    from optcheck.core.compat import import_modelopt


    import_modelopt()


def project(pytester, zoo: str = ZOO, ledger: str | None = None):
    pytester.makeini("[pytest]\nfilterwarnings = ignore::UserWarning\n")
    pytester.mkdir("zoo")
    (pytester.path / "zoo" / "tiny.toml").write_text(zoo)
    if ledger is not None:
        (pytester.path / "zoo" / "optcheck-ledger.toml").write_text(ledger)
    pytester.makepyfile(zoo_models=MODELS)
    pytester.syspathinsert()
    return pytester


def run(pytester, *args, subprocess: bool = False):
    argv = ("--optcheck", "--optcheck-recipes", "zoo", "zoo", "-p", "no:cacheprovider", "--optcheck-cache-dir=cache",
            *args)
    return pytester.runpytest_subprocess(*argv) if subprocess else pytester.runpytest(*argv)


def test_each_model_and_phase_is_an_item_and_a_known_failure_xfails(pytester, monkeypatch):
    project(pytester, ledger=KNOWN.format(match="vs .* tensors"))
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run(pytester, "-v", "-rxs", "--optcheck-report", "report.json")
    # good: every phase; growing: its known restore failure xfails, compare is not run after it
    result.assert_outcomes(passed=len(PHASES) + 5, xfailed=1, skipped=1)
    result.stdout.fnmatch_lines(["*zoo/tiny.toml::model[[]zoo_models:good[]]::restore PASSED*"])
    result.stdout.fnmatch_lines([
        "XFAIL zoo/tiny.toml::model[[]zoo_models:growing[]]::restore - known failure #7: the factory is not "
        "deterministic ([[]tiny_zoo.cpu.zoo_models:growing[]] in zoo/optcheck-ledger.toml)*",
        "SKIPPED [[]1[]] zoo/tiny.toml:1: zoo_models:growing: not run (after restore failed)"])
    # the matrix, in the terminal
    result.stdout.fnmatch_lines(["*tiny_zoo (zoo/tiny.toml): the zoo matrix*",
                                 "model * input * build * convert * sample * export * save * restore * compare * seconds",
                                 "zoo_models:good * 16 * ✓ * ✓ * ✓ * ✓ * ✓ * ✓ * ✓ *",
                                 "zoo_models:growing * 16 * ✓ * ✓ * ✓ * ✓ * ✓ * known failure * – *",
                                 "total (2 models)*"])
    # in the JSON report
    doc = json.loads((pytester.path / "report.json").read_text())
    (zoo,) = [r["zoo"] for r in doc["recipes"] if "zoo" in r]
    assert zoo["recipe"] == "tiny_zoo" and zoo["phases"] == PHASES
    rows = {row["label"]: row for row in zoo["models"]}
    assert {p: c["outcome"] for p, c in rows["zoo_models:good"]["phases"].items()} == dict.fromkeys(PHASES, "passed")
    growing = rows["zoo_models:growing"]["phases"]
    assert growing["restore"]["outcome"] == "xfailed" and "#7" in growing["restore"]["message"]
    assert growing["compare"]["outcome"] == "skipped"
    assert rows["zoo_models:good"]["seconds"] > 0
    # and in the step summary
    md = summary.read_text()
    assert "### tiny_zoo (`zoo/tiny.toml`): zoo matrix" in md
    assert "| zoo_models:growing | 16 | ✓ | ✓ | ✓ | ✓ | ✓ | known failure | – |" in md


def test_a_known_failure_that_passes_fails_the_run_and_says_to_remove_the_entry(pytester):
    ledger = KNOWN.replace("zoo_models:growing", "zoo_models:good").format(match="tensors")
    project(pytester, ledger=ledger)
    result = run(pytester, "-k", "good")
    result.assert_outcomes(passed=len(PHASES) - 1, failed=1)
    result.stdout.fnmatch_lines(["*model[[]zoo_models:good[]]::restore*", "*[[]XPASS(strict)[]] known failure #7*",
                                 "*if it passes, it was fixed upstream: remove that entry and close the ticket*"])
    result.stdout.fnmatch_lines(["zoo_models:good * ✗ XPASS *"])


def test_another_failure_at_a_known_phase_fails(pytester):
    project(pytester, ledger=KNOWN.format(match="Missing symbols"))
    result = run(pytester, "-k", "growing")
    result.assert_outcomes(passed=5, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*zoo_models:growing restore failed*",
                                 "*known failure #7 expects /Missing symbols/ here, and this is another failure*"])


def test_an_unexpected_failure_fails_with_the_phase_and_the_fix(pytester):
    project(pytester)
    result = run(pytester, "-k", "growing")
    result.assert_outcomes(passed=5, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*zoo_models:growing restore failed: *tensors*", "*fix: make the factory deterministic*"])
    result.stdout.fnmatch_lines(["zoo_models:growing * ✓ * ✓ * ✓ * ✓ * ✓ * ✗ * – *"])


def test_a_warm_run_replays_each_model_from_the_cache(pytester):
    project(pytester, ledger=KNOWN.format(match="tensors"))
    run(pytester).assert_outcomes(passed=len(PHASES) + 5, xfailed=1, skipped=1)
    warm = run(pytester)
    warm.assert_outcomes(passed=len(PHASES) + 5, xfailed=1, skipped=1)
    out = warm.stdout.str()
    assert "zoo: good from the cache" not in out  # labels of factories are their names
    warm.stdout.fnmatch_lines(["*zoo: zoo_models:good from the cache (tiny_zoo; --optcheck-rebuild runs it again)*",
                               "zoo_models:good * (cached)*"])
    assert " passed in " not in out.split("from the cache")[-1].split("optcheck results")[0]  # nothing ran again
    rebuilt = run(pytester, "--optcheck-rebuild", "-k", "good")
    assert "from the cache" not in rebuilt.stdout.str()
    rebuilt.stdout.fnmatch_lines(["*zoo: zoo_models:good restore passed in *"])


def test_models_spread_over_xdist_workers_with_each_models_phases_on_one(pytester):
    project(pytester, ledger=KNOWN.format(match="tensors"))
    result = run(pytester, "-n", "2", "-v", subprocess=True)
    result.assert_outcomes(passed=len(PHASES) + 5, xfailed=1, skipped=1)
    workers: dict[str, set[str]] = {}
    for line in result.stdout.lines:
        if line.startswith("[gw") and "::model[" in line:
            worker, nodeid = line.split("]", 1)[0][1:], next(t for t in line.split() if "::model[" in t)
            workers.setdefault(nodeid.split("::")[1], set()).add(worker)
    assert set(workers) == {"model[zoo_models:good]", "model[zoo_models:growing]"}, result.stdout.str()
    assert all(len(w) == 1 for w in workers.values()), workers  # no model split between workers
    assert workers["model[zoo_models:good]"] != workers["model[zoo_models:growing]"], workers
    result.stdout.fnmatch_lines(["zoo_models:growing * known failure *"])


def test_two_shards_merge_into_one_matrix(pytester):
    project(pytester, ledger=KNOWN.format(match="tensors"))
    one = run(pytester, "--optcheck-shard", "1/2", "--optcheck-report", "shard-1.json")
    two = run(pytester, "--optcheck-shard", "2/2", "--optcheck-report", "shard-2.json")
    one.assert_outcomes(passed=len(PHASES))
    two.assert_outcomes(passed=5, xfailed=1, skipped=1)
    assert "deselected" in one.stdout.str() and "deselected" in two.stdout.str()
    merge = [sys.executable, "-m", "optcheck.merge"]
    merged = pytester.run(*merge, "merged.json", "shard-1.json", "shard-2.json", "--summary", "summary.md")
    assert merged.ret == 0, merged.stdout.str() + merged.stderr.str()
    merged.stdout.fnmatch_lines(["zoo_models:good * ✓ * ✓ * ✓ * ✓ * ✓ * ✓ * ✓ *",
                                 "zoo_models:growing * known failure * – *",
                                 "optcheck.merge: 2 reports, 1 recipes, 14 checks, 0 failing*"])
    doc = json.loads((pytester.path / "merged.json").read_text())
    assert [s["shard"] for s in doc["meta"]["shards"]] == ["1/2", "2/2"]
    assert len(doc["recipes"][0]["zoo"]["models"]) == 2
    assert "| zoo_models:good | 16 | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |" in (pytester.path / "summary.md").read_text()
    # a missing shard is an error, not a smaller matrix
    alone = pytester.run(*merge, "alone.json", "shard-1.json")
    assert alone.ret == 2 and "missing shard 2/2" in alone.stderr.str()
    # a failing check fails the merge
    bad = json.loads((pytester.path / "shard-1.json").read_text())
    bad["recipes"][0]["verdicts"]["model[zoo_models:good]::build"]["outcome"] = "failed"
    (pytester.path / "bad-1.json").write_text(json.dumps(bad))
    failing = pytester.run(*merge, "failing.json", "bad-1.json", "shard-2.json")
    assert failing.ret == 1, failing.stdout.str()
    failing.stdout.fnmatch_lines(["*1 failing*", "*zoo/tiny.toml::model[[]zoo_models:good[]]::build failed*"])


@pytest.mark.parametrize("zoo, field, fix", [
    (ZOO.replace("models =", "modles ="), "zoo.modles", "did you mean 'models'?"),
    (ZOO + 'phases = ["build", "restore"]\n', "zoo.phases", "add 'convert'"),
    (ZOO.replace('"zoo_models:growing"', '"zoo_models:good"'), "zoo.models", "list it once"),
    (ZOO.replace('"zoo_models:growing"', '"not a model"'), "zoo.models", "change 'zoo.models'"),
    (ZOO.replace("restores = 1", "restores = 0"), "zoo.restores", "change 'zoo.restores'"),
])
def test_a_bad_zoo_recipe_names_the_field_and_the_fix(pytester, zoo, field, fix):
    project(pytester, zoo=zoo)
    result = run(pytester)
    assert result.ret != 0
    out = result.stdout.str()
    assert "zoo/tiny.toml" in out and field in out and fix in out, out


def test_a_bad_known_failure_entry_names_the_ledger_line(pytester):
    project(pytester, ledger=KNOWN.format(match="tensors").replace('phase = "restore"', 'phase = "restored"'))
    result = run(pytester)
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*zoo/optcheck-ledger.toml:4: phase = 'restored'*is not a zoo phase*",
                                 "*fix: use one of build, convert*"])


def test_a_bad_shard_is_a_usage_error(pytester):
    project(pytester)
    result = run(pytester, "--optcheck-shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--optcheck-shard '3/2': write K/N with 1 <= K <= N*"])


# -- sharding and scopes, as plain functions ----------------------------------------------------------

class _Item:
    def __init__(self, nodeid: str):
        self.nodeid = nodeid


def test_a_zoo_models_phases_are_one_unit_and_a_recipe_file_is_one():
    assert recipe_scope("zoo/a.toml::model[resnet18]::restore") == "zoo/a.toml::model[resnet18]"
    assert recipe_scope("recipes/a.toml::pruned::flops_below") == "recipes/a.toml"
    assert recipe_scope("recipes/a.toml::ledger[pruned]") == "recipes/a.toml"
    assert recipe_scope("tests/test_x.py::test_y[model[1]]") == "tests/test_x.py::test_y[model[1]]"


def test_shards_partition_the_units_the_same_way_every_time():
    ids = [f"zoo/a.toml::model[m{i}]::{p}" for i in range(5) for p in ("build", "convert")]
    ids += ["recipes/r.toml::flops_below", "recipes/r.toml::ledger[pruned]", "tests/t.py::test_a"]
    items = [_Item(i) for i in ids]
    shards = [shard_items(items, k, 3)[0] for k in (1, 2, 3)]
    kept = [i.nodeid for s in shards for i in s]
    assert sorted(kept) == sorted(ids) and len(kept) == len(ids)  # each item in exactly one shard
    for s in shards:  # no unit split between shards
        units = {recipe_scope(i.nodeid) for i in s}
        assert all(recipe_scope(i.nodeid) in units for i in s)
        others = [i for t in shards if t is not s for i in t]
        assert not units & {recipe_scope(i.nodeid) for i in others}
    again = [[i.nodeid for i in shard_items(items, k, 3)[0]] for k in (1, 2, 3)]
    assert again == [[i.nodeid for i in s] for s in shards]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(pytest.UsageError):
            parse_shard(bad)


def test_a_model_whose_training_forward_returns_a_tuple_is_refused_with_the_fix():
    import torch
    import torch.nn as nn

    from optcheck.pipeline.preflight import check_training_forward
    from optcheck.core.errors import RecipeError

    class Aux(nn.Module):  # googlenet's shape: an aux1 head, a tuple in training mode
        def __init__(self):
            super().__init__()
            self.body, self.aux1, self.bn = nn.Linear(4, 3), nn.Linear(4, 3), nn.BatchNorm1d(4)

        def forward(self, x):
            x = self.bn(x)
            return (self.body(x), self.aux1(x)) if self.training else self.body(x)

    model = Aux().eval()
    before = model.bn.running_mean.clone()
    with pytest.raises(RecipeError) as err:
        check_training_forward(model, torch.randn(2, 4) + 5, "r.toml")
    assert "model.options" in str(err.value) and "aux_logits = false" in str(err.value)
    assert torch.equal(model.bn.running_mean, before) and not model.training  # probed on a copy
    check_training_forward(nn.Linear(4, 3), torch.randn(2, 4), "r.toml")  # a plain model passes


def test_torchvision_star_stands_for_every_torchvision_classification_model(pytester):
    import torchvision.models

    zoo = ZOO.replace('models = ["zoo_models:good", "zoo_models:growing"]',
                      'models = [{ name = "torchvision:resnet18", input_size = 64 }, "torchvision:*"]')
    project(pytester, zoo=zoo)
    result = run(pytester, "--co", "-q")
    names = torchvision.models.list_models(module=torchvision.models)
    assert len(names) > 50 and "resnet18" in names
    result.stdout.fnmatch_lines([f"{len(names) * len(PHASES)} tests collected*"])  # resnet18 once, not twice
    ids = [line for line in result.stdout.lines if "::model[" in line]
    assert ids[0] == "zoo/tiny.toml::model[resnet18]::build"  # the explicit entry first, with its own size
    assert f"zoo/tiny.toml::model[{names[-1]}]::compare" in ids


def test_the_matrix_lists_the_models_in_the_recipes_order_with_their_phases_in_phase_order():
    from optcheck.report.zoo_matrix import markdown_lines, terminal_lines, zoo_table

    def verdict(label, index, phase, outcome, seconds=1.0, message=""):
        return {"outcome": outcome, "message": message,
                "details": {"zoo_model": f"torchvision:{label}", "zoo_label": label, "zoo_phase": phase,
                            "zoo_input": 32, "zoo_index": index, "zoo_recipe": "z", "seconds": seconds}}

    # verdicts arrive sorted by check name (models alphabetically, phases alphabetically)
    r = {"path": "zoo/z.toml", "recipe": "z", "verdicts": {
        "model[alexnet]::build": verdict("alexnet", 1, "build", "passed"),
        "model[alexnet]::convert": verdict("alexnet", 1, "convert", "failed", 2.5, "alexnet convert failed: boom"),
        "model[vgg]::build": verdict("vgg", 0, "build", "passed", 0.5),
        "model[vgg]::convert": verdict("vgg", 0, "convert", "xfailed", 0.25, "known failure #3"),
    }}
    zoo = zoo_table(r)
    assert [m["label"] for m in zoo["models"]] == ["vgg", "alexnet"] and zoo["phases"] == ["build", "convert"]
    assert zoo["models"][1]["seconds"] == 3.5
    text = "\n".join(terminal_lines(zoo, "zoo/z.toml"))
    assert text.index("vgg ") < text.index("alexnet ") and "- alexnet convert ✗: alexnet convert failed: boom" in text
    md = markdown_lines(zoo, "zoo/z.toml")
    assert "| vgg | 32 | ✓ | known failure | 0.8 |" in md and "| alexnet | 32 | ✓ | ✗ | 3.5 |" in md
    assert zoo_table({"path": "recipes/a.toml", "verdicts": {"flops_below": {"outcome": "passed"}}}) is None


def test_the_shipped_zoo_collects_as_the_readme_runs_it():
    """The README's zoo command, collect-only, in this checkout: every model of zoo/torchvision.toml and
    every phase is an item, and zoo/optcheck-ledger.toml validates against it (a broken shipped recipe or
    ledger entry fails here, in .ci/run, not first in the zoo's own CI job)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--optcheck", "--optcheck-recipes", "zoo", "zoo", "--co", "-q",
                           "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    items = [line for line in proc.stdout.splitlines() if line.startswith("zoo/torchvision.toml::")]
    models = {line.split("::")[1] for line in items}
    assert len(models) == 13 and "model[inception_v3]" in models and "model[densenet121]" in models
    assert len(items) == 13 * 9, items[:5]
    assert "zoo/torchvision.toml::model[squeezenet1_0]::restore" in items

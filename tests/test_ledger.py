"""The regression ledger file: validation with line numbers, comparison rules, updates that keep the
file's order and comments."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

import pytest

from optcheck.ledger.entries import LedgerError, compare, judge, load_ledger, new_entry, tolerances
from optcheck.ledger.writing import write_updates
from optcheck.recipes.loader import parse_recipe

from conftest import tiny_recipe

GOOD = """\
# a comment the team wrote
[tiny.cpu.baseline]
test_acc = 0.9
flops = 1000
params = 100
ckpt_bytes = 5000
accuracy_tolerance = 0.01  # kept on update

[tiny.cpu.pruned]
test_acc = 0.8
flops = 500
params = 50
ckpt_bytes = 3000
known_failure = "GH-7: the subnet collapses before fine-tuning"
"""

MEASURED = {"test_acc": 0.9, "flops": 1000, "params": 100, "ckpt_bytes": 5000}
EXACT = {"test_acc": 0.01, "flops": 0.0, "params": 0.0, "ckpt_bytes": 0.05}  # legacy semantics


@pytest.fixture
def recipe(tmp_path):
    return parse_recipe(tomllib.loads(tiny_recipe()), tmp_path / "tiny.toml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "optcheck-ledger.toml"
    path.write_text(text)
    return path


def test_a_valid_ledger_loads_and_a_missing_file_is_empty(tmp_path):
    ledger = load_ledger(write(tmp_path, GOOD), {"tiny"})
    assert ledger.entry("tiny", "cpu", "baseline")["flops"] == 1000
    assert ledger.entry("tiny", "cuda", "baseline") is None
    empty = load_ledger(tmp_path / "absent.toml", {"tiny"})
    assert not empty.exists and empty.entries == {}


@pytest.mark.parametrize("text, line, words", [
    (GOOD.replace("flops = 500", "flops = = 500"), 11, "not valid TOML"),
    (GOOD.replace("[tiny.cpu.pruned]", "[tinny.cpu.pruned]"), 9, "unknown recipe 'tinny'"),
    (GOOD.replace("[tiny.cpu.pruned]", "[tiny.tpu.pruned]"), 9, "unknown platform 'tpu'"),
    (GOOD.replace("[tiny.cpu.pruned]", "[tiny.cpu.prunned]"), 9, "did you mean 'pruned'?"),
    (GOOD.replace("params = 50\n", "param = 50\n"), 12, "unknown field 'param'"),
    (GOOD.replace("flops = 500", "flops = 500.5"), 11, "'flops' in [tiny.cpu.pruned] is 500.5"),
    (GOOD.replace("test_acc = 0.8", "test_acc = 80"), 10, "'test_acc'"),
    (GOOD.replace("GH-7: the subnet", "the subnet"), 14, "names its ticket"),
    (GOOD.replace("ckpt_bytes = 3000\n", ""), 9, "lacks ckpt_bytes"),
])
def test_each_bad_ledger_names_the_file_line_and_fix(tmp_path, text, line, words):
    with pytest.raises(LedgerError) as info:
        load_ledger(write(tmp_path, text), {"tiny": {"baseline", "pruned", "finetuned"}},
                    display="recipes/optcheck-ledger.toml")
    message = str(info.value)
    assert message.startswith(f"recipes/optcheck-ledger.toml:{line}: "), message
    assert words in message and "fix: " in message and "not changed" in message


def test_the_unknown_recipe_message_lists_the_recipes(tmp_path):
    with pytest.raises(LedgerError, match=r"one of the recipes \(digits, tiny\)"):
        load_ledger(write(tmp_path, GOOD.replace("[tiny.cpu.pruned]", "[gone.cpu.pruned]")), {"tiny", "digits"})


def test_legacy_entries_keep_exact_flops_and_params():
    entry = {**MEASURED, "accuracy_tolerance": 0.01}
    assert compare(entry, MEASURED, EXACT) == []
    [m] = compare(entry, {**MEASURED, "flops": 1001}, EXACT)
    assert m.metric == "flops" and "1,001 now, 1,000 in the ledger" in m.render() and "exactly" in m.render()
    [m] = compare(entry, {**MEASURED, "params": 99}, EXACT)
    assert m.metric == "params"


@pytest.mark.parametrize("acc, fails", [(0.905, False), (0.895, False), (0.92, True), (0.88, True)])
def test_accuracy_is_two_sided_within_the_entry_tolerance(acc, fails):
    entry = {**MEASURED, "accuracy_tolerance": 0.01}
    found = compare(entry, {**MEASURED, "test_acc": acc}, {**EXACT, "test_acc": 0.5})  # the entry's wins
    assert bool(found) == fails
    if fails:
        assert "+-1.00 pp" in found[0].render() and "pp" in found[0].render()


def test_checkpoint_bytes_within_a_relative_tolerance():
    entry = {**MEASURED, "bytes_tolerance": 0.05}
    assert compare(entry, {**MEASURED, "ckpt_bytes": 5200}, EXACT) == []
    assert [m.metric for m in compare(entry, {**MEASURED, "ckpt_bytes": 5300}, EXACT)] == ["ckpt_bytes"]


@pytest.mark.parametrize("flops, fails", [(1080, False), (920, False), (1101, True), (899, True)])
def test_a_calibrated_tolerance_is_relative_and_two_sided_and_the_message_shows_the_range(flops, fails):
    entry = {**MEASURED, "tolerance": {"flops": 0.1, "params": 0.0, "test_acc": 0.01, "ckpt_bytes": 0.05},
             "observed": {"flops": [960, 1040]}}
    found = compare(entry, {**MEASURED, "flops": flops}, EXACT)
    assert bool(found) == fails
    if fails:
        assert "tolerance +-10%" in found[0].render() and "calibration saw 960..1,040" in found[0].render()


def test_the_tolerance_table_wins_over_legacy_fields_and_defaults():
    entry = {**MEASURED, "accuracy_tolerance": 0.05, "tolerance": {"test_acc": 0.02}}
    assert tolerances(entry, EXACT) == {**EXACT, "test_acc": 0.02}
    assert tolerances({**MEASURED, "bytes_tolerance": 0.2}, EXACT)["ckpt_bytes"] == 0.2


def test_missing_entry_fails_with_how_to_create_it(tmp_path, recipe):
    ledger = load_ledger(tmp_path / "none.toml", {"tiny"}, display="recipes/optcheck-ledger.toml")
    j = judge(ledger, recipe, "cpu", "baseline", MEASURED, None)
    assert "no entry" in j.failure and "--optcheck-update" in j.failure and j.update is None
    j = judge(ledger, recipe, "cpu", "baseline", MEASURED, "failed")
    assert j.failure and "rerun to confirm" in j.failure.lower() and j.update["flops"] == 1000
    assert j.update["tolerance"]["test_acc"] == recipe.ledger.accuracy_tolerance  # default from the recipe
    assert j.update["tolerance"]["flops"] == recipe.ledger.architecture_tolerance  # a searched stage
    assert "--optcheck-calibrate" in j.update["calibration"]
    exact = judge(ledger, recipe, "cpu", "baseline", MEASURED, "failed", exact_architecture=True)
    assert exact.update["tolerance"]["flops"] == exact.update["tolerance"]["params"] == 0
    j = judge(ledger, recipe, "cpu", "baseline", MEASURED, "all")
    assert j.failure is None and j.update is not None


def test_update_writes_failed_entries_but_keeps_known_failures(tmp_path, recipe):
    ledger = load_ledger(write(tmp_path, GOOD), {"tiny"})
    moved = {**MEASURED, "flops": 1200}
    j = judge(ledger, recipe, "cpu", "baseline", moved, None, exact_architecture=True)
    assert "flops: 1,200 now, 1,000 in the ledger" in j.failure and j.update is None
    j = judge(ledger, recipe, "cpu", "baseline", moved, "failed", exact_architecture=True)
    assert j.failure and j.update["flops"] == 1200 and j.update["tolerance"]["test_acc"] == 0.01
    pruned = {"test_acc": 0.1, "flops": 500, "params": 50, "ckpt_bytes": 3000}
    j = judge(ledger, recipe, "cpu", "pruned", pruned, "failed")
    assert "known failure: GH-7" in j.failure and j.update is None
    assert judge(ledger, recipe, "cpu", "baseline", MEASURED, "failed").update is None  # passing: untouched


def test_update_all_accepts_and_passes(tmp_path, recipe):
    ledger = load_ledger(write(tmp_path, GOOD), {"tiny"})
    j = judge(ledger, recipe, "cpu", "baseline", {**MEASURED, "test_acc": 0.95}, "all")
    assert j.failure is None and j.update["test_acc"] == 0.95
    assert judge(ledger, recipe, "cpu", "baseline", MEASURED, "all").update is None  # nothing to change


def test_updates_change_values_in_place_and_keep_comments_and_order(tmp_path):
    path = write(tmp_path, GOOD)
    entry = {**MEASURED, "flops": 1234, "accuracy_tolerance": 0.01}
    write_updates(path, {("tiny", "cpu", "baseline"): entry})
    text = path.read_text()
    diff = [d for d in difflib.ndiff(GOOD.splitlines(), text.splitlines()) if d[:1] in "+-"]
    assert diff == ["- flops = 1000", "+ flops = 1234"]  # nothing else moved
    assert "# a comment the team wrote" in text and "# kept on update" in text
    write_updates(path, {("tiny", "cpu", "baseline"): entry})
    assert path.read_text() == text  # the same update twice: the same bytes


def test_new_entries_are_appended_in_a_fixed_order_and_read_back(tmp_path):
    path = tmp_path / "optcheck-ledger.toml"
    e = new_entry(MEASURED, None, EXACT)
    write_updates(path, {("zeta", "cpu", "finetuned"): e, ("alpha", "cpu", "pruned"): e,
                         ("zeta", "cpu", "baseline"): e, ("alpha", "cpu", "baseline"): e})
    text = path.read_text()
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == ["[alpha.cpu.baseline]", "[alpha.cpu.pruned]", "[zeta.cpu.baseline]", "[zeta.cpu.finetuned]"]
    assert text.startswith("# optcheck regression ledger")
    ledger = load_ledger(path, {"alpha", "zeta"})
    assert ledger.entry("zeta", "cpu", "finetuned")["flops"] == 1000
    write_updates(path, {("alpha", "cpu", "finetuned"): e})
    headers = [line for line in path.read_text().splitlines() if line.startswith("[")]
    assert headers[:3] == ["[alpha.cpu.baseline]", "[alpha.cpu.pruned]", "[alpha.cpu.finetuned]"]


def test_a_legacy_entry_of_a_searched_stage_no_longer_demands_exact_flops(tmp_path, recipe):
    """The old format's exact FLOPs were the false alarm on other CPUs: a legacy entry of a searched
    stage takes the recipe's architecture_tolerance; a fixed-architecture stage stays exact."""
    ledger = load_ledger(write(tmp_path, GOOD.replace('known_failure = "GH-7: the subnet collapses before fine-tuning"\n', "")),
                         {"tiny"})
    moved = {"test_acc": 0.8, "flops": 520, "params": 52, "ckpt_bytes": 3000}  # +4%: another subnet
    assert judge(ledger, recipe, "cpu", "pruned", moved, None).failure is None
    far = judge(ledger, recipe, "cpu", "pruned", {**moved, "flops": 600}, None)  # +20%
    assert "flops: 600 now, 500 in the ledger" in far.failure and "calibrated: no" in far.failure
    base = judge(ledger, recipe, "cpu", "baseline", {**MEASURED, "flops": 1001}, None, exact_architecture=True)
    assert "must match exactly" in base.failure

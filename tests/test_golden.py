"""Golden checkpoints (``pipeline.golden``, ``ledger.golden``): written with the ledger's update
options, restored by today's stack, and failing by name when a file is edited, the weights move or the
restore breaks."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from optcheck.ledger.golden import judge
from optcheck.pipeline.golden import folder_for, read

STAGE = "finetuned"  # a Model Optimizer stage of the tiny recipe (FastNAS, then fine-tuned)


def no_spread(recipe_path, stage):
    """Stands in for the numerics-variant subprocesses (tested once, in the shipped goldens' e2e run)."""
    return {"default/1t": {"max_abs_diff": 0.0, "mean_abs_diff": 0.0}}


@pytest.fixture
def golden_run(tiny_run, tmp_path):
    """The session's tiny run, its recipe moved to a fresh folder (goldens live beside the recipe)."""
    recipe = tiny_run.recipe.model_copy(update={"path": tmp_path / "tiny.toml"})
    saved = tiny_run.recipe
    tiny_run.recipe = recipe
    yield tiny_run
    tiny_run.recipe = saved


def write_golden(run):
    verdict = judge(run, STAGE, "failed", measure=no_spread)
    assert "there was none; --optcheck-update wrote it" in verdict.failure and "rerun to confirm" in verdict.failure
    return read(folder_for(run.recipe, STAGE))


def test_a_golden_is_written_with_its_versions_and_checksums_then_passes(golden_run):
    missing = judge(golden_run, STAGE, None, measure=no_spread)
    assert "golden.json: no golden checkpoint here yet" in missing.failure
    assert "write it with `pytest --optcheck --optcheck-update`" in missing.failure
    golden = write_golden(golden_run)
    names = {p.name for p in golden.folder.iterdir()}
    assert names == {"golden.json", "weights.safetensors", "modelopt_state.pt", "outputs.safetensors"}
    assert set(golden.meta["sha256"]) == names - {"golden.json"}
    assert golden.meta["written_by"]["versions"]["nvidia-modelopt"] and golden.meta["checkpoint"] == "modelopt"
    assert golden.meta["observed"]["ulp_perturbation"]["max_abs_diff"] > 0  # measured, not assumed
    assert golden.tolerance >= 1e-5 and golden.mean_tolerance >= 1e-6
    torch.load(golden.folder / "modelopt_state.pt", weights_only=True)  # no pickle beyond plain values
    ok = judge(golden_run, STAGE, None, measure=no_spread)
    assert ok.failure is None and ok.details["max_abs_diff"] <= golden.tolerance
    assert ok.details["top1_agree"] == ok.details["n"] == 48  # the first 64 test images: the tiny split has 48


def _rewrite(golden, name: str, tensors: dict) -> None:
    """Replace a golden's file *and* its checksum: a consistent edit, as a re-save would leave it."""
    from safetensors.torch import save_file

    save_file(tensors, str(golden.folder / name))
    meta = json.loads((golden.folder / "golden.json").read_text())
    meta["sha256"][name] = hashlib.sha256((golden.folder / name).read_bytes()).hexdigest()
    (golden.folder / "golden.json").write_text(json.dumps(meta))


def test_edited_weights_fail_with_the_largest_difference(golden_run):
    golden = write_golden(golden_run)
    weights = golden.tensors("weights.safetensors")
    key = "features.3.weight"  # the small CNN's second conv
    weights[key] = weights[key] * 1.5
    _rewrite(golden, "weights.safetensors", weights)
    failure = judge(golden_run, STAGE, None, measure=no_spread).failure
    assert f"golden[{STAGE}] of tiny (" in failure and "restored with today's stack (torch " in failure
    assert "its logits on the 48 recorded test images differ from those recorded when it was written" in failure
    assert "by up to " in failure and "(image " in failure and "class " in failure and "on average" in failure
    assert "top-1 agrees on" in failure and "fix: if the change is intended" in failure


def test_a_file_edited_behind_the_checksum_is_named_with_the_fix(golden_run):
    golden = write_golden(golden_run)
    with open(golden.folder / "weights.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    failure = judge(golden_run, STAGE, None, measure=no_spread).failure
    assert "weights.safetensors: its sha256 is not the one golden.json records" in failure
    assert "restore the folder from version control" in failure


def test_a_checkpoint_that_no_longer_restores_names_the_error_and_both_stacks(golden_run):
    """What an upgrade that changes the checkpoint format looks like: the weights no longer fit the
    architecture the restored modelopt state builds."""
    golden = write_golden(golden_run)
    weights = golden.tensors("weights.safetensors")
    key = "features.3.weight"  # the small CNN's second conv
    weights[key] = torch.zeros(1, *weights[key].shape[1:])
    _rewrite(golden, "weights.safetensors", weights)
    failure = judge(golden_run, STAGE, None, measure=no_spread).failure
    assert "does not restore with today's stack (torch " in failure and "it was written by torch " in failure
    assert "size mismatch" in failure


def test_update_all_rewrites_and_update_leaves_a_passing_golden_alone(golden_run):
    golden = write_golden(golden_run)
    before = (golden.folder / "golden.json").read_text()
    assert judge(golden_run, STAGE, "failed", measure=no_spread).failure is None  # passing: untouched
    assert (golden.folder / "golden.json").read_text() == before
    shutil.copy(golden.folder / "golden.json", golden.folder.parent / "old.json")
    rewritten = judge(golden_run, STAGE, "all", measure=no_spread)
    assert "--optcheck-update wrote it" in rewritten.failure and read(golden.folder).meta["sha256"]


def test_the_golden_item_runs_in_a_session_and_a_known_failure_xfails(pytester, tiny_recipe_text):
    """The item wiring: golden[<stage>] is collected from the recipe, --optcheck-update writes it (the
    real variant subprocesses measure its tolerance), and with known_failure in golden.json the next run
    is a strict xfail, which the golden passing makes an XPASS failure (so it passes)."""
    pytester.makefile(".toml", tiny=tiny_recipe_text().replace("seed = 0\n", 'seed = 0\ngolden = ["pruned"]\n', 1))
    pytester.makeini("[pytest]\noptcheck_recipes = .\n")
    args = ("--optcheck", "-p", "no:cacheprovider", "-k", "golden", "--optcheck-ledger", "off")
    wrote = pytester.runpytest_subprocess(*args, "--optcheck-update")
    wrote.stdout.fnmatch_lines(["*golden[[]pruned[]] of tiny*there was none; --optcheck-update wrote it (4 restores "
                                "under this machine's numerics variants*"])
    assert wrote.ret == 1
    meta_path = pytester.path / "golden" / "tiny" / "pruned" / "golden.json"
    meta = json.loads(meta_path.read_text())
    meta["known_failure"] = "GH-9: planted"
    meta_path.write_text(json.dumps(meta))
    strict = pytester.runpytest_subprocess(*args)
    strict.stdout.fnmatch_lines(["*XPASS(strict)*GH-9: planted*"])
    assert strict.ret == 1

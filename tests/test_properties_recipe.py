"""A recipe's ``[properties]`` table: one item per property, run by Hypothesis over the recipe's FastNAS
search space; a clean model passes and its verdict is replayed warm; a planted restore bug of a user's
model fails with the shrunk subnet, and the failing subnet waits in the cache's example database."""

from __future__ import annotations

import pytest

from conftest import tiny_recipe
from optcheck.core.errors import RecipeError
from optcheck.recipes.loader import load_recipe

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PROPERTIES = """
[properties]
checks = ["restore_exact", "export_matches_converted", "flops_match", "flops_monotone"]
examples = 4
"""

BUGGY_MODEL = '''
import torch

from optcheck.strategies import CNNSpec
from test_properties import ReinitNarrowLayer  # restore re-initialises blocks[1].conv below 24 channels


def make(num_classes=10, in_channels=3):
    torch.manual_seed(0)
    return ReinitNarrowLayer(CNNSpec(widths=(32, 32, 32), strides=(1, 2, 2)), in_channels, num_classes)
'''


@pytest.fixture(autouse=True, scope="module")
def heavy_modules_loaded_once():
    """pytester's in-process runs drop modules first imported inside them (see test_plugin.py)."""
    import hypothesis  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    from optcheck.core.compat import import_modelopt

    import_modelopt()


def project(pytester, recipe: str):
    pytester.makeini("[pytest]\noptcheck_ledger = off\nfilterwarnings = ignore::UserWarning\n")
    pytester.mkdir("recipes")
    (pytester.path / "recipes" / "tiny.toml").write_text(recipe)
    return pytester


def run(pytester, *args):
    return pytester.runpytest("--optcheck", "recipes", "-p", "no:cacheprovider", "-k", "property",
                              "--optcheck-cache-dir=cache", *args)


def test_each_property_is_an_item_that_passes_on_a_clean_model_and_is_replayed_warm(pytester):
    project(pytester, tiny_recipe() + PROPERTIES)
    cold = run(pytester, "-v")
    cold.assert_outcomes(passed=4)
    for name in ("restore_exact", "export_matches_converted", "flops_match", "flops_monotone"):
        cold.stdout.fnmatch_lines([f"*recipes/tiny.toml::property[[]{name}[]] PASSED*"])
    assert "building baseline" not in cold.stdout.str()  # properties of the architecture: nothing trained
    warm = run(pytester, "-v")
    warm.assert_outcomes(passed=4)
    warm.stdout.fnmatch_lines(["*property[[]restore_exact[]] passed (verdict from the cache*"])


def test_a_restore_bug_of_some_subnets_fails_with_the_shrunk_subnet_and_is_kept_for_next_time(pytester):
    pytester.makepyfile(buggy=BUGGY_MODEL)
    recipe = (tiny_recipe().replace('name = "small_cnn"', 'name = "buggy:make"')
              .replace("channel_divisor = 4", "channel_divisor = 8").replace("feature_divisor = 4", "feature_divisor = 8")
              + PROPERTIES.replace('"export_matches_converted", "flops_match", "flops_monotone"', "")
              .replace("restore_exact\", ", "restore_exact\"").replace("examples = 4", "examples = 30"))
    project(pytester, recipe)
    pytester.syspathinsert()
    first = run(pytester, "--optcheck-rebuild")
    first.assert_outcomes(failed=1)
    out = first.stdout.str()
    assert "blocks.1.conv.out_channels = 16 (of 32)" in out, out[-4000:]
    assert "restore_exact(converted_model" in out  # how to reproduce it
    database = pytester.path / "cache" / "hypothesis"
    assert database.is_dir() and any(p.is_file() for p in database.rglob("*"))
    # the shrunk subnet is tried first: the next search fails at its first example
    recipe_one = recipe.replace("examples = 30", "examples = 1")
    (pytester.path / "recipes" / "tiny.toml").write_text(recipe_one)
    again = run(pytester, "--optcheck-rebuild")
    again.assert_outcomes(failed=1)
    assert "blocks.1.conv.out_channels = 16 (of 32)" in again.stdout.str()


@pytest.mark.parametrize("text, needle", [
    (tiny_recipe().split("[[steps]]")[0] + '[[steps]]\nkind = "finetune"\n[budgets]\naccuracy_drop_under = 0.1\n'
     + PROPERTIES, "field 'properties'"),
    (tiny_recipe() + PROPERTIES.replace("flops_match", "flops_equal"), "field 'properties.checks"),
    (tiny_recipe() + PROPERTIES.replace("examples = 4", "examples = 0"), "field 'properties.examples'"),
    (tiny_recipe() + '\n[properties]\nchecks = ["flops_match", "flops_match"]\n', "field 'properties.checks'"),
])
def test_a_bad_properties_table_names_its_field(tmp_path, text, needle):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert needle in str(info.value), str(info.value)

"""The model-zoo matrix (optcheck/zoo.py): phases run in order and stop at the first failure, known
failures turn into xfail / xpass, and the Markdown matrix shows it. Real Model Optimizer runs on
small models at 32 px (ResNet20, torchvision resnet18, a planted model whose restore must fail); the
classification and the matrix on hand-made results."""

from __future__ import annotations

import json

from pathlib import Path

import pytest
import torch.nn as nn

from optcheck.recipes.zoo_phases import ALL_PHASES, PHASES, check_phases
from optcheck.zoo.results import (FAILED, NOT_RUN, PASSED, XFAILED, XPASSED, KnownFailure, ModelResult, PhaseResult, classify, gate_failures, matrix_markdown, stale_known_failures, trim_message)
from optcheck.recipes.zoo import ModelCase
from optcheck.zoo.recipe_path import recipe_for
from optcheck.zoo.stepper import run_model

# -- planted models ----------------------------------------------------------------------------------

_BUILT = {"n": 0}


def growing_cnn(num_classes: int = 10) -> nn.Module:
    """A factory that is not deterministic: each call after the first adds a convolution, as a
    constructor reading a global counter would. The model saved is not the one ``restore`` gets."""
    _BUILT["n"] += 1
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    if _BUILT["n"] > 1:
        layers += [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    layers += [nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes)]
    return nn.Sequential(*layers)


class _TupleOut(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        out = self.head(self.conv(x).mean((2, 3)))
        return out, out


class _AuxOut(nn.Module):
    """Logits in eval mode, (logits, aux logits) in training mode, like torchvision's googlenet."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                      nn.ReLU())
        self.head, self.aux = nn.Linear(32, num_classes), nn.Linear(32, num_classes)

    def forward(self, x):
        f = self.features(x).mean((2, 3))
        return (self.head(f), self.aux(f)) if self.training else self.head(f)


def aux_cnn(num_classes: int = 10) -> nn.Module:
    return _AuxOut(num_classes)


def tuple_cnn(num_classes: int = 10) -> nn.Module:
    """A model whose forward returns a tuple: fails at build, with what it returns."""
    return _TupleOut(num_classes)


RESNET20 = ModelCase("optcheck.build.models:resnet20", input_size=32, channel_divisor=8, feature_divisor=8)
SMALL_CNN = ModelCase("small_cnn", input_size=16, num_classes=4, channel_divisor=4, feature_divisor=4)
RESNET18 = ModelCase("torchvision:resnet18", input_size=32)
GROWING = ModelCase(f"{__name__}:growing_cnn", input_size=16, channel_divisor=8, feature_divisor=8)


@pytest.fixture(scope="module")
def resnet20_result(tmp_path_factory):
    return run_model(RESNET20, PHASES + ("prune",), tmp_path_factory.mktemp("zoo-resnet20"), seed=0)


@pytest.fixture(scope="module")
def growing_result(tmp_path_factory):
    _BUILT["n"] = 0
    return run_model(GROWING, ALL_PHASES, tmp_path_factory.mktemp("zoo-growing"), seed=0)


# -- real runs ---------------------------------------------------------------------------------------

def test_resnet20_passes_every_phase_with_exact_round_trip(resnet20_result):
    r = resnet20_result
    assert [p.phase for p in r.phases] == [*PHASES, "prune"]
    assert r.passed, [(p.phase, p.error) for p in r.phases if p.status != PASSED]
    assert r.failed_phase is None
    assert r.phase("convert").details["searchable_hparams"] > 0
    sample = r.phase("sample").details
    assert 0 < sample["params"] < sample["full_params"] and sample["hparams_shrunk"] > 0
    assert r.phase("export").details["params"] == sample["params"]
    assert r.phase("save").details["modes"] == ["fastnas", "export_nas"]
    assert r.phase("restore").details == {"restores": 3} and r.phase("compare").details["restores"] == 3
    assert r.phase("compare").details["max_abs_diff"] <= 1e-6
    prune = r.phase("prune").details
    assert prune["flops"] <= 0.7 * 1.05 * prune["full_flops"] and prune["subnets_scored"] > 0
    assert all(p.seconds > 0 for p in r.phases)
    assert r.versions["nvidia-modelopt"]


def test_torchvision_resnet18_passes_the_core_phases(tmp_path):
    r = run_model(RESNET18, PHASES, tmp_path, seed=0)
    assert r.passed, [(p.phase, p.error) for p in r.phases if p.status != PASSED]
    assert (tmp_path / f"{RESNET18.slug}_exported.pth").stat().st_size == r.phase("save").details["bytes"]


@pytest.mark.slow
def test_torchvision_resnet18_passes_every_phase(tmp_path):
    r = run_model(RESNET18, ALL_PHASES, tmp_path, seed=0)
    assert r.passed, [(p.phase, p.error) for p in r.phases if p.status != PASSED]
    assert [p.phase for p in r.phases] == list(ALL_PHASES)
    assert r.phase("prune").details["ratio"] <= 0.7 * 1.05
    assert r.phase("recipe_path").details["stages"] == ["baseline", "pruned", "finetuned"]


def test_a_factory_that_builds_another_model_fails_at_restore(growing_result):
    r = growing_result
    assert [p.status for p in r.phases[:5]] == [PASSED] * 5
    restore = r.phase("restore")
    assert restore.status == FAILED and r.failed_phase == "restore"
    assert restore.error_type == "AssertionError"  # modelopt's own: "val = 32, choices = [8, 16]"
    assert "\n" not in restore.message and len(restore.message) <= 400
    assert restore.message.startswith("the factory built another model for restore than the one saved "
                                      "(14 vs 20 tensors; new: "), restore.message
    assert "mto.restore raised AssertionError: val = 32, choices = [8, 16]" in restore.message
    assert restore.hint.startswith("make the factory deterministic")
    for later in ("compare", "prune", "recipe_path"):
        p = r.phase(later)
        assert p.status == NOT_RUN and p.message == "not run (after restore failed)" and p.seconds == 0
    assert not r.passed


def test_a_restore_that_passes_once_and_fails_on_another_instance(tmp_path, monkeypatch):
    # Model Optimizer 0.47's restore of concatenations depends on the instance: the phase restores into
    # three fresh models and says so when only a later one fails
    from optcheck.core.compat import import_modelopt

    _, mto, _ = import_modelopt()
    real, calls = mto.restore, {"n": 0}

    def flaky(model, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("Error in selecting config:\nInconsistent keys in config:\n\tx.out_channels: "
                               "active=32, config=64")
        return real(model, path)

    monkeypatch.setattr(mto, "restore", flaky)
    r = run_model(SMALL_CNN, PHASES, tmp_path)
    restore = r.phase("restore")
    assert restore.status == FAILED and restore.error_type == "RuntimeError", r.as_dict()
    assert restore.message.startswith("restore 2 of 3 (into another fresh model) raised RuntimeError after 1 "
                                      "passed: the result depends on the model instance | Error in selecting config")
    assert "list(set(inputs))" in restore.hint
    assert classify([r], [KnownFailure(SMALL_CNN.name, "restore", "T", "r", "Inconsistent keys")])[5].outcome == XFAILED


def test_a_forward_that_returns_a_tuple_fails_at_build(tmp_path):
    r = run_model(ModelCase(f"{__name__}:tuple_cnn", input_size=8), PHASES, tmp_path)
    build = r.phase("build")
    assert build.status == FAILED and build.error_type == "PhaseFailure"
    assert build.message == "the model's eval-mode forward returns a tuple, not one logits tensor"
    assert [p.status for p in r.phases[1:]] == [NOT_RUN] * (len(PHASES) - 1)


def test_an_unknown_model_fails_at_build_with_the_recipe_error(tmp_path):
    r = run_model(ModelCase("torchvision:resnet19"), PHASES, tmp_path)
    assert r.failed_phase == "build" and r.phase("build").error_type == "RecipeError"
    assert "did you mean" in r.phase("build").message


def test_divisors_wider_than_every_layer_fail_at_convert(tmp_path):
    r = run_model(ModelCase("small_cnn", input_size=8, channel_divisor=128, feature_divisor=128), PHASES, tmp_path)
    convert = r.phase("convert")
    assert convert.status == FAILED and convert.error_type == "ApplyModeError", r.as_dict()
    assert "does not contain any configurable hyperparameters" in convert.message
    assert "lower the divisors" in convert.hint


def test_the_recipe_path_runs_optchecks_pipeline(tmp_path):
    r = run_model(SMALL_CNN, ("build", "recipe_path"), tmp_path)
    assert r.passed, r.as_dict()
    details = r.phase("recipe_path").details
    assert details["stages"] == ["baseline", "pruned", "finetuned"]
    assert details["pruned_flops"] < details["baseline_flops"]


def test_the_recipe_path_fails_where_the_single_phases_pass(tmp_path):
    # a forward that returns a tuple in training mode only (torchvision's googlenet and inception_v3 do,
    # with their default aux_logits=True): every single phase runs in eval mode and passes
    r = run_model(ModelCase(f"{__name__}:aux_cnn", input_size=16, num_classes=4, channel_divisor=8,
                            feature_divisor=8), (*PHASES, "recipe_path"), tmp_path)
    assert [p.status for p in r.phases] == [PASSED] * len(PHASES) + [FAILED], r.as_dict()
    p = r.phase("recipe_path")
    # caught before training, by the recipe's checks (checks.check_training_forward), with the fix
    assert p.error_type == "RecipeError" and "model.options" in p.message, p.message
    assert "returns a tuple in training mode" in p.message and "logits tensor alone" in p.message, p.message
    assert "aux_logits=False" in p.hint


def test_as_dict_is_json(resnet20_result, growing_result):
    for r in (resnet20_result, growing_result):
        data = json.loads(json.dumps(r.as_dict()))
        assert data["model"] == r.case.name and len(data["phases"]) == len(r.phases)
    assert json.loads(json.dumps(growing_result.as_dict()))["failed_phase"] == "restore"


# -- known failures ----------------------------------------------------------------------------------

def test_a_known_failure_that_fails_is_xfailed(growing_result):
    known = [KnownFailure(GROWING.name, "restore", "T-1", "the factory is not deterministic", "another model")]
    verdicts = classify([growing_result], known)
    cell = {v.phase: v for v in verdicts}
    assert cell["restore"].outcome == XFAILED and cell["restore"].ok
    assert "T-1" in cell["restore"].message and "another model" in cell["restore"].message
    assert cell["compare"].outcome == NOT_RUN
    assert gate_failures(verdicts) == []


def test_another_failure_at_a_known_phase_is_a_failure(growing_result):
    known = [KnownFailure(GROWING.name, "restore", "T-1", "concat order", r"Inconsistent keys in config")]
    (bad,) = gate_failures(classify([growing_result], known))
    assert bad.phase == "restore" and bad.outcome == FAILED
    assert "expects /Inconsistent keys in config/" in bad.message


def test_a_known_failure_that_passes_is_xpassed_and_fails_the_gate(resnet20_result):
    known = [KnownFailure(RESNET20.name, "restore", "T-2", "Model Optimizer bug")]
    verdicts = classify([resnet20_result], known)
    (bad,) = gate_failures(verdicts)
    assert bad.phase == "restore" and bad.outcome == XPASSED and not bad.ok
    assert "fixed upstream? remove the known_failure entry" in bad.message and "T-2" in bad.message
    assert {v.outcome for v in verdicts if v.phase != "restore"} == {PASSED}


def test_an_unexpected_failure_fails_the_gate_with_its_hint(growing_result):
    (bad,) = gate_failures(classify([growing_result]))
    assert bad.outcome == FAILED and bad.phase == "restore" and "fix: make the factory deterministic" in bad.message


def test_stale_known_failures(resnet20_result):
    known = [KnownFailure("torchvision:nope", "convert", "T-3", "typo")]
    assert stale_known_failures([resnet20_result], known) == known


def test_known_failure_phase_is_checked():
    with pytest.raises(ValueError, match="unknown phase 'restored'"):
        KnownFailure("x", "restored", "T", "r")


# -- hand-made results: classification and the matrix without Model Optimizer -------------------------

def _result(name: str, fail_at: str | None = None, phases=PHASES, seconds: float = 1.5,
            message: str = "boom") -> ModelResult:
    out, failed = [], None
    for p in phases:
        if failed:
            out.append(PhaseResult(p, NOT_RUN, message=f"not run (after {failed} failed)"))
        elif p == fail_at:
            failed = p
            out.append(PhaseResult(p, FAILED, 0.2, "RuntimeError", message, "a hint"))
        else:
            out.append(PhaseResult(p, PASSED, 0.1))
    return ModelResult(ModelCase(name), out, seconds)


def test_matrix_markdown():
    results = [_result("torchvision:resnet18", seconds=3.25),
               _result("torchvision:squeezenet1_0", "restore", message="Inconsistent keys in config: a | b"),
               _result("torchvision:densenet121", "convert", message="Missing symbols!"),
               _result("torchvision:vgg11_bn", "compare")]
    known = [KnownFailure("torchvision:squeezenet1_0", "restore", "issue 10", "concat order"),
             KnownFailure("torchvision:resnet18", "export", "issue 11", "was broken")]
    text = matrix_markdown(results, known, title="## FastNAS on Model Optimizer 0.47")
    lines = text.splitlines()
    assert lines[0] == "## FastNAS on Model Optimizer 0.47"
    assert lines[2] == "| model | input | " + " | ".join(PHASES) + " | seconds |"
    assert lines[4] == "| resnet18 | 32 | ✓ | ✓ | ✓ | ✓ (xpass) | ✓ | ✓ | ✓ | 3.2 |"
    assert lines[5] == "| squeezenet1_0 | 32 | ✓ | ✓ | ✓ | ✓ | ✓ | known failure | – | 1.5 |"
    assert lines[6] == "| densenet121 | 32 | ✓ | ✗ | – | – | – | – | – | 1.5 |"
    assert lines[7] == "| vgg11_bn | 32 | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✗ | 1.5 |"
    assert lines[8].startswith("| **total** (4 models) |") and lines[8].endswith("| 7.8 |")
    notes = "\n".join(lines[9:])
    assert "**densenet121** `convert` ✗: RuntimeError: Missing symbols! — fix: a hint" in notes
    assert "**squeezenet1_0** `restore` known failure: known failure (issue 10: concat order)" in notes
    assert "**resnet18** `export` ✓ (xpass): " in notes and "remove the known_failure entry" in notes


def test_a_known_failure_may_name_the_models_label():
    results = [_result("torchvision:squeezenet1_0", "restore", message="Inconsistent keys in config: x")]
    known = [KnownFailure("squeezenet1_0", "restore", "issue 10", "concat order", "Inconsistent keys"),
             KnownFailure("squeezenet1_9", "restore", "issue 10", "typo")]
    (cell,) = [v for v in classify(results, known) if v.phase == "restore"]
    assert cell.outcome == XFAILED and cell.known is known[0]
    assert stale_known_failures(results, known) == [known[1]]


def test_matrix_shows_optional_phases_only_when_run():
    text = matrix_markdown([_result("a.b:c", phases=PHASES + ("recipe_path",))])
    assert "| compare | recipe_path | seconds |" in text and "prune" not in text.splitlines()[0]


def test_phases_are_checked_and_ordered():
    assert check_phases(["recipe_path", *PHASES]) == PHASES + ("recipe_path",)
    assert check_phases(["build", "prune"]) == ("build", "prune")
    with pytest.raises(ValueError, match="add 'sample'"):
        check_phases(["build", "convert", "export"])
    with pytest.raises(ValueError, match="unknown phase 'bulid'"):
        check_phases(["bulid"])
    with pytest.raises(ValueError, match="add 'build'"):
        check_phases(["prune"])


def test_model_case_options_and_names():
    case = ModelCase("torchvision:googlenet", options={"init_weights": True, "aux_logits": False})
    assert case.options == (("aux_logits", False), ("init_weights", True)) and hash(case)
    assert case.label == "googlenet" and ModelCase("pkg.mod:make").label == "pkg.mod:make"
    assert ModelCase("pkg.mod:make").slug == "pkg.mod-make"
    with pytest.raises(ValueError):
        ModelCase("x", input_size=0)


def test_trim_message():
    exc = RuntimeError("Error in selecting config:\n\tInconsistent keys in config:\n\ta: 1\n" + "b" * 600)
    text = trim_message(exc)
    assert text.startswith("Error in selecting config: | Inconsistent keys in config: | a: 1 | bbb")
    assert len(text) == 500 and text.endswith("b…")
    table = ("Profiling Results\n┏━━━━┳━━━━┓\n┃ Constraint ┃ min ┃\n┡━━━━╇━━━━┩\n│ flops │ 1.37M │\n└────┴────┘\n"
             "------\n" + "x" * 300 + "\nNOT all constraints can be satisfied within the search space, see above!")
    text = trim_message(ValueError(table), limit=200)
    assert text.startswith("Profiling Results | Constraint min | flops 1.37M | xxx")
    assert text.endswith("x … | NOT all constraints can be satisfied within the search space, see above!")
    assert len(text) <= 200


def test_the_shipped_zoo_recipe_and_its_known_failures_agree():
    """The shipped zoo/torchvision.toml (13 models, inception_v3 at 75 px) and the known failures its
    ledger records name the same models: a broken or renamed entry fails here, in .ci/run."""
    from optcheck.ledger.entries import load_ledger
    from optcheck.plugin.settings import known_recipe_names
    from optcheck.recipes.loader import load_any
    from optcheck.zoo.session import known_failure

    root = Path(__file__).resolve().parents[1] / "zoo"
    recipe = load_any(root / "torchvision.toml")
    cases = recipe.cases()
    labels = {c.label for c in cases}
    assert len(cases) == 13 and len(labels) == 13
    assert next(c for c in cases if c.label == "inception_v3").input_size == 75
    ledger = load_ledger(root / "optcheck-ledger.toml", known_recipe_names([root], root / "optcheck-ledger.toml"))
    known = {label: phase for label in labels for phase in recipe.phases
             if known_failure(ledger, recipe.name, label, phase) is not None}
    assert known == {"squeezenet1_0": "restore", "squeezenet1_1": "restore", "googlenet": "restore",
                     "inception_v3": "restore", "densenet121": "convert"}


def test_recipe_for_is_a_valid_recipe(tmp_path):
    from optcheck.recipes.loader import parse_recipe

    recipe = parse_recipe(recipe_for(RESNET18), tmp_path / "r.toml")
    assert [s.kind for s in recipe.steps] == ["fastnas", "finetune"]
    assert recipe.data.options["image_size"] == 32 and recipe.budgets.stages["pruned"].restore_roundtrip

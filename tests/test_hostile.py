"""The hostile-input catalogue: recipes and command lines a hostile (or hurried) user writes, each run
through the plugin, each with the outcome it must have.

Outcomes:
- ``Error``: a clear error before anything trains — the recipe's file, the field, the fix; no traceback,
  tens of lines at most. Only that recipe fails; the good recipe beside it still passes.
- ``Fails``: the recipe runs and a check fails loudly, with a short message saying why.
- ``Judged``: a budget that could silently vanish (a limit of 0) is a test item that judges.
- ``Passes`` / ``Skipped``: correct inputs that must not be mistaken for hostile ones.

Every recipe case lives in ONE pytest session (a subprocess, as a user runs it), so the catalogue
also proves that one broken recipe never stops the others. Command-line and fault cases (a typo in
``--optcheck-recipes``, a full disk, leftover folders) run their own sessions below.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import tomlkit

HERE = Path(__file__).parent

BASE: dict[str, Any] = {
    "description": "hostile-input catalogue: synthetic images + small_cnn, seconds per build",
    "seed": 0,
    "data": {"dataset": "synthetic", "batch_size": 32, "augment": ["crop"],
             "options": {"samples": 240, "classes": 4, "image_size": 16}},
    "model": {"name": "small_cnn"},
    "train": {"epochs": 6, "lr": 0.4, "warmup_epochs": 0.5},
    "steps": [{"kind": "fastnas", "flops": "60%", "channel_divisor": 4, "feature_divisor": 4, "calib_batches": 2},
              {"kind": "finetune", "epochs": 1, "lr_scale": 0.1}],
    "budgets": {"flops_below": "70%", "accuracy_drop_under": 0.5, "restore_roundtrip": True},
}
DELETE = object()


def edit(*changes: tuple[str, Any]) -> Callable[[dict], dict]:
    """Set (or with ``DELETE`` remove) dotted keys of a copy of the base recipe; ``steps.0.flops``
    indexes a list."""

    def apply(recipe: dict) -> dict:
        recipe = copy.deepcopy(recipe)
        for dotted, value in changes:
            *parents, last = dotted.split(".")
            node: Any = recipe
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
            if value is DELETE:
                node.pop(int(last) if isinstance(node, list) else last, None)
            elif isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        return recipe

    return apply


def text(recipe: dict) -> str:
    return tomlkit.dumps(recipe)


@dataclass
class Error:
    field: str
    needles: tuple[str, ...] = ()


@dataclass
class Fails:
    check: str
    needles: tuple[str, ...] = ()


@dataclass
class Step:
    """An error raised inside the user's code before training: one short message with the cause and
    the user's file and line."""

    needles: tuple[str, ...] = ()


@dataclass
class Judged:
    check: str


@dataclass
class Passes:
    pass


@dataclass
class Skipped:
    needle: str


@dataclass
class Case:
    name: str
    expect: Any
    raw: bytes | None = None  # the file's bytes, when the case is about the file itself
    why: str = ""


def factory_data(fn: str, **more) -> Callable[[dict], dict]:
    return edit(("data.dataset", f"hostile_factories:{fn}"), ("data.options", DELETE), *more.items())


def factory_model(fn: str) -> Callable[[dict], dict]:
    return edit(("model.name", f"hostile_factories:{fn}"), ("model.options", DELETE))


# no search: one short fine-tune (a model FastNAS cannot convert, or one that breaks before any step)
TRAIN_ONLY = edit(("steps", [{"kind": "finetune", "epochs": 1}]), ("budgets", {"accuracy_drop_under": 0.5}))

CASES = [
    # -- the silent passes of the issue: every one of them is now an error or a judged budget -----
    Case("drop_zero_is_a_budget", Judged("accuracy_drop_under"), why="0 == False made the budget vanish"),
    Case("stage_drop_zero_is_a_budget", Judged("pruned::accuracy_drop_under")),
    Case("pre_finetune_drop_under_of_old_recipes", Error("budgets.pre_finetune_drop_under",
                                                         ("replaced by per-stage budgets", "[budgets.pruned]"))),
    Case("roundtrip_off_as_a_word", Error("budgets.restore_roundtrip", ("'off'", "true and false"))),
    Case("batch_size_quoted", Error("data.batch_size", ("without quotes", "batch_size = 32"))),
    Case("drop_quoted", Error("budgets.accuracy_drop_under", ("without quotes",))),
    Case("drop_of_one_cannot_fail", Error("budgets.accuracy_drop_under", ("can never fail", "0.01 for 1 pp"))),
    Case("flops_below_100_percent_cannot_fail", Error("budgets.flops_below", ("can never fail", "report_only"))),
    Case("flops_below_absolute_over_the_full_model", Error("budgets.flops_below", ("can never fail", "full, unpruned"))),
    Case("params_below_absolute_over_the_full_model", Error("budgets.params_below", ("can never fail",))),
    Case("test_limit_of_one", Error("data.test_limit", ("min_test_samples = 40",))),
    Case("test_split_of_ten", Error("data.test_fraction", ("holds 10 samples", "min_test_samples"))),
    Case("test_labels_outside_the_classes", Error("data.dataset", ("labels [4, 5, 6, 7]", "outside the model's 4 classes"))),
    Case("negative_labels", Error("data.dataset", ("labels [-1]",))),
    Case("fastnas_batch_size_one", Error("data.batch_size", ("BatchNorm",))),
    # -- the raw tracebacks of the issue: each one a named field and a fix -------------------------
    Case("seed_negative", Error("seed", ("[0, 4294967294]",))),
    Case("seed_of_2_32_minus_1", Error("seed", ("less than or equal to 4294967294",))),
    Case("seeds_with_a_negative_one", Error("seeds[1]", ("[0, 4294967294]",))),
    Case("val_split_too_small_for_the_classes", Error("data.val_fraction", ("one sample of each of 4 classes",))),
    Case("channel_divisor_over_every_layer", Error("steps[0].channel_divisor", ("16, 32, 64 output channels", "lower"))),
    Case("slash_in_the_name", Error("name", ("not file-safe", "'a-b'"))),
    Case("space_in_the_file_name", Error("name", ("not file-safe", "rename the file"))),
    Case("unknown_model_option", Error("model.options.widht", ("did you mean 'width'",))),
    Case("model_option_optcheck_sets", Error("model.options.num_classes", ("optcheck sets num_classes",))),
    Case("unknown_torchvision_option", Error("model.options", ("unexpected keyword argument 'depth'",))),
    Case("model_factory_raises", Step(("ValueError: depth must be one of 18, 34, 50", "hostile_factories.py:"))),
    Case("model_forward_returns_a_tuple", Error("model.name", ("returns a tuple",))),
    Case("model_head_ignores_num_classes", Error("model.name", ("(2, 7)", "expected (2, 4)"))),
    Case("model_factory_returns_a_dict", Error("model.name", ("returned dict, not a torch.nn.Module",))),
    Case("dataset_of_flat_vectors", Error("data.dataset", ("shape (64,)", "takes images"))),
    Case("dataset_factory_raises", Step(("FileNotFoundError: annotations.csv", "hostile_factories.py:"))),
    Case("dataset_factory_without_seed", Error("data.dataset", ("no 'seed' argument",))),
    Case("dataset_factory_returns_a_string", Error("data.dataset", ("returned str",))),
    Case("dataset_factory_unknown_option", Error("data.options.root", ("takes no argument 'root'",))),
    Case("empty_val_split", Error("data.dataset", ("val split is empty",))),
    Case("utf8_bom", Error("<file>", ("byte-order mark",)), raw=b"\xef\xbb\xbf" + text(BASE).encode()),
    Case("not_utf8", Error("<file>", ("not UTF-8",)), raw=text(BASE).replace("seconds", "s\xe9conds").encode("latin-1")),
    Case("breaks_in_training", Fails("baseline_accuracy_at_least", ("stage 'baseline'", "CUDA-only custom kernel",
                                                              "hostile_factories.py:"))),
    # -- our own: schema ---------------------------------------------------------------------------
    Case("toml_syntax_error", Error("<syntax>", ("not valid TOML", "line")), raw=b'seed = 0\n[data\ndataset = "x"\n'),
    Case("budget_name_typo", Error("budgets.acuracy_drop_under", ("did you mean 'accuracy_drop_under'",))),
    Case("top_level_typo", Error("seeed", ("did you mean 'seed'",))),
    Case("unknown_step_kind", Error("steps[0]", ("unknown or missing step kind", "'prune'"))),
    Case("fastnas_two_constraints", Error("steps[0]", ("exactly one of 'flops' or 'params'",))),
    Case("fastnas_no_constraint", Error("steps[0]", ("exactly one of 'flops' or 'params'",))),
    Case("two_stages_with_one_name", Error("steps", ("two stages are named 'finetuned'", "name = 'finetuned2'"))),
    Case("budgets_of_a_stage_that_does_not_exist", Error("budgets.prunned", ("no stage 'prunned'", "did you mean 'pruned'?"))),
    Case("step_kind_removed_from_model_optimizer", Error("steps[0].kind", ("removed from Model Optimizer in 0.45",))),
    Case("gpu_only_quantization_format_on_cpu", Error("steps[0].format", ("needs a CUDA GPU", "use a CPU format"))),
    Case("no_budgets_table", Error("budgets", ("missing required field",))),
    Case("only_the_baseline_floor", Error("budgets", ("at least one budget",))),
    Case("budgets_without_any_step", Error("steps", ("compare the baseline with itself", "add a [[steps]] table"))),
    Case("unreachable_flops_target", Error("steps[0].flops", ("unreachable", "smallest subnet"))),
    Case("percent_of_zero", Error("budgets.params_below", ("(0%, 100%]",))),
    Case("percent_over_100", Error("steps[0].flops", ("(0%, 100%]",))),
    Case("negative_learning_rate", Error("train.lr", ("greater than 0",))),
    Case("warmup_longer_than_training", Error("train", ("must be less than epochs",))),
    Case("zero_epochs", Error("train.epochs", ("greater than or equal to 1",))),
    Case("seed_as_a_boolean", Error("seed", ("valid integer",))),
    Case("seed_as_a_float", Error("seed", ("valid integer",))),
    Case("repeated_seeds", Error("seeds", ("repeat a seed", "list each seed once"))),
    Case("confidence_over_one", Error("budgets.confidence", ("less than 1",))),
    Case("unknown_accuracy_rule", Error("budgets.accuracy_rule", ("'point', 'not_significantly_over' or 'assured_under'",))),
    Case("unknown_augmentation", Error("data.augment[0]", ("'hflip' or 'crop'",))),
    Case("unknown_dataset", Error("data.dataset", ("digits | cifar10 | synthetic",))),
    Case("unknown_torchvision_model", Error("model.name", ("did you mean resnet101",))),
    Case("unknown_dataset_option", Error("data.options", ("did you mean 'samples'",))),
    Case("dataset_option_of_the_wrong_type", Error("data.options.image_size", ("integer >= 2",))),
    Case("dataset_factory_not_importable", Error("data.dataset", ("cannot import", "nope.missing"))),
    Case("report_only_without_the_budget", Error("budgets.report_only", ("no such budget",))),
    Case("negative_num_workers", Error("data.num_workers", ("greater than or equal to 0",))),
    Case("roundtrip_negative_tolerance", Error("budgets.restore_roundtrip.atol", ("greater than or equal to 0",))),
    Case("baseline_floor_as_a_word", Error("budgets.baseline_accuracy_at_least", ("neither 'auto' nor a fraction",))),
    # -- correct inputs that must not be mistaken for hostile ones ---------------------------------
    Case("good", Passes()),
    Case("flops_below_100_percent_report_only", Passes()),
    Case("finetune_before_fastnas", Passes(), why="any order of steps is a pipeline"),
    Case("quantize_only_recipe", Passes()),
    Case("cifar10_not_on_disk", Skipped("CIFAR-10 not found")),
]

RECIPES: dict[str, Callable[[dict], dict]] = {
    "drop_zero_is_a_budget": edit(("budgets.accuracy_drop_under", 0.0)),
    "stage_drop_zero_is_a_budget": edit(("budgets.pruned", {"accuracy_drop_under": 0}),
                                        ("budgets.restore_roundtrip", False)),
    "pre_finetune_drop_under_of_old_recipes": edit(("budgets.pre_finetune_drop_under", 0.1)),
    "roundtrip_off_as_a_word": edit(("budgets.restore_roundtrip", "off")),
    "batch_size_quoted": edit(("data.batch_size", "32")),
    "drop_quoted": edit(("budgets.accuracy_drop_under", "0.2")),
    "drop_of_one_cannot_fail": edit(("budgets.accuracy_drop_under", 1.0)),
    "flops_below_100_percent_cannot_fail": edit(("budgets.flops_below", "100%")),
    "flops_below_absolute_over_the_full_model": edit(("budgets.flops_below", 10**12)),
    "params_below_absolute_over_the_full_model": edit(("budgets.params_below", 10**9)),
    "test_limit_of_one": edit(("data.test_limit", 1)),
    "test_split_of_ten": factory_data("tiny_test"),
    "test_labels_outside_the_classes": factory_data("labels_beyond_the_classes"),
    "negative_labels": factory_data("negative_labels"),
    "fastnas_batch_size_one": edit(("data.batch_size", 1)),
    "seed_negative": edit(("seed", -1)),
    "seed_of_2_32_minus_1": edit(("seed", 2**32 - 1)),
    "seeds_with_a_negative_one": edit(("seed", DELETE), ("seeds", [0, -1])),
    "val_split_too_small_for_the_classes": edit(("data.val_fraction", 0.01)),
    "channel_divisor_over_every_layer": edit(("steps.0.channel_divisor", 64), ("steps.0.feature_divisor", 64)),
    "slash_in_the_name": edit(("name", "a/b")),
    "space_in_the_file_name": edit(),  # written as "space in the file name.toml" below
    "unknown_model_option": edit(("model.options", {"widht": 8})),
    "model_option_optcheck_sets": edit(("model.options", {"num_classes": 3})),
    "unknown_torchvision_option": edit(("model.name", "torchvision:resnet18"), ("model.options", {"depth": 18}),
                                       ("steps", [{"kind": "finetune", "epochs": 1}]),
                                       ("budgets", {"accuracy_drop_under": 0.5})),
    "model_factory_raises": factory_model("raising_model"),
    "model_forward_returns_a_tuple": factory_model("tuple_model"),
    "model_head_ignores_num_classes": factory_model("fixed_head_model"),
    "model_factory_returns_a_dict": factory_model("not_a_model"),
    "dataset_of_flat_vectors": factory_data("flat_vectors"),
    "dataset_factory_raises": factory_data("raising_data"),
    "dataset_factory_without_seed": factory_data("data_without_seed"),
    "dataset_factory_returns_a_string": factory_data("data_as_a_string"),
    "dataset_factory_unknown_option": edit(("data.dataset", "hostile_factories:good_data"),
                                           ("data.options", {"root": "/data"})),
    "empty_val_split": factory_data("empty_val"),
    "breaks_in_training": lambda r: factory_model("breaks_in_training")(TRAIN_ONLY(r)),
    "budget_name_typo": edit(("budgets.acuracy_drop_under", 0.1)),
    "top_level_typo": edit(("seeed", 1)),
    "unknown_step_kind": edit(("steps.0.kind", "prune")),
    "fastnas_two_constraints": edit(("steps.0.params", "50%")),
    "fastnas_no_constraint": edit(("steps.0.flops", DELETE)),
    "finetune_before_fastnas": lambda r: {**r, "steps": list(reversed(r["steps"]))},
    "two_stages_with_one_name": lambda r: {**r, "steps": r["steps"] + [{"kind": "finetune", "epochs": 1}]},
    "budgets_of_a_stage_that_does_not_exist": edit(("budgets.prunned", {"accuracy_drop_under": 0.5})),
    "step_kind_removed_from_model_optimizer": edit(("steps.0.kind", "gradnas")),
    "gpu_only_quantization_format_on_cpu": edit(("steps", [{"kind": "quantize", "format": "nvfp4"}]),
                                                ("budgets", {"accuracy_drop_under": 0.5})),
    "quantize_only_recipe": edit(("steps", [{"kind": "quantize", "calib_batches": 2}]),
                                 ("budgets", {"accuracy_drop_under": 0.5, "size_below": "30%", "restore_roundtrip": True})),
    "no_budgets_table": edit(("budgets", DELETE)),
    "only_the_baseline_floor": edit(("budgets", {"baseline_accuracy_at_least": 0.5})),
    "budgets_without_any_step": edit(("steps", [])),
    "unreachable_flops_target": edit(("steps.0.flops", "1%")),
    "percent_of_zero": edit(("budgets.params_below", "0%")),
    "percent_over_100": edit(("steps.0.flops", "150%")),
    "negative_learning_rate": edit(("train.lr", -0.1)),
    "warmup_longer_than_training": edit(("train.warmup_epochs", 7.0)),
    "zero_epochs": edit(("train.epochs", 0), ("train.warmup_epochs", 0.0)),
    "seed_as_a_boolean": edit(("seed", True)),
    "seed_as_a_float": edit(("seed", 1.5)),
    "repeated_seeds": edit(("seed", DELETE), ("seeds", [3, 3])),
    "confidence_over_one": edit(("budgets.confidence", 1.5)),
    "unknown_accuracy_rule": edit(("budgets.accuracy_rule", "lenient")),
    "unknown_augmentation": edit(("data.augment", ["rotate"])),
    "unknown_dataset": edit(("data.dataset", "mnist")),
    "unknown_torchvision_model": edit(("model.name", "torchvision:resnet1000"), ("model.options", DELETE)),
    "unknown_dataset_option": edit(("data.options", {"sample": 240})),
    "dataset_option_of_the_wrong_type": edit(("data.options.image_size", "8")),
    "dataset_factory_not_importable": edit(("data.dataset", "nope.missing:data"), ("data.options", DELETE)),
    "report_only_without_the_budget": edit(("budgets.report_only", ["params_below"])),
    "negative_num_workers": edit(("data.num_workers", -1)),
    "roundtrip_negative_tolerance": edit(("budgets.restore_roundtrip", {"atol": -1.0})),
    "baseline_floor_as_a_word": edit(("budgets.baseline_accuracy_at_least", "high")),
    "good": edit(),
    "flops_below_100_percent_report_only": edit(("budgets.flops_below", "100%"),
                                                ("budgets.report_only", ["flops_below"])),
    "cifar10_not_on_disk": edit(("data.dataset", "cifar10"), ("data.options", DELETE), ("data.root", "no-such-dir")),
}


# -- one session with every recipe case ---------------------------------------------------------------

def _file_name(case: Case) -> str:
    return "space in the file name.toml" if case.name == "space_in_the_file_name" else f"{case.name}.toml"


def run_pytest(project: Path, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """pytest in its own process, as a user runs it (no pytester in-process shortcuts)."""
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=project,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(project), **(env or {})})


def junit_outcomes(path: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """file name -> check (or "<collect>") -> (outcome, message text)."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "") + "\n" + (child.text or "")
        if name.endswith(".toml") and not classname:  # a collection error: the node is the file
            out.setdefault(Path(name).name, {})["<collect>"] = (outcome, message)
        else:
            if ".toml." in classname:  # an item of a [budgets.<stage>] table: recipes.x.toml.<stage>
                classname, stage = classname.split(".toml.", 1)
                classname, name = classname + ".toml", f"{stage}::{name}"
            file = classname.rsplit(".", 1)[0].replace("recipes.", "", 1) if classname.endswith(".toml") else classname
            out.setdefault(f"{file.split('.')[-2] if False else file}", {})[name] = (outcome, message)
    return out


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    project = tmp_path_factory.mktemp("hostile")
    (project / "pytest.ini").write_text("[pytest]\noptcheck_ledger = off\n")
    shutil.copy(HERE / "hostile_factories.py", project / "hostile_factories.py")
    recipes = project / "recipes"
    recipes.mkdir()
    for case in CASES:
        data = case.raw if case.raw is not None else text(RECIPES[case.name](BASE)).encode()
        (recipes / _file_name(case)).write_bytes(data)
    proc = run_pytest(project, "--optcheck", "--optcheck-no-cache", "--junitxml=junit.xml", "-rA",
                      "--optcheck-report", "report.json")
    return proc, junit_outcomes(project / "junit.xml"), project


def _node(outcomes: dict, case: Case) -> dict[str, tuple[str, str]]:
    file = _file_name(case)
    for key, checks in outcomes.items():
        if key == file or key.endswith("/" + file) or key.replace("/", ".").endswith(file) or file.startswith(key):
            return checks
    raise AssertionError(f"no result for {file} in {sorted(outcomes)}")


def _short_and_clean(message: str) -> None:
    assert "Traceback" not in message and "site-packages" not in message, message
    assert len(message.strip().splitlines()) <= 40, f"{len(message.splitlines())} lines:\n{message}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(catalogue, case: Case):
    proc, outcomes, _ = catalogue
    checks = _node(outcomes, case)
    expect = case.expect
    if isinstance(expect, (Error, Step)):
        if "<collect>" in checks:  # the schema: one collection error for the file
            assert set(checks) == {"<collect>"}, checks
            outcome, message = checks["<collect>"]
            assert outcome == "error", message
        else:  # the checks before training, when the recipe's first item runs: every item fails, one
            # of them with the whole error, the others in one line that points at it
            assert checks and all(o == "failed" for o, _ in checks.values()), f"expected a failure, got {checks}"
            whole = [m for _, m in checks.values() if "failed earlier in this session" not in m]
            assert len(whole) == 1, checks
            message = whole[0]
            for _, m in checks.values():
                _short_and_clean(m)
        _short_and_clean(message)
        assert _file_name(case) in message  # the file ...
        if isinstance(expect, Error):
            assert f"field '{expect.field}'" in message, message  # ... the field ...
            assert "fix:" in message or "allowed:" in message, message  # ... and what to do
        else:
            assert "cause:" in message and "fix:" in message and "raised at:" in message, message
        for needle in expect.needles:
            assert needle in message, f"{needle!r} not in:\n{message}"
    elif isinstance(expect, Fails):
        outcome, message = checks[expect.check]
        assert outcome == "failed", checks
        _short_and_clean(message)
        for other, (o, m) in checks.items():  # every other check needs that stage too: each fails, in one line
            assert o == "failed", (other, o, m)
            _short_and_clean(m)
            if other != expect.check:
                assert "failed earlier in this session" in m, (other, m)
        for needle in expect.needles:
            assert needle in message, f"{needle!r} not in:\n{message}"
    elif isinstance(expect, Judged):
        assert expect.check in checks, f"the budget vanished: {checks}"
        outcome, message = checks[expect.check]
        assert outcome in ("passed", "failed"), checks
        if outcome == "failed":
            assert "optcheck budget" in message and "drop" in message, message
    elif isinstance(expect, Passes):
        assert checks and all(o == "passed" for o, _ in checks.values()), checks
    elif isinstance(expect, Skipped):
        assert checks and all(o == "skipped" for o, _ in checks.values()), checks
        assert all(expect.needle in m for _, m in checks.values()), checks


def test_the_catalogue_is_large_and_one_bad_recipe_stops_no_other(catalogue):
    proc, outcomes, project = catalogue
    assert len(CASES) >= 60 and set(RECIPES) == {c.name for c in CASES if c.raw is None}
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # failures, not an abort
    assert "Interrupted" not in proc.stdout, proc.stdout[-3000:]
    good = _node(outcomes, next(c for c in CASES if c.name == "good"))
    assert set(good) == {"baseline_accuracy_at_least", "flops_below", "accuracy_drop_under", "restore_roundtrip"}
    # a report-only budget that cannot fail is measured and reported, never judged
    report_only = _node(outcomes, next(c for c in CASES if c.name == "flops_below_100_percent_report_only"))
    assert report_only["flops_below"][0] == "passed"


# -- command lines and faults: a session each --------------------------------------------------------

@pytest.fixture
def good_project(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\noptcheck_ledger = off\n")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "good.toml").write_text(text(BASE))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_other.py").write_text("def test_ok():\n    pass\n")
    return tmp_path


COMMAND_LINES = [
    (["--optcheck-recipes", "recipse", "tests"], ["--optcheck-recipes:", "recipse does not exist", "did you mean",
                                                  "recipes?"]),
    (["--optcheck-recipes", "/nonexistent/recipes"], ["/nonexistent/recipes does not exist"]),
    (["--optcheck-seed", "-1"], ["--optcheck-seed = -1", "[0, 4294967294]"]),
    (["-o", "optcheck_seed=4294967295"], ["optcheck_seed in the ini file = 4294967295"]),
    (["-o", "optcheck_recipes=recipse"], ["optcheck_recipes in the ini file:", "did you mean"]),
]
FAULTS = ("a full disk", "a leftover-folder check")  # one test each, below
PROMISES = 2  # a step's own promise, a meaningless evaluation: one test each, below


@pytest.mark.parametrize("args, needles", COMMAND_LINES,
                         ids=["recipes_typo_beside_tests", "recipes_nonexistent", "seed_option_negative",
                              "ini_seed_too_large", "ini_recipes_typo"])
def test_a_bad_command_line_is_a_usage_error_naming_the_value(good_project, args, needles):
    proc = run_pytest(good_project, "--optcheck", *args, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-3000:]  # pytest's usage error: never "exit 0, no recipe ran"
    for needle in needles:
        assert needle in out, out[-3000:]
    assert "Traceback" not in out


def test_a_full_disk_keeps_the_built_models_and_says_what_was_not_cached(good_project):
    # every cache write fails with ENOSPC, as on a full disk; the models were built, so they are used
    (good_project / "conftest.py").write_text(
        "import errno, os\n"
        "import optcheck.pipeline.cache\n"
        "def _full(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "optcheck.pipeline.cache.ArtifactCache.store = _full\n")
    proc = run_pytest(good_project, "--optcheck", "-rA", "recipes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "4 passed" in out
    assert "the baseline was built but could not be cached (No space left on device" in out
    assert "this session uses it from memory, the next one rebuilds it" in out
    # and once there is space again, the next session caches as usual
    (good_project / "conftest.py").unlink()
    again = run_pytest(good_project, "--optcheck", "recipes")
    assert again.returncode == 0 and "could not be cached" not in again.stdout, again.stdout[-3000:]
    assert list((good_project / ".optcheck" / "cache" / "entries").iterdir())


def test_a_session_leaves_no_working_folder_outside_pytests_temporary_directory(good_project, tmp_path_factory):
    """Nothing is left behind: not in $TMPDIR, not in the project (the working directory), not in the
    home folder; the checkpoints live under pytest's basetemp."""
    tmpdir = tmp_path_factory.mktemp("isolated-tmp")
    home = tmp_path_factory.mktemp("isolated-home")
    before = sorted(p.name for p in good_project.iterdir())
    proc = run_pytest(good_project, "--optcheck", "--optcheck-no-cache", "recipes",
                      env={"TMPDIR": str(tmpdir), "HOME": str(home)})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("optcheck-")] == []
    # pytest-benchmark makes .benchmarks in every session's rootdir, with or without optcheck
    new = sorted(set(p.name for p in good_project.iterdir()) - set(before) - {".pytest_cache", "__pycache__",
                                                                                ".benchmarks"})
    assert new == [], new  # --optcheck-no-cache: not even .optcheck
    assert [p for p in home.rglob("*") if "optcheck" in p.name] == []
    working = list(tmpdir.glob("pytest-of-*/pytest-*/optcheck-good*"))
    assert working, sorted(str(p) for p in tmpdir.rglob("*"))[:20]  # the checkpoints, under pytest's basetemp
    # without pytest's tmp_path plugin the folders go at the end of the session
    proc = run_pytest(good_project, "--optcheck", "--optcheck-no-cache", "-p", "no:tmpdir", "recipes",
                      env={"TMPDIR": str(tmpdir)})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("optcheck-")] == []


# -- a step checks its own promise; an evaluation refuses a meaningless number --------------------------

def test_a_fastnas_subnet_over_its_own_constraint_is_a_step_error():
    from types import SimpleNamespace

    from optcheck.build.artifacts import Metrics
    from optcheck.core.errors import StepError
    from optcheck.steps.api import StepRun
    from optcheck.steps.fastnas import FastNASStep, check_constraint
    from optcheck.steps.registry import KINDS, Stage

    step = FastNASStep(kind="fastnas", flops="60%")
    ctx = SimpleNamespace(recipe=SimpleNamespace(path="r.toml", steps=[step]))
    run = StepRun(ctx, Stage("pruned", KINDS["fastnas"], 0, step, "baseline"), artifacts=lambda _s: None,
                  root="baseline")
    full = Metrics(0.9, 100, 0.9, 50, flops=1_000_000, params=5_000, ckpt_bytes=None, seconds=0.0)
    at_target = Metrics(0.9, 100, 0.9, 50, flops=600_000, params=2_000, ckpt_bytes=None, seconds=0.0)
    check_constraint(run, at_target, full)  # exact: the target itself meets it
    over = Metrics(0.9, 100, 0.9, 50, flops=600_001, params=2_000, ckpt_bytes=None, seconds=0.0)
    with pytest.raises(StepError) as info:  # one FLOP over fails: optcheck's count is Model Optimizer's
        check_constraint(run, over, full, {"is_satisfied": False, "num_satisfied": 0, "count": 600_001})
    message = str(info.value)
    assert "r.toml: steps[0] (kind = 'fastnas') failed" in message
    assert "600k FLOPs (60.0% of the baseline), over the step's own constraint flops = '60%' = 600k FLOPs" in message
    assert "Model Optimizer's own state agrees (best is_satisfied = False, 0 subnets satisfied" in message


def test_evaluation_on_an_empty_split_or_foreign_labels_is_an_error():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from optcheck.core.errors import EvaluationError
    from optcheck.build.training import correct_mask, evaluate, mean_log_prob

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    empty = DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), batch_size=8)
    foreign = DataLoader(TensorDataset(torch.zeros(6, 4), torch.tensor([0, 1, 2, 3, 4, 1])), batch_size=8)
    for measure in (evaluate, correct_mask, mean_log_prob):
        with pytest.raises(EvaluationError, match="empty split"):
            measure(model, empty)
        with pytest.raises(EvaluationError, match=r"labels \[3, 4\] lie outside the model's 3 classes"):
            measure(model, foreign)


def test_the_readme_states_the_catalogues_size():
    readme = (HERE.parent / "README.md").read_text()
    assert f"**{len(CASES)} hostile recipes run in one session**" in readme
    errors = " ".join((HERE.parent / "docs" / "errors.md").read_text().split())
    total = len(CASES) + len(COMMAND_LINES) + len(FAULTS) + PROMISES
    assert (f"**{len(CASES)} hostile recipes run in one session** (a good recipe among them must still pass), "
            f"**{len(COMMAND_LINES)} command lines**, {', '.join(FAULTS)} and two step-promise checks: {total} cases"
            ) in errors

"""Reading a recipe file: TOML, then the schema (``recipes.schema``), with every pydantic error turned
into a ``Problem`` that names the field, what is allowed and the fix. No torch here."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from optcheck.steps import registry as step_registry
from optcheck.core.errors import Problem, RecipeError
from optcheck.steps.fastnas import FastNASStep  # noqa: F401  (re-exported: defined here before the registry)
from optcheck.steps.finetune import FinetuneStep  # noqa: F401
from optcheck.recipes.budget_schema import Budgets, StageBudgets
from optcheck.recipes.schema import Recipe
from optcheck.recipes.fields import SEED_MAX
from optcheck.recipes.problems import dedupe, missing, split_message, unknown_key


_FIXES = {
    "data.dataset": (
        "digits | cifar10 | synthetic | 'package.module:function'",
        "use one of the built-in names, or point at a factory function as 'package.module:function'",
    ),
    "model.name": (
        "resnet20 | small_cnn | 'torchvision:NAME' | 'package.module:function'",
        "use a built-in name, a torchvision classification model as 'torchvision:resnet18', "
        "or a factory as 'package.module:function'",
    ),
}


_LIMIT_HELP = ("a positive number, or 'N%' of the baseline with 0 < N <= 100", "")
_FRACTION_HELP = ("a fraction in [0, 1): 0.02 means 2 percentage points; 0 allows no drop at all", "")
_SEED_HELP = (f"an integer in [0, {SEED_MAX}] (scikit-learn's random_state range; the val split uses seed + 1)", "")
_FIXES_BY_KEY = {
    "seed": _SEED_HELP,
    "seeds": _SEED_HELP,
    "name": ("letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100", ""),
    "batch_size": ("an integer >= 2 (BatchNorm in training mode needs two samples per batch)", ""),
    "flops": _LIMIT_HELP,
    "params": _LIMIT_HELP,
    "flops_below": _LIMIT_HELP,
    "params_below": _LIMIT_HELP,
    "accuracy_drop_under": _FRACTION_HELP,
    "baseline_accuracy_at_least": ("a fraction in (0, 1], or 'auto'", ""),
    "pre_finetune_drop_under": _FRACTION_HELP,
}


_UNION_MEMBERS = {"bool", "float", "int", "str", "RoundtripBudget", "list[int]", "none"}


def _field_name(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif p == "stages" and parts and parts[-1] == "budgets":
            continue  # [budgets.<stage>] tables live in Budgets.stages
        elif p in step_registry.KINDS and parts and parts[-1].startswith("steps["):
            continue  # pydantic adds the union tag to the path
        elif p in _UNION_MEMBERS or str(p).startswith(("literal[", "function-")):
            continue  # and the member of a union (`restore_roundtrip.bool`) that did not match
        else:
            parts.append(str(p))
    return ".".join(parts) or "<recipe>"


def _schema_for(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for listing allowed keys)."""
    model: type[BaseModel] | None = Recipe
    stage_name = False
    for p in loc[:-1]:
        if model is None:
            return None
        if stage_name:  # the <stage> of budgets.stages.<stage>
            stage_name, model = False, StageBudgets
            continue
        if model is Budgets and p == "stages":
            stage_name = True
            continue
        if isinstance(p, int):
            continue
        if p in step_registry.KINDS and step_registry.KINDS[p].schema is not None:
            model = step_registry.KINDS[p].schema
            continue
        field = model.model_fields.get(str(p))
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if str(p) == "steps":
            model = None  # resolved by the tag that follows
    return model


def _problem(err: dict) -> Problem:
    loc = tuple(err["loc"])
    name = _field_name(loc)
    etype = err["type"]
    given = err.get("input")
    if etype == "extra_forbidden":
        return unknown_key(name, str(loc[-1]), _schema_for(loc))
    if etype == "missing":
        return missing(name, str(loc[-1]))
    if etype == "union_tag_invalid" or etype == "union_tag_not_found":
        kind = given.get("kind") if isinstance(given, dict) else given
        allowed = "kind = " + " | ".join(map(repr, step_registry.listable()))
        if isinstance(kind, str) and kind in step_registry.UNAVAILABLE:
            return Problem(f"{name}.kind", f"step kind {kind!r} cannot run here", allowed,
                           step_registry.UNAVAILABLE[kind])
        near = difflib.get_close_matches(str(kind), step_registry.listable(), n=1) if kind else []
        return Problem(
            name, f"unknown or missing step kind (got {kind!r})", allowed,
            f"did you mean {near[0]!r}?" if near else "set kind to one of the allowed step kinds",
        )
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith("@"):  # a model-level check names its field: "@data.test_limit: ..."
        field, msg, fix = split_message(name, msg)
        return Problem(field, msg, fix=fix)
    key = next((str(p) for p in reversed(loc) if not isinstance(p, int) and _field_name((p,)) not in ("", "<recipe>")),
               "") if loc else ""
    allowed, fix = _FIXES.get(name, _FIXES_BY_KEY.get(key, ("", "")))
    if etype == "less_than" and key in ("accuracy_drop_under", "pre_finetune_drop_under"):
        msg = f"{key} = {given!r} can never fail: no drop exceeds 100 pp"
        fix = f"write the drop you can accept as a fraction, e.g. {key} = 0.01 for 1 pp"
    if isinstance(given, str) and etype in ("int_type", "float_type", "bool_type", "model_type", "dict_type"):
        bare = given.strip().lower()
        plain = bare if bare in ("true", "false") else given.strip()
        try:
            float(plain)
            looks = True
        except ValueError:
            looks = bare in ("true", "false")
        if looks:
            fix = (f"write it without quotes: {loc_key(name)} = {plain} (TOML has real numbers and booleans; "
                   f"optcheck never converts a string)")
        else:
            msg = f"{msg} (got the string {given!r}; TOML's booleans are true and false, never words like 'off')" \
                if etype == "bool_type" else msg
    if not fix:
        fix = f"change '{name}' (got {given!r})" if name != "<recipe>" else "see the message above"
    return Problem(name, msg, allowed, fix)


def loc_key(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def parse_recipe(raw: dict, path: Path) -> Recipe:
    """Validate a recipe's data. Raises ``RecipeError`` listing every problem."""
    data = dict(raw)
    data.setdefault("name", path.stem)
    try:
        return Recipe.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise RecipeError(str(path), dedupe([_problem(e) for e in exc.errors()])) from None


def read_recipe_file(path: str | Path) -> dict:
    """A recipe file's TOML data. Raises ``RecipeError`` naming the file for unreadable text."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [Problem("<file>", f"not UTF-8 text (byte {exc.start}: {exc.reason})",
                                              fix="save the recipe as UTF-8; TOML files are UTF-8")]) from None
    except OSError as exc:
        raise RecipeError(str(path), [Problem("<file>", f"cannot read: {exc.strerror}",
                                              fix="check the path given to optcheck_recipe / --optcheck-recipes")]) from None
    if text.startswith("\ufeff"):
        raise RecipeError(str(path), [Problem(
            "<file>", "the file starts with a UTF-8 byte-order mark (BOM), which TOML does not allow",
            fix="save the file as UTF-8 without BOM (e.g. in VS Code: 'Save with Encoding' -> 'UTF-8'; or "
                "run: sed -i '1s/^\\xEF\\xBB\\xBF//' " + path.name + ")")])
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [Problem("<syntax>", f"not valid TOML: {exc}",
                                              fix="fix the TOML syntax at the line and column given")]) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file. Raises ``RecipeError`` naming the file and the fields."""
    raw = read_recipe_file(path)
    from optcheck.recipes.zoo import is_zoo

    if is_zoo(raw):
        raise RecipeError(str(path), [Problem("zoo", "this is a zoo recipe (a [zoo] table of models), not a "
                                              "pipeline recipe", fix="run it with pytest --optcheck; the recipe "
                                              "fixtures and --optcheck-calibrate take pipeline recipes")])
    return parse_recipe(raw, Path(path))


def load_any(path: str | Path):
    """A pipeline ``Recipe``, or a ``ZooRecipe`` for a file with a ``[zoo]`` table."""
    raw = read_recipe_file(path)
    from optcheck.recipes.zoo import is_zoo, parse_zoo

    return parse_zoo(raw, Path(path)) if is_zoo(raw) else parse_recipe(raw, Path(path))

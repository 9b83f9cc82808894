"""The zoo recipe: a TOML file with a ``[zoo]`` table instead of data, model and steps. It lists
models and the phases each one runs (``zoo.py``); each (model, phase) becomes one test item,
``<file>::model[<label>]::<phase>``. No torch here: a zoo recipe is validated at collection.

    name = "torchvision_zoo"
    seed = 0

    [zoo]
    models = ["torchvision:resnet18",                       # a torchvision name,
              "mypkg.models:make_net",                      # a module:function factory,
              { name = "torchvision:shufflenet_v2_x0_5",    # or a table overriding the defaults below
                channel_divisor = 16, feature_divisor = 16 }]
    # models = ["torchvision:*"] is every classification model torchvision registers
    phases = ["build", "convert", "sample", "export", "save", "restore", "compare", "prune", "recipe_path"]
    input_size = 32        # defaults of every model
    num_classes = 10
    channel_divisor = 32
    feature_divisor = 32
    restores = 3
    batch_size = 2

A model expected to fail is not declared here but in the regression ledger, citing its ticket
(``ledger.py``): ``[<name>.cpu.<label>] known_failure = "#12: why", phase = "restore", match = "regex"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from optcheck.core.errors import Problem, RecipeError
from optcheck.core.schema import Strict
from optcheck.recipes.fields import SEED_MAX, check_recipe_name
from optcheck.recipes.problems import dedupe, missing, split_message, unknown_key

ALL_TORCHVISION = "torchvision:*"
_MODEL = re.compile(r"^(torchvision:[A-Za-z_]\w*|[A-Za-z_][\w.]*:[A-Za-z_]\w*|resnet20|small_cnn)$")


def _model_name(v: str) -> str:
    if v == ALL_TORCHVISION or _MODEL.match(v):
        return v
    raise ValueError(f"unknown model {v!r}: use torchvision:NAME, module.path:function, resnet20, small_cnn, or "
                     f"{ALL_TORCHVISION!r} for every torchvision classification model")


class ZooModel(Strict):
    """One entry of ``zoo.models`` written as a table: the fields it leaves out come from ``[zoo]``."""

    name: str
    input_size: int | None = Field(None, ge=1)
    num_classes: int | None = Field(None, ge=2)
    channel_divisor: int | None = Field(None, ge=1)
    feature_divisor: int | None = Field(None, ge=1)
    options: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v == ALL_TORCHVISION:
            raise ValueError(f"{ALL_TORCHVISION!r} stands for many models: write it as a plain string in models")
        return _model_name(v)


class ZooConfig(Strict):
    models: list[Union[str, ZooModel]] = Field(min_length=1)
    phases: list[str] = ["build", "convert", "sample", "export", "save", "restore", "compare"]
    input_size: int = Field(32, ge=1)
    num_classes: int = Field(10, ge=2)
    channel_divisor: int = Field(32, ge=1)
    feature_divisor: int = Field(32, ge=1)
    restores: int = Field(3, ge=1, le=20)
    batch_size: int = Field(2, ge=2, le=64)

    @field_validator("models")
    @classmethod
    def _names(cls, v: list) -> list:
        for item in v:
            if isinstance(item, str):
                _model_name(item)
        return v

    @field_validator("phases")
    @classmethod
    def _phases(cls, v: list[str]) -> list[str]:
        from optcheck.recipes.zoo_phases import check_phases

        try:
            check_phases(v)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return v


class ZooRecipe(Strict):
    name: str
    description: str = ""
    seed: int = Field(0, ge=0, le=SEED_MAX)
    zoo: ZooConfig
    path: Path | None = Field(None, exclude=True)

    _name = field_validator("name")(classmethod(lambda cls, v: check_recipe_name(v)))

    @model_validator(mode="after")
    def _unique(self) -> "ZooRecipe":
        labels = [label_of(m if isinstance(m, str) else m.name) for m in self.zoo.models]
        for label in dict.fromkeys(labels):
            if labels.count(label) > 1:
                raise ValueError(f"@zoo.models: {label!r} is listed {labels.count(label)} times (each model is "
                                 "one row of the matrix) || fix: list it once")
        return self

    def cases(self) -> list:
        """The ``ModelCase`` of each model, in order; ``torchvision:*`` expanded (imports torchvision)."""
        from optcheck.recipes.zoo import ModelCase, torchvision_classification_models

        z = self.zoo
        explicit = {m if isinstance(m, str) else m.name for m in z.models} - {ALL_TORCHVISION}
        out, seen = [], set()
        for m in z.models:
            entries = ([ZooModel(name=n) for n in torchvision_classification_models() if n not in explicit]
                       if m == ALL_TORCHVISION else [ZooModel(name=m)] if isinstance(m, str) else [m])
            for e in entries:  # a model named on its own is not repeated by torchvision:* (its entry wins)
                if e.name in seen:
                    continue
                seen.add(e.name)
                out.append(ModelCase(e.name, e.input_size or z.input_size, e.num_classes or z.num_classes,
                                     e.channel_divisor or z.channel_divisor, e.feature_divisor or z.feature_divisor,
                                     e.options))
        return out

    @property
    def phases(self) -> tuple[str, ...]:
        from optcheck.recipes.zoo_phases import check_phases

        return check_phases(self.zoo.phases)


def label_of(name: str) -> str:
    """A model's row name: ``resnet18`` for ``torchvision:resnet18``, the name itself otherwise."""
    return name.split(":", 1)[1] if name.startswith("torchvision:") else name


def is_zoo(raw: dict) -> bool:
    return isinstance(raw, dict) and "zoo" in raw


def labels(raw: dict) -> set[str] | None:
    """The model labels a zoo recipe's raw data lists (None when it cannot tell: ``torchvision:*``, or
    malformed): the ledger checks its known-failure entries against them."""
    models = (raw.get("zoo") or {}).get("models") if isinstance(raw.get("zoo"), dict) else None
    if not isinstance(models, list):
        return None
    out = set()
    for m in models:
        name = m if isinstance(m, str) else m.get("name") if isinstance(m, dict) else None
        if not isinstance(name, str) or name == ALL_TORCHVISION:
            return None
        out.add(label_of(name))
    return out


_FIELDS = {"<recipe>": ZooRecipe, "zoo": ZooConfig, "zoo.models": ZooModel}


def parse_zoo(raw: dict, path: Path) -> ZooRecipe:
    """Validate a zoo recipe's data. Raises ``RecipeError`` listing every problem by field."""
    data = {"name": path.stem, **raw}
    try:
        return ZooRecipe.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise RecipeError(str(path), dedupe([_problem(err) for err in exc.errors()])) from None


def _problem(err: dict) -> Problem:
    loc = [p for p in err["loc"] if not isinstance(p, int) and p not in ("str", "ZooModel")]
    name = ".".join(map(str, loc)) or "<recipe>"
    if err["type"] == "extra_forbidden":
        return unknown_key(name, str(loc[-1]), _FIELDS.get(".".join(map(str, loc[:-1])) or "<recipe>", ZooRecipe))
    if err["type"] == "missing":
        return missing(name, str(loc[-1]), "the zoo recipe")
    name, msg, fix = split_message(name, err["msg"])
    given = err.get("input")
    if not fix:
        fix = f"change '{name}' (got {given!r})" if not isinstance(given, dict) else "see the message above"
    return Problem(name, msg, fix=fix)


# -- cases -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelCase:
    """One model of the zoo: ``name`` is any optcheck model name (``torchvision:NAME``,
    ``package.module:function``, ``resnet20``, ``small_cnn``); ``options`` its keyword arguments
    (a mapping or pairs; stored as sorted pairs so a case stays hashable)."""

    name: str
    input_size: int = 32
    num_classes: int = 10
    channel_divisor: int = 32
    feature_divisor: int = 32
    options: Any = ()

    def __post_init__(self) -> None:
        opts = self.options
        pairs = tuple(sorted((opts.items() if isinstance(opts, Mapping) else opts)))
        object.__setattr__(self, "options", pairs)
        if self.input_size < 1 or self.num_classes < 2 or self.channel_divisor < 1 or self.feature_divisor < 1:
            raise ValueError(f"{self.name}: input_size >= 1, num_classes >= 2 and divisors >= 1 "
                             f"(got {self.input_size}, {self.num_classes}, {self.channel_divisor}, "
                             f"{self.feature_divisor})")

    @property
    def label(self) -> str:
        """``resnet18`` for ``torchvision:resnet18``; the name itself otherwise."""
        return self.name.split(":", 1)[1] if self.name.startswith("torchvision:") else self.name

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-.") or "model"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_size": self.input_size, "num_classes": self.num_classes,
                "channel_divisor": self.channel_divisor, "feature_divisor": self.feature_divisor,
                "options": dict(self.options)}


def torchvision_classification_models() -> list[str]:
    """Every classification model torchvision registers (``torchvision.models.list_models``), as
    ``torchvision:NAME``: what a zoo recipe's ``"torchvision:*"`` stands for."""
    import torchvision.models

    return [f"torchvision:{m}" for m in torchvision.models.list_models(module=torchvision.models)]

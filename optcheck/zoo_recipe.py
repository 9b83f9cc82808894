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

import difflib
import re
from pathlib import Path
from typing import Any, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from .errors import Problem, RecipeError
from .schema import Strict

ALL_TORCHVISION = "torchvision:*"
_MODEL = re.compile(r"^(torchvision:[A-Za-z_]\w*|[A-Za-z_][\w.]*:[A-Za-z_]\w*|resnet20|small_cnn)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
        from .zoo import check_phases

        try:
            check_phases(v)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return v


class ZooRecipe(Strict):
    name: str
    description: str = ""
    seed: int = Field(0, ge=0, le=2**32 - 2)
    zoo: ZooConfig
    path: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _file_safe(cls, v: str) -> str:
        if _NAME.match(v) and len(v) <= 100:
            return v
        raise ValueError(f"name {v!r} is not file-safe (it names folders, cache entries and ledger tables)")

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
        from .zoo import ModelCase, torchvision_classification_models

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
        from .zoo import check_phases

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
        problems, seen = [], set()
        for err in exc.errors():
            p = _problem(err)
            if p.field not in seen:
                seen.add(p.field)
                problems.append(p)
        raise RecipeError(str(path), problems) from None


def _problem(err: dict) -> Problem:
    loc = [p for p in err["loc"] if not isinstance(p, int) and p not in ("str", "ZooModel")]
    name = ".".join(map(str, loc)) or "<recipe>"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        owner = _FIELDS.get(".".join(map(str, loc[:-1])) or "<recipe>", ZooRecipe)
        allowed = sorted(k for k in owner.model_fields if k != "path")
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        return Problem(name, "unknown key", ", ".join(allowed), f"did you mean '{near[0]}'?" if near else "remove it")
    if err["type"] == "missing":
        return Problem(name, "missing required field", fix=f"add '{loc[-1]}' to the zoo recipe")
    if msg.startswith("@"):
        name, _, msg = msg[1:].partition(": ")
    msg, _, fix = msg.partition(" || fix: ")
    given = err.get("input")
    if not fix:
        fix = f"change '{name}' (got {given!r})" if not isinstance(given, dict) else "see the message above"
    return Problem(name, msg, fix=fix)

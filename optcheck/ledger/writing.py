"""Writing the regression ledger: once per session, in one process (the xdist controller), after every
check has run. Values change in place (comments and order are kept, via tomlkit) and new entries are
appended in a fixed order, so a review diff shows only what changed. The file is replaced atomically,
and never with text that does not read back.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from pathlib import Path
from typing import Any

from optcheck.ledger.entries import FIELDS, METRICS

HEADER = """\
# optcheck regression ledger: the accepted metrics of each recipe's stages, per platform. It
# detects drift; the budgets in the recipes are the contracts. Each metric passes when
# |measured - value| <= tolerance (test_acc: absolute; flops, params, ckpt_bytes: relative to the
# value), in both directions. Tolerances come from `pytest --optcheck --optcheck-calibrate N`,
# which rebuilds each recipe under N seeds / CPU kernel paths / thread counts and writes the
# observed range and the tolerance derived from it. Accept new values with
# `pytest --optcheck --optcheck-update` (failed or missing entries only) or `--optcheck-update-all`,
# then review the diff and commit it. To record a known failure, add
# known_failure = "<TICKET-1>: <why>" to its entry: the check then xfails with that reason.
"""


def write_updates(path: Path, updates: dict[tuple[str, str, str], dict[str, Any]],
                  stage_order: dict[str, list[str]] | None = None) -> None:
    """Apply ``{(recipe, platform, stage): entry}`` to the file at ``path`` and replace it atomically.

    Existing tables keep their place and comments (values change in place); new tables are appended
    in sorted recipe/platform order and pipeline stage order (``stage_order``: recipe -> its stages).
    """
    import tomlkit

    if not updates:
        return
    doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.parse(HEADER)
    def place(item) -> tuple:
        recipe, platform, stage = item[0]
        order = (stage_order or {}).get(recipe, [])
        return (recipe, platform, order.index(stage) if stage in order else len(order), stage)

    for (recipe, platform, stage), entry in sorted(updates.items(), key=place):
        if recipe not in doc:
            doc.append(recipe, tomlkit.table(is_super_table=True))
        if platform not in doc[recipe]:
            doc[recipe].append(platform, tomlkit.table(is_super_table=True))
        tables = doc[recipe][platform]
        # optcheck's metrics, then the team's (fields the entry has besides FIELDS), then the rest
        keys = [*METRICS, *(k for k in entry if k not in FIELDS), *FIELDS[len(METRICS):]]
        if stage in tables:
            table = tables[stage]
            team_gone = [k for k in table if k not in FIELDS and k not in entry]  # a metric the recipe dropped
            for key in keys + team_gone:
                if key in entry and (key not in table or _plain(table[key]) != entry[key]):
                    table[key] = _toml_value(entry[key])
                elif key not in entry and key in table and key != "known_failure":
                    del table[key]  # e.g. a legacy accuracy_tolerance replaced by the tolerance table
        else:
            table = tomlkit.table()
            for key in keys:
                if key in entry:
                    table.add(key, _toml_value(entry[key]))
            tables.append(stage, table)
    text = tomlkit.dumps(doc)
    tomllib.loads(text)  # never write a file we could not read back
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _toml_value(value: Any):
    """Dicts become inline tables (one line per field in the file), everything else as it is."""
    import tomlkit

    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for k, v in value.items():
            table[k] = list(v) if isinstance(v, tuple) else v
        return table
    return value


def _plain(value: Any) -> Any:
    unwrap = getattr(value, "unwrap", None)
    return unwrap() if unwrap else value

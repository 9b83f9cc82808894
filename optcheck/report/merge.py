"""Merge the JSON reports of CI shards (``--optcheck-shard K/N --optcheck-report shard-K.json``) into
one report, one zoo matrix and one step summary:

    python -m optcheck.merge merged.json shard-1.json shard-2.json [--summary summary.md]

Every shard of the split must be there (each report says which ``K/N`` it ran), and no check may appear
in two shards with different outcomes. Exit status 1 when a merged check failed (a failure, an error,
a known failure that passed), 2 when the reports do not fit together, else 0; the matrix is printed.
Plain JSON in, plain JSON out: no torch, no pytest session.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

FAILING = ("failed", "error", "xpassed")


class MergeError(Exception):
    pass


def merge_reports(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The merged report of ``[(name, report), ...]``. Raises ``MergeError``."""
    from optcheck.report.render import add_zoo_tables

    if not docs:
        raise MergeError("no reports given")
    shards = []
    for name, doc in docs:
        if not isinstance(doc, dict) or "meta" not in doc or "recipes" not in doc:
            raise MergeError(f"{name}: not an optcheck report (no meta / recipes): write it with --optcheck-report")
        shards.append((name, doc["meta"].get("shard")))
    declared = {s for _, s in shards if s}
    if declared:
        totals = {int(s.split("/")[1]) for s in declared}
        if len(totals) > 1 or any(s is None for _, s in shards):
            raise MergeError("the reports come from different splits: " + ", ".join(f"{n} ({s or 'no shard'})"
                                                                                    for n, s in shards))
        total = totals.pop()
        seen = [s for _, s in shards]
        missing = [f"{k}/{total}" for k in range(1, total + 1) if f"{k}/{total}" not in seen]
        twice = sorted({s for s in seen if seen.count(s) > 1})
        if missing or twice:
            raise MergeError(("missing shard " + ", ".join(missing) if missing else "")
                             + ("; " if missing and twice else "") + ("shard given twice: " + ", ".join(twice) if twice else "")
                             + " (one report per shard K/N of the split, each written with --optcheck-report)")
    recipes: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    for name, doc in docs:
        for r in doc["recipes"]:
            mine = recipes.setdefault(r["path"], {**r, "stages": dict(r.get("stages", {})), "verdicts": {}})
            mine.pop("zoo", None)
            for stage, info in r.get("stages", {}).items():
                mine["stages"].setdefault(stage, info)
            for check, v in r.get("verdicts", {}).items():
                key = (r["path"], check)
                old = mine["verdicts"].get(check)
                if old is not None and old["outcome"] != v["outcome"]:
                    raise MergeError(f"{r['path']}::{check} is {old['outcome']} in {origin[key]} and {v['outcome']} in "
                                     f"{name}: a check must run in one shard only (same split, same commit?)")
                mine["verdicts"][check] = v
                origin[key] = name
    merged = [recipes[k] for k in sorted(recipes)]
    add_zoo_tables(merged)
    meta = dict(docs[0][1]["meta"])
    meta["shard"] = None
    meta["shards"] = [{"report": name, "shard": doc["meta"].get("shard"), "git": doc["meta"].get("git"),
                       "machine": doc["meta"].get("machine"), "created": doc["meta"].get("created")}
                      for name, doc in docs]
    meta["workers"] = sum(int(doc["meta"].get("workers") or 1) for _, doc in docs)
    commits = {(doc["meta"].get("git") or {}).get("commit") for _, doc in docs}
    if len(commits) > 1:
        raise MergeError(f"the reports come from different commits ({', '.join(sorted(map(str, commits)))})")
    return {"meta": meta, "recipes": merged}


def failures(doc: dict[str, Any]) -> list[str]:
    return [f"{r['path']}::{check} {v['outcome']}" for r in doc["recipes"]
            for check, v in r.get("verdicts", {}).items() if v["outcome"] in FAILING]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optcheck.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the merged JSON report to write")
    parser.add_argument("reports", nargs="+", help="the shards' --optcheck-report files")
    parser.add_argument("--summary", default=None, help="append the Markdown summary here (default: "
                        "$GITHUB_STEP_SUMMARY when set)")
    args = parser.parse_args(argv)
    from optcheck.report.render import markdown
    from optcheck.report.zoo_matrix import terminal_lines

    docs = []
    for path in args.reports:
        try:
            docs.append((path, json.loads(Path(path).read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"optcheck.merge: {path}: cannot read a JSON report ({exc})", file=sys.stderr)
            return 2
    try:
        doc = merge_reports(docs)
    except MergeError as exc:
        print(f"optcheck.merge: {exc}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    summary = args.summary or os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown(doc) + "\n")
    for r in doc["recipes"]:
        if r.get("zoo"):
            print("\n".join(terminal_lines(r["zoo"], r["path"])) + "\n")
    bad = failures(doc)
    checks = sum(len(r.get("verdicts", {})) for r in doc["recipes"])
    print(f"optcheck.merge: {len(docs)} reports, {len(doc['recipes'])} recipes, {checks} checks, {len(bad)} failing"
          + "".join(f"\n  {b}" for b in bad) + f"\nwrote {args.out}" + (f" and {summary}" if summary else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

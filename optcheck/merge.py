"""``python -m optcheck.merge``: the CI shards' JSON reports joined into one (``optcheck.report.merge``).

A public entry point kept at this path; the code lives in the report layer. Plain JSON: no torch,
no install (``PYTHONPATH=. python3 -m optcheck.merge``).
"""

from optcheck.report.merge import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())

"""``optcheck.calibrate``: the ledger's calibration (``optcheck.ledger.calibrate``), at its public path.

``python -m optcheck.calibrate RECIPE --seed N --threads N`` builds one variant and prints its metrics
as JSON (what ``--optcheck-calibrate`` runs in each subprocess).
"""

from optcheck.ledger.calibrate import (Calibration, Variant, calibrate_recipes, calibration_entries, derive,
                                       run_variants, variants)

__all__ = ["Calibration", "Variant", "calibrate_recipes", "calibration_entries", "derive", "run_variants", "variants"]

if __name__ == "__main__":
    from optcheck.ledger.calibrate import _worker

    _worker()

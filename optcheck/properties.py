"""Properties every subnet of a FastNAS search space must have (public path of
``optcheck.checks.properties`` and ``optcheck.checks.search_space``): use them in your own
Hypothesis tests with ``optcheck.strategies``.

    from optcheck.properties import fastnas_search_space, restore_exact
"""

from optcheck.checks.properties import (PropertyFailure, PropertyRun, export_matches_converted, flops_match,
                                        flops_monotone, restore_exact, run_property)
from optcheck.checks.search_space import (active_subnet, describe_subnet, export_subnet, fastnas_search_space,
                                          full_config, search_space)

__all__ = ["PropertyFailure", "PropertyRun", "active_subnet", "describe_subnet", "export_matches_converted",
           "export_subnet", "fastnas_search_space", "flops_match", "flops_monotone", "full_config",
           "restore_exact", "run_property", "search_space"]

"""Hypothesis strategies for compression tests (public path of ``optcheck.checks.strategies``): subnet
configs of a FastNAS search space, finite input batches, small random CNNs FastNAS can convert.

    from optcheck.strategies import subnet_configs
"""

from optcheck.checks.strategies import (CNNSpec, SpecCNN, build_cnn, cnn_specs, input_batches, small_cnns,
                                        subnet_configs)

__all__ = ["CNNSpec", "SpecCNN", "build_cnn", "cnn_specs", "input_batches", "small_cnns", "subnet_configs"]

"""What the zoo's phases share: their tolerances and targets, the hint of each phase's failure,
the failures a phase raises, and the quieting of Model Optimizer's own output."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator



OUTPUT_ATOL = 1e-6  # compare / convert / export: eval outputs equal up to this (0.0 measured everywhere)
PRUNE_FLOPS = "70%"  # the prune phase's and the recipe path's FastNAS target
SAMPLE_TRIES = 20
# Restores per model, each into another fresh instance. Model Optimizer 0.47 pairs a concatenation's
# width with its inputs' widths in the order of ``list(set(inputs))`` (modelopt/torch/nas/hparams/
# concat.py, ``ConcatTracedHp._get_sum_to_combo``): an order of id()s, so a fresh model may split a
# saved width the other way round ("Inconsistent keys in config"). Measured 18-20 of 20 restores fail
# on squeezenet1_0 / 1_1; three make a restore that passes by chance (an xpass that is not a fix) ~1e-3.
RESTORE_TRIES = 3

# what to do when a phase fails: the house style of optcheck's errors (cause, then the fix)
PHASE_HINTS: dict[str, str] = {
    "build": "the factory must return an nn.Module whose eval-mode forward of a (2, 3, S, S) batch returns "
             "one (2, num_classes) logits tensor; raise input_size if the model downsamples the input away",
    "convert": "Model Optimizer cannot trace this architecture into a FastNAS search space (densenet's dense "
               "concatenations: 'Missing symbols!'); lower the divisors if no layer is searchable, or list the "
               "model as a known failure",
    "sample": "a sampled subnet does not run: Model Optimizer's search space allows widths the model cannot "
              "take; report it with the model and divisors, or list it as a known failure",
    "export": "mtn.export changed what the subnet computes or left dynamic modules behind; report it upstream",
    "save": "mto.save could not write the checkpoint: check the working folder (disk space, permissions)",
    "restore": "mto.restore replays the saved modes on a fresh model from the factory (which built the same "
               "architecture again); 'Inconsistent keys in config' on a concatenation's inputs is Model Optimizer "
               "0.47 splitting a saved width between them in the order of list(set(inputs)), which differs from "
               "instance to instance (nas/hparams/concat.py, _get_sum_to_combo): a Model Optimizer bug, list it "
               "as a known failure with a ticket",
    "compare": "the restored model is not the one saved: look for state outside the state dict, a factory that "
               "initialises differently, or modes restored in another order",
    "prune": "mtp.prune's FastNAS search (or the save / restore of its subnet) failed on this model: try other "
             "divisors, or list it as a known failure",
    "recipe_path": "optcheck's own recipe pipeline fails on a model whose single phases pass: a bug in optcheck "
                   "(report it with this message), or a model the recipe path cannot train (e.g. a forward "
                   "that returns a tuple in training mode: pass model options such as aux_logits=False)",
}

FACTORY_HINT = ("make the factory deterministic: mto.restore needs the same architecture on every call (widths and "
                "layers from arguments, not from a global counter, the clock or randomness)")


# -- the phases ---------------------------------------------------------------------------------------

class PhaseFailure(AssertionError):
    """A phase's own check failed (the library call itself did not raise)."""


class PhaseError(Exception):
    """A library call failed and optcheck knows more about why: the original type is kept, the message
    says what optcheck found, and ``hint`` replaces the phase's hint."""

    def __init__(self, error_type: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.error_type, self.hint = error_type, hint


@contextlib.contextmanager
def library_output() -> Iterator[io.StringIO]:
    """Model Optimizer prints its search's progress (tqdm bars, "Running forward loop...") to stdout
    and stderr; inside, both go to a buffer, and its internal warnings are silenced."""
    from optcheck.core.quiet import library_noise

    buffer = io.StringIO()
    with library_noise(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer

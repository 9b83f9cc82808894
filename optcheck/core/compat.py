"""Compatibility of modelopt's FLOPs counting with torchprofile 0.0.4 and 0.1.x.

modelopt (up to at least 0.47) reads *and assigns* ``torchprofile.profile.handlers`` — a tuple of
``((op_name, ...), handler)`` pairs — in ``modelopt.torch.nas.utils.batch_norm_ignored_flops``,
which drops ``aten::batch_norm`` from the table while FLOPs are counted. torchprofile 0.1.0 removed
that tuple: ``profile_macs`` now reads ``torchprofile.handlers.HANDLER_MAP`` (a dict), and
``mtp.prune`` dies with ``AttributeError: ... has no attribute 'handlers'``.

Adding a plain ``handlers`` tuple (the workaround in circulation) stops the crash but is wrong:
modelopt's swap then edits a tuple nobody reads, so BatchNorm is counted and the search's FLOPs no
longer follow modelopt's convention. Here ``handlers`` becomes a module property whose getter is
built from ``HANDLER_MAP`` and whose setter writes through to it, so the swap works as on 0.0.4.
"""

from __future__ import annotations

import types


class _ProfileModule(types.ModuleType):
    """Module type for ``torchprofile.profile`` on 0.1.x, with a live ``handlers`` view."""

    @property
    def handlers(self) -> tuple:
        return tuple(((name,), fn) for name, fn in self.HANDLER_MAP.items())

    @handlers.setter
    def handlers(self, table: tuple) -> None:
        new = {name: fn for names, fn in table for name in names}
        self.HANDLER_MAP.clear()
        self.HANDLER_MAP.update(new)


def torchprofile_layout() -> str:
    """``"handlers"`` (0.0.x), ``"patched"`` (0.1.x with this shim) or ``"handler_map"`` (0.1.x)."""
    import torchprofile.profile as profile

    if isinstance(profile, _ProfileModule):
        return "patched"
    return "handlers" if "handlers" in vars(profile) else "handler_map"


def patch_torchprofile() -> str:
    """Make ``torchprofile.profile.handlers`` work for modelopt; idempotent. Returns the layout."""
    import torchprofile.profile as profile

    layout = torchprofile_layout()
    if layout == "handler_map":
        if not isinstance(getattr(profile, "HANDLER_MAP", None), dict):
            raise ImportError(
                "torchprofile has neither 'profile.handlers' nor a 'HANDLER_MAP' dict: "
                "install a supported version with `pip install 'torchprofile>=0.0.4'`"
            )
        profile.__class__ = _ProfileModule
        layout = "patched"
    return layout


def import_modelopt():
    """Import the modelopt modules optcheck uses, after making torchprofile compatible."""
    from optcheck.core.quiet import library_noise

    patch_torchprofile()
    with library_noise():  # modelopt's own deprecations at import time
        import modelopt.torch.nas as mtn
        import modelopt.torch.opt as mto
        import modelopt.torch.prune as mtp

    return mtn, mto, mtp

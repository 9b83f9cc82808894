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

A team's own Model Optimizer calls need it too, in its hand-written tests and conftest, whether or not
they import optcheck first: ``install_import_hook`` (run when optcheck is imported, which the pytest
plugin is in every session) patches ``torchprofile.profile`` the moment anyone imports it. Until then
it costs nothing: a session that never imports torchprofile imports no torch because of it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types

TARGET = "torchprofile.profile"


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

    return _patch(profile)


def _patch(profile: types.ModuleType) -> str:
    if isinstance(profile, _ProfileModule):
        return "patched"
    if "handlers" in vars(profile):
        return "handlers"
    if not isinstance(getattr(profile, "HANDLER_MAP", None), dict):
        raise ImportError(
            "torchprofile has neither 'profile.handlers' nor a 'HANDLER_MAP' dict: "
            "install a supported version with `pip install 'torchprofile>=0.0.4'`"
        )
    profile.__class__ = _ProfileModule
    return "patched"


class _PatchingLoader(importlib.abc.Loader):
    """Loads ``torchprofile.profile`` with its own loader, then patches it."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _patch(module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds ``torchprofile.profile`` as the other finders would, with a loader that patches it."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install_import_hook() -> None:
    """Patch torchprofile for Model Optimizer whenever it gets imported (now, if it already was);
    idempotent. Imports nothing."""
    module = sys.modules.get(TARGET)
    if module is not None:
        try:
            _patch(module)
        except ImportError:
            pass  # an unknown torchprofile: import_modelopt raises the error with its fix
        return
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def import_modelopt():
    """Import the modelopt modules optcheck uses, after making torchprofile compatible."""
    from optcheck.core.quiet import library_noise

    patch_torchprofile()
    with library_noise():  # modelopt's own deprecations at import time
        import modelopt.torch.nas as mtn
        import modelopt.torch.opt as mto
        import modelopt.torch.prune as mtp

    return mtn, mto, mtp

"""optcheck.properties: every property holds on clean models (SmallCNN, ResNet20, drawn small CNNs),
and each one finds a planted bug, shrinks it to the culprit layer and says so; a failure found once
is replayed first from the database directory."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optcheck.build.models import SmallCNN, resnet20
from optcheck.checks.properties import (PropertyFailure, export_matches_converted, flops_match, flops_monotone, restore_exact, run_property)
from optcheck.checks.search_space import _modelopt, active_subnet, fastnas_search_space, full_config, search_space
from optcheck.checks.strategies import CNNSpec, SpecCNN, build_cnn, cnn_specs, subnet_configs

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
PROPERTIES = ["restore_exact", "export_matches_converted", "flops_match", "flops_monotone"]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: two OpenMP threads on this 2-core machine stall whenever anything else runs
    (conftest's fixture restores the count after the test)."""
    torch.set_num_threads(1)


def seeded(factory):
    def make():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return factory()
    return make


def check_for(name: str, make_model):
    return {"restore_exact": functools.partial(restore_exact, make_model=make_model),
            "export_matches_converted": export_matches_converted, "flops_match": flops_match,
            "flops_monotone": flops_monotone}[name]


# -- clean models pass ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PROPERTIES)
def test_properties_hold_on_small_cnn(name):
    make = seeded(SmallCNN)
    run = run_property(check_for(name, make), lambda: fastnas_search_space(make()), example_input=X,
                       max_examples=8, seed=0)
    assert run.name == name and run.first_failure is None
    assert run.search_space_size == 8 and run.examples == 8  # every subnet, each once
    assert run.seconds > 0 and run.examples_per_second > 0


@pytest.fixture(scope="module")
def resnet_space():
    return fastnas_search_space(seeded(resnet20)(), channel_divisor=8)


@pytest.mark.parametrize("name", PROPERTIES)
def test_properties_hold_on_resnet20(resnet_space, name):
    check = check_for(name, seeded(resnet20))
    if name == "flops_monotone":  # every hparam narrowed in turn is 10 FLOPs counts a subnet: one layer here
        check = functools.partial(flops_monotone, layer="layer3.0.conv1.out_channels")
    run = run_property(check, lambda: resnet_space, example_input=X, max_examples=3, seed=0)
    assert run.examples == 3 and run.search_space_size == 4**3 * 8**3 * 2**3


@settings(max_examples=6, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=cnn_specs(), data=st.data())
def test_properties_hold_on_drawn_small_cnns(spec, data):
    converted = fastnas_search_space(build_cnn(spec), channel_divisor=8)
    config = data.draw(subnet_configs(converted), label="config")
    restore_exact(converted, config, X, make_model=lambda: build_cnn(spec))
    export_matches_converted(converted, config, X)
    flops_match(converted, config, X)
    flops_monotone(converted, config, X)


def test_properties_leave_the_active_subnet_as_they_found_it(resnet_space):
    mtn, _, _ = _modelopt()
    before = {**full_config(resnet_space), "layer2.1.conv1.out_channels": 16}
    mtn.select(resnet_space, before)
    config = {name: min(choices) for name, (choices, _) in search_space(resnet_space).items()}
    export_matches_converted(resnet_space, config, X)
    with active_subnet(resnet_space, config):
        assert mtn.get_subnet_config(resnet_space, configurable=True) == config
    assert mtn.get_subnet_config(resnet_space, configurable=True) == before
    mtn.select(resnet_space, full_config(resnet_space))


# -- a planted restore bug: found, shrunk to the culprit, replayed ----------------------------------

SPEC = CNNSpec(widths=(32, 32, 32, 32), strides=(1, 2, 1, 2))
CULPRIT = "blocks.1.conv.out_channels"


class ReinitNarrowLayer(SpecCNN):
    """A restore bug that shows for some subnets only: a 'checkpoint migration' in load_state_dict
    re-initialises blocks[1].conv whenever it is narrower than 24 channels (mto.restore calls the
    model's load_state_dict after rebuilding the subnet)."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict, assign)
        conv = self.blocks[1].conv
        if conv.out_channels < 24:
            with torch.no_grad():
                conv.reset_parameters()
        return result


def make_buggy() -> ReinitNarrowLayer:
    return seeded(lambda: ReinitNarrowLayer(SPEC))()


def buggy_restore_run(database_dir, max_examples: int, seed: int):
    return run_property(functools.partial(restore_exact, make_model=make_buggy),
                        lambda: fastnas_search_space(make_buggy(), channel_divisor=8), example_input=X,
                        max_examples=max_examples, seed=seed, database_dir=database_dir)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    db = tmp_path_factory.mktemp("hypothesis-db")
    with pytest.raises(PropertyFailure) as info:
        buggy_restore_run(db, max_examples=40, seed=1)
    return info.value, db


def test_the_planted_bug_shows_for_narrow_subnets_only():
    converted = fastnas_search_space(make_buggy(), channel_divisor=8)
    full = full_config(converted)
    restore_exact(converted, {**full, CULPRIT: 24}, X, make_model=make_buggy)
    restore_exact(converted, {**full, "blocks.0.conv.out_channels": 8, "blocks.2.conv.out_channels": 8}, X,
                  make_model=make_buggy)
    with pytest.raises(PropertyFailure):
        restore_exact(converted, {**full, CULPRIT: 8}, X, make_model=make_buggy)


def test_restore_property_finds_the_planted_bug_and_shrinks_to_the_culprit(planted):
    failure, db = planted
    assert failure.property == "restore_exact"
    assert failure.changed == {CULPRIT: (16, 32)}  # only the culprit, at the widest width that fails
    assert failure.config == {"blocks.0.conv.out_channels": 32, CULPRIT: 16, "blocks.2.conv.out_channels": 32}
    text = str(failure)
    assert f"{CULPRIT} = 16 (of 32); the other 2 hparams at full width" in text
    assert "blocks.1.conv.weight [16, 32, 3, 3]" in text  # the tensor that differs, with its shape
    assert "state_dict" in text and "outputs" in text
    assert "load_state_dict" in text  # the fix hint
    assert f"restore_exact(converted_model, {failure.config!r}, example_input, make_model=make_model)" in text
    assert failure.run is not None and failure.run.examples > failure.run.first_failure >= 1
    assert str(db) in text


def test_a_found_failure_is_replayed_first_from_the_database(planted, tmp_path):
    failure, db = planted
    # one example from a fresh database is the simplest subnet, the full model: it passes
    assert buggy_restore_run(tmp_path / "fresh", max_examples=1, seed=2).first_failure is None
    with pytest.raises(PropertyFailure) as info:
        buggy_restore_run(db, max_examples=1, seed=2)
    assert info.value.run.first_failure == 1  # the saved subnet, before any new one
    assert info.value.config == failure.config


def test_a_restore_that_raises_is_reported_with_its_error():
    converted = fastnas_search_space(SmallCNN(), channel_divisor=8)
    with pytest.raises(PropertyFailure, match=r"mto.save / mto.restore raised \w+Error") as info:
        restore_exact(converted, full_config(converted), X, make_model=lambda: SmallCNN(width=8))
    assert "the full model (all 2 hparams at full width)" in str(info.value)


# -- the other properties find their planted bugs ---------------------------------------------------

def test_flops_match_finds_batchnorm_counted_by_modelopt(monkeypatch):
    """The torchprofile shim broken (modelopt's BatchNorm exclusion a no-op): the counts part by the
    BatchNorm FLOPs, and the message says so."""
    import contextlib

    import modelopt.torch.nas.utils as nas_utils

    monkeypatch.setattr(nas_utils, "batch_norm_ignored_flops", contextlib.nullcontext)
    make = seeded(SmallCNN)
    with pytest.raises(PropertyFailure) as info:
        run_property(flops_match, lambda: fastnas_search_space(make()), example_input=X, max_examples=5, seed=0)
    text = str(info.value)
    assert "the difference is the model's BatchNorm FLOPs" in text
    assert info.value.changed == {}  # every subnet fails: shrunk to the full model


def test_export_matches_converted_finds_an_export_that_slices_other_channels(monkeypatch):
    """A planted export bug: for narrowed subnets, blocks[0].conv is exported with its output
    channels in reverse order (the next layer still expects the original order)."""
    mtn, _, _ = _modelopt()
    real_export = mtn.export

    def bad_export(model, *args, **kwargs):
        narrowed = model.blocks[0].conv.out_channels < 32
        out = real_export(model, *args, **kwargs)
        if narrowed:
            with torch.no_grad():
                out.blocks[0].conv.weight.copy_(out.blocks[0].conv.weight.flip(0))
        return out

    monkeypatch.setattr(mtn, "export", bad_export)
    make = seeded(lambda: build_cnn(SPEC))
    with pytest.raises(PropertyFailure) as info:
        run_property(export_matches_converted, lambda: fastnas_search_space(make()), example_input=X,
                     max_examples=30, seed=0)
    assert info.value.changed == {"blocks.0.conv.out_channels": (24, 32)}
    assert "max |exported - converted|" in str(info.value)


def test_flops_monotone_finds_a_count_that_grows_when_a_layer_narrows(monkeypatch):
    import optcheck.build.measure as measure

    real = measure.count_flops

    def count_with_penalty(model: nn.Module, example_input):
        narrow = model.blocks[1].conv.out_channels <= 8  # a count that charges extra for a narrow layer
        return real(model, example_input) + (10**9 if narrow else 0)

    monkeypatch.setattr(measure, "count_flops", count_with_penalty)
    converted = fastnas_search_space(build_cnn(CNNSpec(widths=(32, 32, 16), strides=(1, 2, 1))))
    assert list(search_space(converted)) == ["blocks.0.conv.out_channels", "blocks.1.conv.out_channels"]
    flops_monotone(converted, {"blocks.0.conv.out_channels": 8, "blocks.1.conv.out_channels": 24}, X)
    with pytest.raises(PropertyFailure) as info:
        run_property(flops_monotone, lambda: converted, example_input=X, max_examples=20, seed=0)
    failure = info.value
    assert failure.changed == {"blocks.1.conv.out_channels": (16, 32)}  # narrowing it to 8 adds FLOPs
    assert "blocks.1.conv.out_channels: 16 -> 8" in str(failure)
    assert "layer='blocks.1.conv.out_channels'" in failure.reproduce


def test_flops_monotone_rejects_an_unknown_layer(resnet_space):
    with pytest.raises(ValueError, match="not a configurable hparam"):
        flops_monotone(resnet_space, full_config(resnet_space), X, layer="layer1.0.conv2.out_channels")


def test_export_matches_converted_finds_an_export_that_ignores_the_selected_widths(monkeypatch):
    """A planted export bug: the subnet exported at full width (as if selected after exporting)."""
    mtn, _, _ = _modelopt()
    real_export = mtn.export

    def stale_export(model, *args, **kwargs):
        mtn.select(model, full_config(model))
        return real_export(model, *args, **kwargs)

    converted = fastnas_search_space(seeded(SmallCNN)(), channel_divisor=8)
    monkeypatch.setattr(mtn, "export", stale_export)
    export_matches_converted(converted, full_config(converted), X)  # the full model: nothing to lose
    with pytest.raises(PropertyFailure, match=r"features.3.out_channels = 32 \(config 16\)") as info:
        export_matches_converted(converted, {"features.0.out_channels": 16, "features.3.out_channels": 16}, X)
    assert "features.3.out_channels = 16 (of 32)" in str(info.value)

"""optcheck.strategies: subnet configs are valid and only valid, shrink toward the full model, and
cover the search space; input batches and small CNNs are what they say and convert under FastNAS."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from optcheck.build.models import SmallCNN, resnet20
from optcheck.checks.search_space import _modelopt, export_subnet, fastnas_search_space, full_config, search_space
from optcheck.checks.strategies import (CNNSpec, SpecCNN, build_cnn, cnn_specs, input_batches, small_cnns, subnet_configs)

NO_DB = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIND = settings(NO_DB, derandomize=True, max_examples=500)  # find(): the same search every run
SPEC = CNNSpec(widths=(32, 32, 32, 32), strides=(1, 2, 1, 2))


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: two OpenMP threads on this 2-core machine stall whenever anything else runs
    (conftest's fixture restores the count after the test)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def resnet_space():
    torch.manual_seed(0)
    return fastnas_search_space(resnet20(), channel_divisor=8)


@pytest.fixture(scope="module")
def cnn_space():
    return fastnas_search_space(build_cnn(SPEC), channel_divisor=8)


# -- subnet_configs ---------------------------------------------------------------------------------

def test_resnet20_search_space_is_the_nine_first_convs_of_its_blocks(resnet_space):
    space = search_space(resnet_space)
    assert list(space) == [f"layer{s}.{b}.conv1.out_channels" for s in (1, 2, 3) for b in range(3)]
    assert space["layer1.0.conv1.out_channels"] == ((8, 16), 16)
    assert space["layer3.2.conv1.out_channels"] == ((8, 16, 24, 32, 40, 48, 56, 64), 64)


@NO_DB
@given(data=st.data())
def test_drawn_configs_are_valid_and_select_accepts_them(resnet_space, data):
    mtn, _, _ = _modelopt()
    space = search_space(resnet_space)
    config = data.draw(subnet_configs(resnet_space))
    assert list(config) == list(space)
    for name, value in config.items():
        assert value in space[name][0], f"{name} = {value} is not one of {space[name][0]}"
    mtn.select(resnet_space, config)  # strict: raises on a missing key or a value outside the choices
    assert mtn.get_subnet_config(resnet_space, configurable=True) == config


@settings(NO_DB, max_examples=10)
@given(data=st.data())
def test_a_drawn_config_exports_to_a_model_with_its_widths(cnn_space, data):
    config = data.draw(subnet_configs(cnn_space))
    exported = export_subnet(cnn_space, config)
    assert type(exported) is SpecCNN
    for name, width in config.items():
        block = name.split(".")[1]
        conv = exported.blocks[int(block)].conv
        assert conv.out_channels == width and conv.weight.shape[0] == width, name
        assert exported.blocks[int(block) + 1].conv.in_channels == width, name
        assert exported.blocks[int(block)].bn.num_features == width, name


def test_draws_cover_every_choice_of_every_hparam(resnet_space):
    """Coverage: 300 draws reach each value of each hparam, and many distinct subnets."""
    seen: dict[str, set] = {}
    configs = set()

    @settings(NO_DB, max_examples=300)
    @given(config=subnet_configs(resnet_space))
    def draw(config):
        configs.add(tuple(config.values()))
        for name, value in config.items():
            seen.setdefault(name, set()).add(value)

    draw()
    for name, (choices, _) in search_space(resnet_space).items():
        assert seen[name] == set(choices), f"{name}: drew {sorted(seen[name])} of {choices}"
    assert len(configs) > 100


def test_shrinks_to_the_full_model_with_only_the_culprit_narrowed(resnet_space):
    strategy = subnet_configs(resnet_space)
    full = full_config(resnet_space)
    assert find(strategy, lambda c: True, settings=FIND) == full
    culprit = "layer3.1.conv1.out_channels"
    minimal = find(strategy, lambda c: c[culprit] < 40, settings=FIND)
    assert minimal == {**full, culprit: 32}  # only the culprit, and narrowed as little as still fails
    two = find(strategy, lambda c: c[culprit] < 64 and c["layer2.0.conv1.out_channels"] <= 16, settings=FIND)
    assert two == {**full, culprit: 56, "layer2.0.conv1.out_channels": 16}


def test_subnet_configs_of_an_unconverted_model_says_to_convert_it():
    with pytest.raises(ValueError, match="fastnas_search_space") as info:
        subnet_configs(SmallCNN())
    assert "SmallCNN has no configurable hparam" in str(info.value)


# -- input_batches ----------------------------------------------------------------------------------

@settings(NO_DB, max_examples=30)
@given(x=input_batches((3, 8, 8), min_batch=2, max_batch=5, scale=3.0))
def test_input_batches_are_finite_float32_of_the_shape(x):
    assert x.dtype == torch.float32
    assert x.shape[1:] == (3, 8, 8) and 2 <= x.shape[0] <= 5
    assert torch.isfinite(x).all()
    assert x.std() > 1.0  # scaled: a standard normal times 3


def test_input_batches_shrink_to_the_smallest_batch_of_seed_zero_and_vary():
    strategy = input_batches((1, 4, 4), min_batch=1, max_batch=4)
    simplest = find(strategy, lambda x: True, settings=FIND)
    assert torch.equal(simplest, torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    big = find(strategy, lambda x: x.shape[0] == 4 and x[0, 0, 0, 0] > 0.5, settings=FIND)
    assert big.shape[0] == 4 and not torch.equal(big[:1], simplest)


@pytest.mark.parametrize("args", [dict(shape=(3, 0, 8)), dict(shape=()), dict(shape=(3, 8, 8), min_batch=0),
                                  dict(shape=(3, 8, 8), min_batch=3, max_batch=2)])
def test_input_batches_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        input_batches(**args)


# -- cnn_specs / small_cnns -------------------------------------------------------------------------

@settings(NO_DB, max_examples=50)
@given(spec=cnn_specs(width_multiple=4, max_width=16, max_depth=3, searchable=False))
def test_cnn_specs_stay_in_their_bounds(spec):
    assert 1 <= len(spec.widths) == len(spec.strides) <= 3
    assert all(w in (4, 8, 12, 16) for w in spec.widths)
    assert set(spec.strides) <= {1, 2}


def test_cnn_specs_reach_every_feature_and_shrink_to_the_simplest():
    assert find(cnn_specs(searchable=False), lambda s: True, settings=FIND) == CNNSpec((8,), (1,), False, False, False)
    specs = cnn_specs()
    assert find(specs, lambda s: True, settings=FIND) == CNNSpec((16, 8), (1, 1), False, False, False)
    rich = find(specs, lambda s: s.residual and s.batchnorm and s.bias and 2 in s.strides and len(s.widths) == 4
                and 32 in s.widths, settings=FIND)
    assert rich.residual and len(rich.widths) == 4


def test_build_cnn_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_cnn(SPEC, seed=3), build_cnn(SPEC, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_cnn(SPEC, seed=4)
    assert not torch.equal(a.blocks[0].conv.weight, c.blocks[0].conv.weight)


@settings(NO_DB, max_examples=15)
@given(model=small_cnns(in_channels=3, num_classes=5), x=input_batches((3, 16, 16), max_batch=3))
def test_small_cnns_run_and_convert_to_an_equivalent_search_space(model, x):
    """Each drawn CNN runs forward, converts under FastNAS, and its search space at full width (and
    every drawn subnet config of it) computes what the plain model does / a valid subnet."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (x.shape[0], 5) and torch.isfinite(out).all()
    converted = fastnas_search_space(build_cnn(model.spec, 3, 5), channel_divisor=8)
    converted.eval()
    with torch.no_grad():
        assert torch.equal(converted(x), out)
    space = search_space(converted)
    assert list(space) == [f"blocks.{b}.conv.out_channels" for b in model.spec.searchable_blocks(8)]
    for name, (choices, original) in space.items():
        assert original == max(choices) and all(c % 8 == 0 for c in choices), name
    assert math.prod(len(c) for c, _ in space.values()) >= 2


@settings(NO_DB, max_examples=15)
@given(spec=cnn_specs(searchable=False, max_depth=3))
def test_fastnas_refuses_exactly_the_specs_with_no_searchable_block(spec):
    """``searchable_blocks`` predicts Model Optimizer: ``mtn.convert`` raises for a model with no
    configurable hparam, and ``cnn_specs()`` (searchable) never draws one."""
    model = build_cnn(spec)
    if spec.searchable_blocks(8):
        assert search_space(fastnas_search_space(model, channel_divisor=8))
    else:
        with pytest.raises(Exception, match="does not contain any configurable hyperparameters"):
            fastnas_search_space(model, channel_divisor=8)

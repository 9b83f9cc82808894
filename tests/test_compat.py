"""torchprofile 0.0.4 and 0.1.x both give modelopt's FLOPs; the declared dependencies import.

The 0.1.x path runs in this process. The 0.0.4 path runs in a subprocess that imports torchprofile 0.0.4
from its wheel, committed in tests/data (pure Python, 7.7 kB, MIT license inside; from PyPI, sha256
in tests/data/README.md): Python imports it from the zip itself, so nothing is installed while the tests run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch

from optcheck.core.compat import patch_torchprofile, torchprofile_layout
from optcheck.build.measure import count_flops
from optcheck.build.models import resnet20

PROBE = textwrap.dedent("""
    import json, torch, torchprofile
    from optcheck.core.compat import import_modelopt, torchprofile_layout
    layout_before = torchprofile_layout()
    mtn, mto, mtp = import_modelopt()
    from modelopt.torch.nas.utils import inference_flops
    from optcheck.build.measure import count_flops
    from optcheck.build.models import resnet20, SmallCNN
    x = torch.zeros(1, 3, 32, 32)
    model = resnet20()
    out = {"version": torchprofile.__version__ if hasattr(torchprofile, "__version__") else "?",
           "file": torchprofile.__file__, "layout": layout_before,
           "modelopt": inference_flops(model, dummy_input=x, unit=1.0),
           "optcheck": count_flops(model, x)}
    # a real FastNAS search uses the same counting
    torch.manual_seed(0)
    net = SmallCNN(num_classes=4)
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))) for _ in range(4)]
    from optcheck.steps.fastnas import FastNASStep
    from optcheck.steps.fastnas import fastnas_config
    step = FastNASStep(kind="fastnas", flops="70%", channel_divisor=8, feature_divisor=8)
    sub, _ = mtp.prune(net, mode=[("fastnas", fastnas_config(step))], constraints={"flops": "70%"},
                       dummy_input=torch.zeros(1, 3, 16, 16),
                       config={"data_loader": data, "score_func": lambda m: 0.5, "verbose": False,
                               "max_iter_data_loader": 2})
    out["pruned_flops"] = count_flops(sub, torch.zeros(1, 3, 16, 16))
    out["full_flops"] = count_flops(SmallCNN(num_classes=4), torch.zeros(1, 3, 16, 16))
    print("PROBE" + json.dumps(out))
""")


def run_probe(extra_path: str | None = None) -> dict:
    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("PROBE"))
    return json.loads(line[len("PROBE"):])


WHEEL_004 = Path(__file__).parent / "data" / "torchprofile-0.0.4-py3-none-any.whl"


@pytest.fixture(scope="session")
def torchprofile_004() -> str:
    """torchprofile 0.0.4 (pure Python), importable from its wheel on ``PYTHONPATH`` (zipimport)."""
    assert WHEEL_004.is_file(), f"{WHEEL_004} is missing: it is committed with the tests"
    return str(WHEEL_004)


def test_torchprofile_0_0_4_path(torchprofile_004):
    out = run_probe(torchprofile_004)
    assert out["file"].startswith(torchprofile_004)
    assert out["layout"] == "handlers"
    assert out["modelopt"] == out["optcheck"] == 81_102_208
    assert out["pruned_flops"] <= 0.7 * out["full_flops"]


def test_torchprofile_installed_path_matches_0_0_4(torchprofile_004):
    """The installed torchprofile (0.1.x here) gives the same numbers as 0.0.4, search included."""
    assert run_probe() | {"file": "", "layout": "", "version": ""} == \
        run_probe(torchprofile_004) | {"file": "", "layout": "", "version": ""}


@pytest.mark.filterwarnings("ignore:No handlers found")
def test_shim_makes_modelopt_ignore_batchnorm():
    """On 0.1.x, modelopt's batch_norm_ignored_flops must really drop BatchNorm from the count."""
    import torchprofile.profile as profile

    if torchprofile_layout() == "handlers":
        pytest.skip("torchprofile 0.0.x installed: no shim needed")
    patch_torchprofile()
    from modelopt.torch.nas.utils import batch_norm_ignored_flops

    table = dict(profile.HANDLER_MAP)
    with batch_norm_ignored_flops():
        assert "aten::batch_norm" not in profile.HANDLER_MAP
    assert profile.HANDLER_MAP == table  # restored afterwards
    model, x = resnet20(), torch.zeros(1, 3, 32, 32)
    from torchprofile import profile_macs

    with_bn = 2 * profile_macs(model.eval(), x)
    from modelopt.torch.nas.utils import inference_flops

    # modelopt's own count, through the shim: BatchNorm dropped (the naive 'handlers' tuple shim would
    # leave it in and report with_bn), equal to optcheck's count
    assert inference_flops(model, dummy_input=x, unit=1) == count_flops(model, x) < with_bn


def test_patch_is_idempotent():
    import torchprofile.profile as profile

    first = patch_torchprofile()
    table = dict(getattr(profile, "HANDLER_MAP", {}))
    handlers = profile.handlers
    second = patch_torchprofile()
    assert first == second == torchprofile_layout()
    assert dict(getattr(profile, "HANDLER_MAP", {})) == table and profile.handlers == handlers
    if first == "patched":  # the module class was swapped once, and its setter still writes through
        assert type(profile).__name__ == "_ProfileModule"
        profile.handlers = handlers[1:]
        assert len(profile.HANDLER_MAP) == len(table) - len(handlers[0][0])
        profile.handlers = handlers
        assert dict(profile.HANDLER_MAP) == table


def test_declared_dependencies_cover_modelopts_undeclared_imports():
    required = {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
                for r in metadata.requires("optcheck")}
    assert {"requests", "huggingface_hub", "torchprofile", "nvidia-modelopt", "torch",
            "torchvision", "scikit-learn"} <= {r.replace("_", "-") for r in required} | required


def test_modelopt_imports_in_a_fresh_interpreter():
    code = "import modelopt.torch.prune, modelopt.torch.opt, modelopt.torch.quantization, torchvision; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]

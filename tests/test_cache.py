"""The artifact cache: round trip, corruption and truncation, SIGKILL mid-write, stale and live
locks, racing processes, unwritable directories, --rebuild, and what the content keys depend on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from optcheck.pipeline.cache import ArtifactCache, CacheLockTimeout, CacheWarning

from conftest import tiny_recipe

REPO = Path(__file__).resolve().parents[1]


def _store_one(cache: ArtifactCache, tmp_path: Path, key: str = "k" * 64, payload: bytes = b"weights" * 1000):
    src = tmp_path / "state_dict.pth"
    src.write_bytes(payload)
    return cache.store("baseline", key, {"state_dict": src}, {"metrics": {"test_acc": 0.5}})


def test_store_then_load_returns_the_same_files_and_meta(tmp_path):
    cache = ArtifactCache(tmp_path / "c")
    stored = _store_one(cache, tmp_path)
    loaded = cache.load("baseline", "k" * 64)
    assert loaded is not None
    assert loaded.files["state_dict"].read_bytes() == b"weights" * 1000
    assert loaded.meta["metrics"] == {"test_acc": 0.5} and loaded.meta["session"] == cache.session
    assert stored.path == loaded.path
    assert cache.load("baseline", "x" * 64) is None  # another key: a miss
    assert list((tmp_path / "c" / "tmp").iterdir()) == []  # nothing left half-written


@pytest.mark.parametrize("damage, words", [
    (lambda d: _flip_byte(d / "state_dict.pth"), "does not match its SHA-256"),
    (lambda d: _truncate(d / "state_dict.pth"), "truncated"),
    (lambda d: _truncate(d / "manifest.json"), "not valid JSON"),
    (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text().replace("0.5", "0.9")),
     "does not match its own checksum"),
    (lambda d: (d / "state_dict.pth").unlink(), "is missing"),
])
def test_a_damaged_entry_is_quarantined_with_a_warning_and_never_loaded(tmp_path, damage, words):
    cache = ArtifactCache(tmp_path / "c")
    entry = _store_one(cache, tmp_path)
    damage(entry.path)
    with pytest.warns(CacheWarning) as record:
        assert cache.load("baseline", "k" * 64) is None
    message = str(record[0].message)
    assert words in message and "kkkkkkkk" in message and "will be rebuilt" in message
    assert not entry.path.exists()
    kept = list((tmp_path / "c" / "quarantine").iterdir())
    assert len(kept) == 1 and (kept[0] / "manifest.json").exists()  # moved aside, not deleted
    assert str(kept[0].name) in message
    _store_one(cache, tmp_path)  # the rebuild stores a fresh entry that loads
    assert cache.load("baseline", "k" * 64) is not None


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_process_killed_mid_write_leaves_nothing_that_loads(tmp_path):
    root = tmp_path / "c"
    proc = _python("""
        import os, signal, sys
        from pathlib import Path
        import optcheck.pipeline.cache as c
        cache = c.ArtifactCache(Path(sys.argv[1]))
        src = Path(sys.argv[1]).parent / "w.pth"
        src.write_bytes(b"x" * 100000)
        def die(path):  # SIGKILL right after the first file is on disk, before the manifest
            os.kill(os.getpid(), signal.SIGKILL)
        c._fsync = die
        cache.store("baseline", "k" * 64, {"state_dict": src}, {})
    """, str(root))
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    leftovers = list((root / "tmp").iterdir())
    assert len(leftovers) == 1 and (leftovers[0] / "state_dict.pth").exists()
    cache = ArtifactCache(root)  # opening sweeps unfinished entries of dead processes
    assert cache.load("baseline", "k" * 64) is None
    assert list((root / "tmp").iterdir()) == []


HOLD_LOCK = """
    import sys, time
    from pathlib import Path
    from optcheck.pipeline.cache import ArtifactCache
    cache = ArtifactCache(Path(sys.argv[1]))
    with cache.lock("baseline", "k" * 64, "the baseline of tiny"):
        print("locked", flush=True)
        time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    proc = _python(HOLD_LOCK, str(tmp_path / "c"))
    assert proc.stdout.readline().strip() == "locked"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    cache = ArtifactCache(tmp_path / "c", lock_timeout=10)
    start = time.monotonic()
    with cache.lock("baseline", "k" * 64, "the baseline of tiny"):
        owner = json.loads((tmp_path / "c" / "locks" / f"{'k' * 32}.owner").read_text())
        assert owner["pid"] == os.getpid()  # the dead holder's record was replaced
    assert time.monotonic() - start < 5


def test_a_lock_held_too_long_fails_with_who_holds_it_and_the_fix(tmp_path):
    proc = _python(HOLD_LOCK, str(tmp_path / "c"))
    try:
        assert proc.stdout.readline().strip() == "locked"
        cache = ArtifactCache(tmp_path / "c", lock_timeout=1.0)
        with pytest.raises(CacheLockTimeout) as info:
            with cache.lock("baseline", "k" * 64, "the baseline of tiny"):
                pass
        message = str(info.value)
        assert f"pid {proc.pid}" in message and "still running" in message
        assert "the baseline of tiny" in message and f"{'k' * 32}.lock" in message
        assert "--optcheck-lock-timeout" in message and "delete" in message
    finally:
        proc.kill()
        proc.wait()


RACE = """
    import json, sys
    from pathlib import Path
    from optcheck.pipeline.cache import ArtifactCache
    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import load_recipe
    cache = ArtifactCache(Path(sys.argv[1]))
    run = RecipeRun(load_recipe(sys.argv[2]), device="cpu", seed=0, cache=cache, threads=1)
    Path(sys.argv[3]).touch()
    while not all(Path(p).exists() for p in sys.argv[4:]):  # start building together
        pass
    for stage in run.available_stages():
        run.artifact(stage)
    print(json.dumps({s: [e["cache"], run.artifacts[s].metrics.flops] for s, e in run.events.items()}))
"""


def test_two_processes_racing_for_one_artifact_build_it_once(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(tiny_recipe())
    ready = [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [_python(RACE, str(tmp_path / "c"), str(recipe), str(ready[i]), *map(str, ready)) for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    for stage in ("baseline", "pruned", "finetuned"):
        outcomes = sorted(o[stage][0] for o in outs)
        # one builds; the other waited on the lock ("built by another process") or, if the shared data
        # lock staggered the two, found the entry already published ("hit")
        assert outcomes[0] == "built" and outcomes[1].startswith("hit"), (stage, outs)
        assert outs[0][stage][1] == outs[1][stage][1]  # and both see the same model
    assert len(list((tmp_path / "c" / "entries" / "baseline").iterdir())) == 1


def test_an_unwritable_cache_directory_is_reported_not_fatal(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache, why = ArtifactCache.open(blocker / "cache")
    assert cache is None and "NotADirectoryError" in why


def test_rebuild_ignores_entries_of_earlier_sessions_but_reuses_its_own(tmp_path):
    old = ArtifactCache(tmp_path / "c", session="earlier")
    _store_one(old, tmp_path)
    _store_one(old, tmp_path, key="o" * 64)
    new = ArtifactCache(tmp_path / "c", rebuild=True, session="now")
    assert new.load("baseline", "k" * 64) is None  # rebuilt this session
    _store_one(new, tmp_path, payload=b"new")
    entry = new.load("baseline", "k" * 64)
    assert entry is not None and entry.files["state_dict"].read_bytes() == b"new"
    assert ArtifactCache(tmp_path / "c").load("baseline", "o" * 64) is not None  # the rest is kept


# -- content keys ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys_of(tmp_path_factory):
    from optcheck.build.data import build_data
    from optcheck.pipeline.keys import stage_keys
    from optcheck.recipes.loader import parse_recipe
    import tomllib
    import torch

    base = tmp_path_factory.mktemp("keys")

    def keys(text: str = tiny_recipe(), seed: int = 0, **data_options):
        recipe = parse_recipe(tomllib.loads(text), base / "tiny.toml")
        if data_options:
            recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update=data_options)})
        bundle = build_data(recipe.data, seed)
        return {s: m["key"] for s, m in stage_keys(recipe, bundle, torch.device("cpu"), seed).items()}

    return keys


def test_nothing_changed_means_the_same_keys(keys_of):
    assert keys_of() == keys_of()


def test_a_finetune_setting_changes_only_the_finetuned_key(keys_of):
    before, after = keys_of(), keys_of(tiny_recipe().replace("lr_scale = 0.1", "lr_scale = 0.2"))
    assert [s for s in before if before[s] != after[s]] == ["finetuned"]


def test_a_training_setting_changes_the_baseline_and_every_later_stage(keys_of):
    before, after = keys_of(), keys_of(tiny_recipe().replace("epochs = 6", "epochs = 7"))
    assert sorted(s for s in before if before[s] != after[s]) == ["baseline", "finetuned", "pruned"]


def test_a_fastnas_setting_changes_pruned_and_finetuned_only(keys_of):
    before, after = keys_of(), keys_of(tiny_recipe(flops="55%"))
    assert sorted(s for s in before if before[s] != after[s]) == ["finetuned", "pruned"]


def test_the_data_path_and_description_do_not_count_but_contents_and_seed_do(keys_of):
    before = keys_of()
    assert keys_of(tiny_recipe().replace('description = "', 'description = "renamed '), root="/elsewhere") == before
    noisier = tiny_recipe().replace("image_size = 16 }", "image_size = 16, noise = 0.3 }")
    assert keys_of(noisier)["baseline"] != before["baseline"]  # other samples
    assert keys_of(seed=1)["baseline"] != before["baseline"]


@pytest.mark.parametrize("setting", [{"num_workers": 2}, {"eval_batch_size": 64}])
def test_loader_settings_that_change_the_numbers_are_in_the_key(keys_of, setting):
    # loader workers draw the augmentation from their own seeds; the FastNAS score evaluates in
    # batches of eval_batch_size: both can change the artifact, so a cache hit must not ignore them
    assert keys_of(**setting)["baseline"] != keys_of()["baseline"]


@pytest.mark.parametrize("change", ["description", "root", "name"])
def test_each_setting_left_out_of_the_key_really_builds_the_same_artifact(tmp_path, change):
    """The key may leave a setting out only if a cold build with it changed is bit-identical."""
    import torch

    from optcheck.pipeline.run import RecipeRun
    from optcheck.recipes.loader import parse_recipe
    import tomllib

    def build(text: str, **data):
        recipe = parse_recipe(tomllib.loads(text), tmp_path / "tiny.toml")
        if data:
            recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update=data)})
        run = RecipeRun(recipe, device="cpu", seed=0, workdir=lambda: tmp_path, threads=1)
        return run.artifact("baseline").model.state_dict(), run.keys["baseline"]

    text = tiny_recipe()
    first, key1 = build(text)
    if change == "description":
        second, key2 = build(text.replace('description = "', 'description = "renamed '))
    elif change == "name":
        second, key2 = build('name = "another"\n' + text)
    else:
        second, key2 = build(text, root=str(tmp_path / "elsewhere"))
    assert {k: v for k, v in key1.items() if key2.get(k) != v} == {}  # the material that differs, if any
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_the_cpu_numerics_path_is_part_of_the_key(tmp_path):
    """ATEN_CPU_CAPABILITY=avx2 (what torch picks on a CPU without AVX-512) gives other weights, so
    another key: a cache filled on one CPU type never answers for another."""
    import subprocess
    import sys

    code = ("import torch; from optcheck.pipeline.keys import environment; "
            "e = environment(torch.device('cpu')); print(e['capability'], e['isa'], e.get('aten_cpu_capability'))")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lowered = subprocess.run([sys.executable, "-c", code], env={**env, "ATEN_CPU_CAPABILITY": "default"},
                             capture_output=True, text=True, check=True).stdout
    assert default != lowered and lowered.split()[0] == "DEFAULT" and lowered.split()[2] == "default"


def test_the_thread_count_is_part_of_the_key(keys_of):
    import torch

    before = torch.get_num_threads()
    try:
        one = keys_of()
        torch.set_num_threads(before + 1)
        assert keys_of()["baseline"] != one["baseline"]
    finally:
        torch.set_num_threads(before)


def test_a_model_factory_source_edit_changes_every_key(keys_of, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "mymodels_for_keys.py"
    module.write_text("from optcheck.build.models import SmallCNN\n"
                      "def net(num_classes, in_channels, **kw):\n    return SmallCNN(num_classes=num_classes, in_channels=in_channels)\n")
    text = tiny_recipe().replace('name = "small_cnn"', 'name = "mymodels_for_keys:net"')
    first = keys_of(text)
    module.write_text(module.read_text() + "# an edit\n")
    second = keys_of(text)
    assert all(first[s] != second[s] for s in ("baseline", "pruned", "finetuned"))

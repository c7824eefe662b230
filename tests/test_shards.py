"""Tests for sweeps trained in shards: grok.py --shard, their pooling (analysis.load_sweep, report.py) and SHARD=K/N ./reproduce.sh.

Run: python -m pytest -q tests/test_shards.py      (-m "not slow" leaves out the pipeline runs)
"""
import itertools
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import analysis  # noqa: E402
import grok  # noqa: E402
import report  # noqa: E402
from conftest import repro_env  # noqa: E402

SMALL = dict(d_model=32, n_heads=4, d_head=8, d_mlp=64)  # a small model keeps the suite fast
# Runs whose arithmetic differs only in how they were batched agree to float rounding; over tens
# of epochs of AdamW that stays far below these (the metrics are accuracies, losses and norms of order 1).
RTOL, ATOL = 1e-4, 1e-5


def sweep_cfg(out, **kw):
    """A small sweep (p=11, 2 seeds x 2 sizes x 2 lrs = 8 runs) with the convergence test on."""
    base = dict(task="add", p=11, train="40,70", seeds="0,1", lr="1e-9,3e-3", epochs=60, log_every=5, log_points=5,
                print_every=10**6, ckpt_every=10**6, converge_window=20, out=str(out), device="cpu", threads=1,
                **SMALL)
    base.update(kw)
    return grok.Config(**base)


def train(cfg):
    """Train a config in this process; returns its directory."""
    return grok.train(cfg)


def train_shards(base, n, **kw):
    """Train every shard K/N of a sweep into BASE.shard-K-of-N; returns the shard directories."""
    dirs = []
    for k in range(n):
        d = f"{base}.shard-{k}-of-{n}"
        train(sweep_cfg(d, shard=f"{k}/{n}", **kw))
        dirs.append(d)
    return dirs


def assert_close(name, got, want):
    """Arrays equal to float rounding (nan where nan), with the largest difference in the message."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape, f"{name}: shape {got.shape} vs {want.shape}"
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: nan in other places"
    diff = np.abs(got - want)[~np.isnan(want)]
    assert np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True), \
        f"{name}: max difference {diff.max() if diff.size else 0:.3g}"


# -----------------------------------------------------------------------------
# The shard of a sweep: a partition of its runs


def test_shards_partition_the_sweep_against_brute_force():
    runs = grok.make_runs(grok.Config(p=11, seeds="0-4", train="10,20,30", wd="0.5,1", lr="1e-3"), 121)
    R = len(runs["seed"])
    product = list(itertools.product(range(5), (10, 20, 30), (0.5, 1.0), (1e-3,)))  # the sweep's order
    assert list(zip(*(runs[k] for k in ("seed", "n_train", "wd", "lr")))) == product
    for n in (1, 2, 7, R, R + 3):
        seen = []
        for k in range(n):
            part = grok.shard_runs(runs, (k, n))
            want = [product[i] for i in range(R) if i % n == k]  # the brute-force rule: index K mod N
            assert list(zip(*(part[key] for key in ("seed", "n_train", "wd", "lr")))) == want
            seen += want
        assert sorted(seen) == sorted(product), f"N={n}: every run exactly once"


@pytest.mark.parametrize("spec", ["3/2", "0/0", "a/b", "1", "-1/2", "1/2/3", "2/2"])
def test_a_bad_shard_is_one_line(spec, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        grok.main(["--p", "11", f"--shard={spec}", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "K/N" in err, err
    assert not (tmp_path / "x").exists(), "nothing written"


def test_a_shard_past_the_last_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.shard-5-of-6"
    grok.main(["--p", "11", "--seeds", "0-2", "--shard", "5/6", "--epochs", "5", "--out", str(out)])
    assert "holds no runs" in capsys.readouterr().out and not out.exists()


def test_a_shard_resumes_only_in_its_own_sweep(tmp_path):
    d = str(tmp_path / "s.shard-0-of-2")
    one = dict(train="40", lr="3e-3", epochs=10)
    train(sweep_cfg(d, shard="0/2", seeds="0-3", **one))
    meta = json.load(open(os.path.join(d, "config.json")))
    assert meta["shard"]["k"] == 0 and meta["shard"]["n"] == 2
    assert meta["shard"]["sweep"] == grok.make_runs(sweep_cfg(d, seeds="0-3", **one), 121), "the whole sweep"
    assert meta["runs"]["seed"] == [0, 2] and meta["runs"] == grok.shard_runs(meta["shard"]["sweep"], (0, 2))
    # Shard 0/2 of seeds 0-2 is the same runs (seeds 0 and 2), of another sweep: not resumed into this one.
    with pytest.raises(ValueError, match="other settings"):
        train(sweep_cfg(d, shard="0/2", seeds="0-2", **one))


# -----------------------------------------------------------------------------
# Pooling: the shards of a sweep read as the sweep


@pytest.mark.slow
def test_pooled_shards_equal_the_sweep_trained_whole(tmp_path):
    # lr 1e-9 runs stand still, pass the convergence test at its first full window and stop; at
    # lr 3e-3 they train on. With 2 shards, shard 0 holds only the still runs and ends early,
    # so pooling must carry its frozen runs to the end as one process would.
    whole = train(sweep_cfg(tmp_path / "whole"))
    shards = train_shards(str(tmp_path / "pooled"), 2)
    ends = [len(analysis.load_run_dir(d)["hist"]["epoch"]) for d in shards]
    assert ends[0] < ends[1], f"shard 0 should end early (records {ends}); the test needs an early end"
    a, b = analysis.load_sweep(whole), analysis.load_sweep(str(tmp_path / "pooled"))
    assert a["runs"] == b["runs"], "the same runs, seeds, sizes and learning rates, in the same order"
    assert np.array_equal(a["hist"]["epoch"], b["hist"]["epoch"])
    for key in a["hist"]:
        if key in ("epoch", "wall_s"):
            continue
        if a["hist"][key].dtype.kind in "US":
            assert list(a["hist"][key]) == list(b["hist"][key]), key
        else:
            assert_close(key, b["hist"][key], a["hist"][key])
    for key in ("train_idx", "test_idx", "train_labels", "n_train"):
        assert np.array_equal(a["split"][key], b["split"][key]), key
    conv_a = grok.converged_at_end(a["hist"], a["cfg"])
    assert list(conv_a) == list(grok.converged_at_end(b["hist"], b["cfg"]))
    assert conv_a.any() and not conv_a.all(), "some runs converged and some did not"
    # The efficiency table (Fig. 3, Fig. 10): the same rows in the same order.
    ta = analysis.efficiency_table([whole], log=lambda *_: None)
    tb = analysis.efficiency_table([str(tmp_path / "pooled")], log=lambda *_: None)
    for key in ta:
        if key == "dir_name":
            continue
        if ta[key].dtype.kind in "USb" or key in ("run", "seed", "n_train", "dir"):
            assert list(ta[key]) == list(tb[key]), key
        else:
            assert_close(key, tb[key], ta[key])
    assert list(tb["dir_name"]) == ["pooled"] * len(tb["run"])


def test_a_missing_a_foreign_and_a_doubled_shard_are_refused(tmp_path):
    base = str(tmp_path / "s")
    shards = train_shards(base, 3, epochs=10)
    assert analysis.load_sweep(base)["n_runs"] == 8
    keep = tmp_path / "kept"
    shutil.move(shards[1], keep)
    with pytest.raises(analysis.ShardsIncomplete, match=r"shard\(s\) 1/3 missing"):
        analysis.load_sweep(base)
    # A shard of another sweep (another weight decay) under this sweep's name.
    train(sweep_cfg(shards[1], shard="1/3", epochs=10, wd="2"))
    with pytest.raises(ValueError, match="another sweep"):
        analysis.load_sweep(base)
    shutil.rmtree(shards[1])
    shutil.move(keep, shards[1])
    os.remove(os.path.join(shards[2], "params.pt"))  # unfinished
    with pytest.raises(analysis.ShardsIncomplete, match="has not finished"):
        analysis.load_sweep(base)
    shutil.rmtree(shards[2])
    shutil.copytree(shards[0], base + ".shard-0-of-3.copy")  # shard 0 twice
    with pytest.raises(ValueError, match="both shard 0/3"):
        analysis.load_sweep(base)
    shutil.rmtree(base + ".shard-0-of-3.copy")
    os.makedirs(base)  # the sweep whole beside its shards
    with pytest.raises(ValueError, match="both exist"):
        analysis.load_sweep(base)


# -----------------------------------------------------------------------------
# SHARD=K/N ./reproduce.sh tiny, three shards in turn, then pooled by the report stage


def repro(out, *args, **env):
    """Run reproduce.sh with this interpreter; return (exit code, stdout + stderr)."""
    r = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), *args], capture_output=True, text=True,
                       env=dict(repro_env(out), **env))
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def tiny_sharded(tiny_sharded_pipeline, tiny_pipeline):
    """The tiny profile trained as 3 shards and pooled, and the same profile trained whole (conftest.py)."""
    out, code, log = tiny_sharded_pipeline
    assert code == 0, log
    whole, code, log_whole = tiny_pipeline
    assert code == 0, log_whole
    return out, whole, log


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def comparable(text):
    """results.md without its stage times and blank lines, and its numbers apart: (words, numbers)."""
    text = "\n".join(line for line in text.splitlines() if line.strip() and not line.startswith("Stage times"))
    return NUMBER.sub("#", text), [float(x) for x in NUMBER.findall(text)]


@pytest.mark.slow
def test_the_tiny_profile_in_three_shards_pools_to_the_unsharded_one(tiny_sharded):
    out, whole, log = tiny_sharded
    for name in report.SWEEPS:
        path = report.path_of(out, name)
        assert analysis.shard_dirs(path), f"{name} was not trained in shards; log:\n{log}"
        a, b = analysis.load_sweep(report.path_of(whole, name)), analysis.load_sweep(path)
        assert a["runs"] == b["runs"], f"{name}: the same seeds, sizes and weight decays in the same order"
        for key in ("test_acc", "train_loss", "param_norm"):
            assert_close(f"{name} {key}", b["hist"][key], a["hist"][key])
    # results.md: the same text and verdicts, its numbers equal to 3 significant figures, as printed.
    wa, na = comparable(open(os.path.join(whole, "results.md")).read())
    wb, nb = comparable(open(os.path.join(out, "results.md")).read())
    assert wa == wb, "\n".join(x for x in __import__("difflib").unified_diff(wa.splitlines(), wb.splitlines(),
                                                                           lineterm=""))
    assert len(na) == len(nb) and np.allclose(nb, na, rtol=1e-3, atol=1e-3), \
        f"max difference {np.max(np.abs(np.subtract(nb, na)))}"
    assert "Stage times of shard-2-of-3" in open(os.path.join(out, "results.md")).read()


@pytest.mark.slow
def test_report_names_a_missing_shard_and_refuses_a_foreign_one(tiny_sharded, tmp_path, capsys):
    out, _, _ = tiny_sharded
    copy = tmp_path / "sharded"
    shutil.copytree(out, copy)
    missing = report.path_of(str(copy), "ungrok") + ".shard-1-of-3"
    shutil.move(missing, tmp_path / "aside")
    with pytest.raises(SystemExit) as e:
        report.main([str(copy), "--profile", "tiny"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "1/3 missing" in err, err
    text = (copy / "results.md").read_text()
    assert "**Incomplete:**" in text and "Incomplete: " in text.split("## P2 and P3")[1]
    assert "### P2" not in text, "no verdict from part of a sweep"
    code, log = repro(copy, "tiny", "report")
    assert code != 0 and "1/3 missing" in log
    # A shard of another sweep (the Fig. 8 task's) in its place.
    shutil.copytree(report.path_of(str(copy), "ungrok8") + ".shard-1-of-3", missing)
    with pytest.raises(SystemExit) as e:
        report.main([str(copy), "--profile", "tiny"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "another sweep" in err, err


def test_reproduce_sh_refuses_bad_shards_and_mixing(tmp_path):
    for spec in ("3/2", "0/0", "a/b"):
        code, log = repro(tmp_path / "o", "tiny", "fig2", SHARD=spec)
        assert code == 2 and log.count("\n") == 1 and "not a shard" in log, log
    code, log = repro(tmp_path / "o", "tiny", "report", SHARD="0/2")
    assert code == 2 and "without SHARD" in log, log
    code, log = repro(tmp_path / "o", "tiny", "fig4", SHARD="0/2")  # no sources yet
    assert code != 0 and "reproduce.sh tiny sources" in log, log
    os.makedirs(tmp_path / "o" / "runs" / "ungrok.shard-0-of-2")
    code, log = repro(tmp_path / "o", "tiny", "fig5")  # unsharded training beside shards
    assert code == 2 and "trained in shards" in log, log

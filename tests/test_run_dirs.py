"""Run directories that cannot be corrupted: what a killed, crowded, full or broken run directory does.

Each test damages a run in one way (a full disk, a second writer, a deleted or truncated file, a
diverging run, a bad flag) and checks three things: one line on stderr (or one ValueError line),
a non-zero exit code, and a directory that the corrected command can still use.

Run: python -m pytest -q tests/test_run_dirs.py
"""
import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import grok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(d_model=32, n_heads=4, d_head=8, d_mlp=64)


def small_cfg(out, **kw):
    """A tiny, fast configuration (p=11)."""
    base = dict(task="add", p=11, train="40", seeds="0", epochs=30, log_every=10, log_points=5,
                print_every=10**6, ckpt_every=10, out=str(out), device="cpu", **SMALL)
    base.update(kw)
    return grok.Config(**base)


def cli(*args, timeout=120):
    """grok.py on the command line: (exit code, stdout, stderr)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "grok.py"), *args], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT)
    return r.returncode, r.stdout, r.stderr


def small_flags(out, *extra):
    """The command-line flags of small_cfg."""
    return ["--p", "11", "--train", "40", "--epochs", "30", "--log-every", "10", "--log-points", "5",
            "--ckpt-every", "10", "--d-model", "32", "--d-head", "8", "--d-mlp", "64", "--device", "cpu",
            "--out", str(out), *extra]


def leftovers(out):
    """Temporary files left in a directory tree."""
    return [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if ".tmp" in f]


# -----------------------------------------------------------------------------
# 1. A full disk: the write fails loudly, leaves no temporary file and no empty file behind


def failing_fsync(after):
    """An os.fsync that fails with "no space left" from its (after+1)-th call on."""
    real, calls = os.fsync, {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    return fsync


def test_disk_full_on_a_fresh_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(grok.os, "fsync", failing_fsync(0))  # the very first write (config.json) fails
    with pytest.raises(OSError) as e:
        grok.train(small_cfg(tmp_path / "run"))
    msg = str(e.value.strerror)
    assert "could not write" in msg and "config.json" in msg and "No space left" in msg and "\n" not in msg, msg
    assert not (tmp_path / "run" / "config.json").exists() and not leftovers(tmp_path / "run")
    monkeypatch.undo()
    grok.train(small_cfg(tmp_path / "run"))  # the corrected situation: the same command works
    assert (tmp_path / "run" / "params.pt").exists()


def test_disk_full_mid_run_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    grok.train(small_cfg(tmp_path / "whole"))
    # config.json, train_idx.npz, then checkpoint.pt and history.npz at epoch 10: fail at epoch 20's checkpoint.
    monkeypatch.setattr(grok.os, "fsync", failing_fsync(4))
    with pytest.raises(OSError, match="checkpoint.pt"):
        grok.train(small_cfg(tmp_path / "run"))
    assert torch.load(tmp_path / "run" / "checkpoint.pt")["epoch"] == 10 and not leftovers(tmp_path / "run")
    monkeypatch.undo()
    grok.train(small_cfg(tmp_path / "run"))  # resumes from epoch 10
    a, b = torch.load(tmp_path / "whole" / "params.pt"), torch.load(tmp_path / "run" / "params.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"


def test_disk_full_is_one_line_on_the_command_line(tmp_path):
    # grok.main in a child process whose fsync fails as on a full disk, after the first two writes.
    code = ("import errno, os, sys; sys.path.insert(0, %r); import grok; real = os.fsync; n = [0]\n"
            "def fsync(fd):\n    n[0] += 1\n    if n[0] > 2: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "    return real(fd)\n"
            "grok.os.fsync = fsync; grok.main(sys.argv[1:])") % ROOT
    r = subprocess.run([sys.executable, "-c", code, *small_flags(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: could not write") and "No space left" in r.stderr \
        and r.stderr.count("\n") == 1, r.stderr
    assert not leftovers(tmp_path / "run")
    code, _, err = cli(*small_flags(tmp_path / "run"))  # space again: the same command finishes
    assert code == 0 and (tmp_path / "run" / "params.pt").exists(), err


# -----------------------------------------------------------------------------
# 2. Two processes on one --out: the second is refused and names the first


def test_second_writer_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "grok.py"),
                              *small_flags(out, "--epochs", "100000", "--ckpt-every", "1000")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "train_idx.npz").exists():
            time.sleep(0.2)
        code, _, err = cli(*small_flags(out, "--seeds", "1", "--wd", "0.5"))
        assert code == 2 and f"is being written by process {first.pid}" in err and err.count("\n") == 1, err
        assert json.load(open(out / "config.json"))["runs"]["seed"] == [0], "the second writer changed config.json"
    finally:
        first.kill()
        first.wait()
    # The first writer was killed: its lock died with it; the next writer says so and goes on.
    fd = grok.lock_run_dir(str(out))
    grok.unlock_run_dir(str(out), fd)


def test_dead_writer_is_reported(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("process 999999 on elsewhere")  # a writer that was killed: no kernel lock remains
    grok.unlock_run_dir(str(out), grok.lock_run_dir(str(out)))
    note = capsys.readouterr().out
    assert "the last writer of" in note and "process 999999 on elsewhere" in note, note
    grok.train(small_cfg(out, epochs=3))
    assert (out / "params.pt").exists()


def test_lock_is_released_when_a_run_ends(tmp_path):
    grok.train(small_cfg(tmp_path / "run", epochs=5))
    grok.train(small_cfg(tmp_path / "run", epochs=5))  # the same process again: not refused by its own old lock
    assert open(tmp_path / "run" / ".lock").read() == "", "a clean end leaves the lock file empty"


# -----------------------------------------------------------------------------
# 3. A deleted config.json does not let another config resume a foreign checkpoint


def killed_at(cfg, epoch, monkeypatch):
    """Run cfg until its training step `epoch`, then fail as if killed."""
    real, calls = grok.train_step, {"n": 0}

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] > epoch:
            raise KeyboardInterrupt("killed")
        return real(*args, **kw)
    monkeypatch.setattr(grok, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        grok.train(cfg)
    monkeypatch.setattr(grok, "train_step", real)


def test_deleted_config_json_and_another_config_is_refused(tmp_path, monkeypatch):
    killed_at(small_cfg(tmp_path / "run"), 15, monkeypatch)
    os.remove(tmp_path / "run" / "config.json")
    with pytest.raises(ValueError, match="unknown or other settings and no config.json"):
        grok.train(small_cfg(tmp_path / "run", seeds="1", wd="0.5"))
    assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "params.pt").exists()
    # The run's own command finds its settings in the checkpoint and finishes, bit-identical.
    grok.train(small_cfg(tmp_path / "run"))
    grok.train(small_cfg(tmp_path / "whole"))
    a, b = torch.load(tmp_path / "whole" / "params.pt"), torch.load(tmp_path / "run" / "params.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_other_settings_under_a_matching_config_is_refused(tmp_path, monkeypatch):
    killed_at(small_cfg(tmp_path / "a"), 15, monkeypatch)
    killed_at(small_cfg(tmp_path / "b", seeds="1"), 15, monkeypatch)
    os.replace(tmp_path / "b" / "checkpoint.pt", tmp_path / "a" / "checkpoint.pt")  # a foreign checkpoint
    with pytest.raises(ValueError, match="written with other settings"):
        grok.train(small_cfg(tmp_path / "a"))


# -----------------------------------------------------------------------------
# 4. Validation before anything is written


@pytest.mark.parametrize("kw, message", [
    (dict(seeds="-3"), "--seeds must be >= 0"),
    (dict(init_from="/nonexistent/run"), "no params.pt there"),
    (dict(lr="nan"), "learning rates finite"),
    (dict(wd="inf"), "weight decays must be finite"),
    (dict(eps=float("nan")), "AdamW needs"),
    (dict(train=""), "--train has an empty entry"),
    (dict(train="1e-1"), "not a whole count"),
    (dict(task="s5_mul", p=7), "--p does not apply to s5_mul"),
    (dict(p=100003), "GiB available"),
    (dict(converge_levels="0.5,1"), "each level must lie strictly between 0 and 1"),
    (dict(converge_levels="0.5,x"), "--converge-levels '0.5,x' is not a comma list of floats"),
])
def test_bad_config_writes_nothing(tmp_path, kw, message):
    with pytest.raises(ValueError) as e:
        grok.train(small_cfg(tmp_path / "run", **kw))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists(), "a refused command created the run directory"
    grok.train(small_cfg(tmp_path / "run", epochs=3))  # the corrected command is not refused


def test_train_1e3_is_a_count():
    assert grok.train_size("1e3", 12769) == 1000 and grok.train_size("0.1", 100) == 10


def test_out_that_is_a_file_or_empty(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a directory"), ("", "--out is empty")):
        code, _, err = cli(*small_flags(out))
        assert code == 2 and message in err and err.count("\n") == 1, err


# -----------------------------------------------------------------------------
# 5. Damaged files: one line naming the file and what to do


def truncate(path, keep=0.5):
    """Cut a file to a fraction of its length, as a crash in the middle of a copy would."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])


@pytest.mark.parametrize("name", ["config.json", "checkpoint.pt"])
def test_truncated_run_file_is_one_line(tmp_path, monkeypatch, name):
    killed_at(small_cfg(tmp_path / "run"), 15, monkeypatch)
    truncate(tmp_path / "run" / name)
    code, _, err = cli(*small_flags(tmp_path / "run"))
    assert code == 2 and err.startswith(f"error: {tmp_path / 'run' / name} is damaged") and err.count("\n") == 1, err


def test_truncated_init_source_is_one_line(tmp_path):
    grok.train(small_cfg(tmp_path / "src", train="1.0", epochs=3))
    truncate(tmp_path / "src" / "params.pt")
    with pytest.raises(ValueError) as e:
        grok.train(small_cfg(tmp_path / "run", init_from=str(tmp_path / "src")))
    assert "params.pt is damaged" in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


def test_non_finite_init_source_is_refused(tmp_path):
    grok.train(small_cfg(tmp_path / "src", seeds="0,1", epochs=5))
    params = torch.load(tmp_path / "src" / "params.pt")
    params["W_U"][1, 0, 0] = float("nan")
    torch.save(params, tmp_path / "src" / "params.pt")
    with pytest.raises(ValueError, match="W_U has non-finite values"):
        grok.train(small_cfg(tmp_path / "dst", seeds="0,1", init_from=str(tmp_path / "src")))
    assert not (tmp_path / "dst").exists()


# -----------------------------------------------------------------------------
# 6. Divergence: frozen per run at its last finite state, never "finished" with a NaN


def test_divergence_at_the_last_epoch(tmp_path):
    # At lr 100 this small model's loss is first non-finite at epoch 3: the last epoch, which is never stepped.
    out = tmp_path / "run"
    code, _, err = cli(*small_flags(out, "--epochs", "3", "--lr", "100"))
    assert code == 3 and "1 of 1 run(s)" in err and "diverged" in err and err.count("\n") == 1, err
    h = np.load(out / "history.npz")
    assert h["stop_epoch"][0] == 0 and str(h["stop_reason"][0]).startswith("diverged")
    params = torch.load(out / "params.pt")
    assert all(torch.isfinite(v).all() for v in params.values()), "a finished run holds non-finite parameters"
    assert "non-finite loss at epoch 3" in str(h["stop_reason"][0]), h["stop_reason"]
    code, _, err = cli(*small_flags(out, "--epochs", "3", "--lr", "100"))  # asked again: the same answer, no work
    assert code == 3 and "diverged" in err


def test_one_diverging_run_in_a_batch_leaves_the_others_alone(tmp_path):
    # Run 1 (lr 100) diverges by epoch 3; run 0 (lr 1e-3) must train exactly as it would alone.
    with pytest.raises(grok.RunsDiverged, match="1 of 2 run"):
        grok.train(small_cfg(tmp_path / "batch", lr="1e-3,100", epochs=30))
    grok.train(small_cfg(tmp_path / "alone", lr="1e-3", epochs=30))
    batch, alone = torch.load(tmp_path / "batch" / "params.pt"), torch.load(tmp_path / "alone" / "params.pt")
    err = max((batch[k][0] - alone[k][0]).abs().max().item() for k in alone)
    assert err < 1e-5, f"the healthy run differs from itself alone by {err:.2e}"
    h = np.load(tmp_path / "batch" / "history.npz")
    assert h["stop_epoch"].tolist()[0] == -1 and h["stop_epoch"].tolist()[1] in (0, 10, 20)
    assert np.isfinite(h["test_loss"][0]).all() and all(torch.isfinite(v[1]).all() for v in batch.values())
    frozen = torch.load(tmp_path / "batch" / "checkpoint.pt")["params"]
    assert all(torch.equal(frozen[k][1], batch[k][1]) for k in batch)


# -----------------------------------------------------------------------------
# analysis.py reads the same files: a damaged one is one line naming it


@pytest.mark.parametrize("name", ["history.npz", "train_idx.npz", "params.pt", "snapshots/epoch_00000030.pt",
                                  "config.json"])
def test_analysis_names_a_damaged_file(tmp_path, name):
    grok.train(small_cfg(tmp_path / "run", train="60", snapshots=3))
    truncate(tmp_path / "run" / name)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "analysis.py"), str(tmp_path / "run"), "--out",
                        str(tmp_path / "a")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith(f"error: {tmp_path / 'run' / name} is damaged") \
        and r.stderr.count("\n") == 1, r.stderr


def test_analysis_refuses_a_directory_whose_runs_all_diverged(tmp_path):
    with pytest.raises(grok.RunsDiverged):
        grok.train(small_cfg(tmp_path / "run", epochs=3, lr="100"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "analysis.py"), str(tmp_path / "run"), "--final-only",
                        "--out", str(tmp_path / "a")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "every run diverged" in r.stderr and r.stderr.count("\n") == 1, r.stderr

"""Run directories that cannot be corrupted: what a killed, crowded, full or broken run directory does.

Each test damages a run in one way (a full disk, a second writer, a deleted or truncated file, a
diverging run, a bad flag) and checks three things: one line on stderr (or one ValueError line),
a non-zero exit code, and a directory that the corrected command can still use.

Run: python -m pytest -q tests/test_run_dirs.py
"""
import errno
import json
import os
import shutil
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


def background_writer(out, ckpt_every, until):
    """A long grok.py run on out in another process, returned once out/until exists."""
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "grok.py"),
                              *small_flags(out, "--epochs", "100000", "--ckpt-every", str(ckpt_every))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / until).exists():
        time.sleep(0.1)
    return first


def test_second_writer_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "run"
    first = background_writer(out, 1000, "train_idx.npz")
    try:
        code, _, err = cli(*small_flags(out, "--seeds", "1", "--wd", "0.5"))
        assert code == 2 and f"is being written by process {first.pid}" in err and err.count("\n") == 1, err
        assert json.load(open(out / "config.json"))["runs"]["seed"] == [0], "the second writer changed config.json"
    finally:
        first.kill()
        first.wait()
    # The first writer was killed: its lock died with it; the next writer says so and goes on.
    grok.unlock_run_dir(grok.lock_run_dir(str(out)))


def test_dead_writer_is_reported(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("process 999999 on elsewhere")  # a writer that was killed: no kernel lock remains
    grok.unlock_run_dir(grok.lock_run_dir(str(out)))
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
    (dict(wd_budget=-1.0), "--wd-budget must be a finite number >= 0"),
    (dict(wd_budget=float("inf")), "--wd-budget must be a finite number >= 0"),
])
def test_bad_config_writes_nothing(tmp_path, kw, message):
    with pytest.raises(ValueError) as e:
        grok.train(small_cfg(tmp_path / "run", **kw))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists(), "a refused command created the run directory"
    grok.train(small_cfg(tmp_path / "run", epochs=3))  # the corrected command is not refused


def test_train_1e3_is_a_count():
    assert grok.train_size("1e3", 12769) == 1000 and grok.train_size("0.1", 100) == 10


def test_out_that_is_a_file_or_empty(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a directory"), ("", "--out is empty")):
        code, err = main_err(small_flags(out), capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err


# -----------------------------------------------------------------------------
# 5. Damaged files: one line naming the file and what to do


def truncate(path, keep=0.5):
    """Cut a file to a fraction of its length, as a crash in the middle of a copy would."""
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])


@pytest.mark.parametrize("name", ["config.json", "checkpoint.pt"])
def test_truncated_run_file_is_one_line(tmp_path, monkeypatch, capsys, name):
    killed_at(small_cfg(tmp_path / "run"), 15, monkeypatch)
    truncate(tmp_path / "run" / name)
    code, err = main_err(small_flags(tmp_path / "run"), capsys)
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


def test_divergence_at_the_last_epoch(tmp_path, capsys):
    # At lr 100 this small model's loss is first non-finite at epoch 3: the last epoch, which is never stepped.
    out = tmp_path / "run"
    code, err = main_err(small_flags(out, "--epochs", "3", "--lr", "100"), capsys)
    assert code == 3 and "1 of 1 run(s)" in err and "diverged" in err and err.count("\n") == 1, err
    h = np.load(out / "history.npz")
    assert h["stop_epoch"][0] == 0 and str(h["stop_reason"][0]).startswith("diverged")
    params = torch.load(out / "params.pt")
    assert all(torch.isfinite(v).all() for v in params.values()), "a finished run holds non-finite parameters"
    assert "non-finite loss at epoch 3" in str(h["stop_reason"][0]), h["stop_reason"]
    code, err = main_err(small_flags(out, "--epochs", "3", "--lr", "100"), capsys)  # asked again: the same answer, no work
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
def test_analysis_names_a_damaged_file(tmp_path, name, capsys):
    grok.train(small_cfg(tmp_path / "run", train="60", snapshots=3))
    truncate(tmp_path / "run" / name)
    code, err = analysis_err([str(tmp_path / "run"), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'run' / name} is damaged") and err.count("\n") == 1, err


def test_analysis_refuses_a_directory_whose_runs_all_diverged(tmp_path, capsys):
    with pytest.raises(grok.RunsDiverged):
        grok.train(small_cfg(tmp_path / "run", epochs=3, lr="100"))
    code, err = analysis_err([str(tmp_path / "run"), "--final-only", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "every run diverged" in err and err.count("\n") == 1, err


# -----------------------------------------------------------------------------
# 7. A directory that moves under a writer, a source that changes as a run starts, a full disk in
# torch's writer, damaged or foreign files, interrupts and bad values: each refused in one line,
# with a directory the corrected command can use


def main_err(argv, capsys):
    """grok.main in this process, expected to fail: (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        grok.main(argv)
    return e.value.code, capsys.readouterr().err


def same_params(a, b):
    """Whether two params.pt files hold bit-identical parameters."""
    a, b = torch.load(a), torch.load(b)
    return all(torch.equal(a[k], b[k]) for k in a)


def remove_under_writer(path):
    """Delete a directory another process is still writing into (its temporary files come and go)."""
    for _ in range(100):  # rmtree lists, then unlinks: a file the writer renamed away in between is gone
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
    raise AssertionError(f"{path} could not be removed while its writer ran")


def test_deleted_running_directory_never_mixes_two_runs(tmp_path):
    out = tmp_path / "run"
    first = background_writer(out, 200, "checkpoint.pt")
    try:
        remove_under_writer(out)
        grok.train(small_cfg(out, wd="0.3"))  # a second run takes the path while the first still trains
        _, err = first.communicate(timeout=60)  # the first stops at its next write
    finally:
        first.kill()
        first.wait()
    # Stopped at its next write: named (exit 2), or, if the path was taken between that check and
    # the write, its write into the deleted directory fails (exit 1). Never a write into the new run.
    assert (first.returncode == 2 and "was deleted or replaced while this process was writing it" in err
            or first.returncode == 1 and "No such file" in err) and err.count("\n") == 1, err
    grok.train(small_cfg(tmp_path / "alone", wd="0.3"))
    assert json.load(open(out / "config.json"))["runs"]["wd"] == [0.3]
    assert same_params(out / "params.pt", tmp_path / "alone" / "params.pt"), "the two runs were mixed"
    assert np.load(out / "history.npz")["epoch"].tolist() == np.load(tmp_path / "alone" / "history.npz")["epoch"].tolist()


def test_init_source_is_hashed_and_loaded_from_one_read(tmp_path, monkeypatch):
    import hashlib
    grok.train(small_cfg(tmp_path / "A", train="1.0", epochs=5))
    grok.train(small_cfg(tmp_path / "B", train="1.0", epochs=5, seeds="1"))
    shutil.copytree(tmp_path / "A", tmp_path / "src")
    real = grok.read_source

    def read_then_replace(init_from):  # the source replaced by another network right after it was read
        data = real(init_from)
        shutil.copy(tmp_path / "B" / "params.pt", tmp_path / "src" / "params.pt")
        return data
    monkeypatch.setattr(grok, "read_source", read_then_replace)
    grok.train(small_cfg(tmp_path / "run", init_from=str(tmp_path / "src"), snapshots=2, epochs=4))
    a = open(tmp_path / "A" / "params.pt", "rb").read()
    assert json.load(open(tmp_path / "run" / "config.json"))["init_sha256"] == hashlib.sha256(a).hexdigest()
    start, want = torch.load(tmp_path / "run" / "snapshots" / "epoch_00000000.pt"), torch.load(tmp_path / "A" / "params.pt")
    assert all(torch.equal(start[k], want[k]) for k in want), "the run started from another network than it records"


def unshare_script(script):
    """Run a shell script as root in its own mount namespace (tmpfs mounts vanish with it); None if not allowed."""
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        return None
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_full_disk_inside_torch_save_on_a_real_small_filesystem(tmp_path):
    # A 300 kB tmpfs: the checkpoint (about 120 kB, with its temporary copy beside the old one) fills
    # it inside torch.save. Then the same filesystem with room again: the same command finishes.
    # Also analysis.py, toy_sim.py and report.py writing to a full disk, and grok.py on a read-only
    # mount and on a disk too full for the lock file.
    F, py = tmp_path / "F", sys.executable
    F.mkdir()
    flags = " ".join(small_flags(F / "r", "--p", "23", "--train", "100", "--epochs", "200", "--ckpt-every", "50"))
    script = f"""
mount -t tmpfs -o size=300k tmpfs {F}
{py} grok.py {flags} >/dev/null 2>{tmp_path}/e1; echo "grok $?"
echo "tmp $(find {F} -name '*.tmp*' | wc -l)"
mount -o remount,size=20m {F}
{py} grok.py {flags} >/dev/null 2>{tmp_path}/e2; echo "again $?"
test -f {F}/r/params.pt && echo finished
{py} -c "import numpy; e = numpy.load('{F}/r/history.npz')['epoch'].tolist(); print('records', len(e), len(set(e)))"
dd if=/dev/zero of={F}/fill bs=4k count=100000 2>/dev/null
{py} analysis.py {F}/r --final-only --out {F}/a >/dev/null 2>{tmp_path}/e3; echo "analysis $?"
{py} toy_sim.py --steps 2000 --out {F}/toy.png --csv >/dev/null 2>{tmp_path}/e4; echo "toy $?"
echo "toy_tmp $(find {F} -name '*.tmp*' | wc -l)"
umount {F}; mount -t tmpfs -o size=64k,nr_inodes=2 tmpfs {F}
{py} grok.py {" ".join(small_flags(F / "s"))} >/dev/null 2>{tmp_path}/e5; echo "lock $?"
umount {F}; mount -t tmpfs -o ro tmpfs {F}
{py} grok.py {" ".join(small_flags(F / "s"))} >/dev/null 2>{tmp_path}/e6; echo "ro $?"
"""
    r = unshare_script(script)
    if r is None:
        pytest.skip("no unprivileged mount namespace here (unshare -rm): no real small filesystem to fill")
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    err = {i: (tmp_path / f"e{i}").read_text() for i in range(1, 7)}
    assert got.get("grok") == "1" and err[1].startswith("error: could not write") and "No space left" in err[1] \
        and err[1].count("\n") == 1, (r.stdout, r.stderr, err[1])
    assert got.get("tmp") == "0" and got.get("again") == "0" and "finished" in r.stdout, (r.stdout, err[2])
    n, distinct = got["records"].split()
    assert n == distinct, f"history.npz repeats a record: {got['records']}"
    for i, name in ((3, "analysis"), (4, "toy")):
        assert got.get(name) == "1" and err[i].startswith("error: could not write") and err[i].count("\n") == 1, \
            (name, r.stdout, err[i])
    assert got.get("toy_tmp") == "0", "toy_sim.py left a temporary file on the full disk"
    assert got.get("lock") == "1" and str(F / "s") in err[5] and err[5].count("\n") == 1, (r.stdout, err[5])
    assert got.get("ro") == "2" and str(F / "s") in err[6] and err[6].count("\n") == 1, (r.stdout, err[6])


def test_finished_directory_with_a_damaged_params_file_is_not_finished(tmp_path, capsys):
    out = tmp_path / "run"
    grok.train(small_cfg(out))
    truncate(out / "params.pt")
    code, err = main_err(small_flags(out), capsys)
    assert code == 2 and f"{out / 'params.pt'} is damaged" in err and "delete it and run the same command again" in err \
        and err.count("\n") == 1, err
    os.remove(out / "params.pt")  # as it says: the run finishes again from its final checkpoint
    grok.train(small_cfg(out))
    grok.train(small_cfg(tmp_path / "whole"))
    assert same_params(out / "params.pt", tmp_path / "whole" / "params.pt")
    e, whole = np.load(out / "history.npz")["epoch"].tolist(), np.load(tmp_path / "whole" / "history.npz")["epoch"].tolist()
    assert e == whole, f"the resumed end recorded {e[-3:]} against {whole[-3:]}"


@pytest.mark.parametrize("setup", ["foreign file", "run files without config", "foreign snapshot"])
def test_a_directory_that_is_not_a_run_directory_is_refused(tmp_path, capsys, setup):
    out = tmp_path / "dir"
    if setup == "foreign file":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        grok.train(small_cfg(out, snapshots=3))
        if setup == "run files without config":
            for f in ("config.json", "checkpoint.pt", "params.pt"):
                os.remove(out / f)
        else:
            (out / "snapshots" / "README").write_text("mine")
    before = {f: open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(out) for f in fs}
    code, err = main_err(small_flags(out, "--wd", "0.5"), capsys)
    assert code == 2 and str(out) in err and err.count("\n") == 1, err
    after = {f: open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(out) for f in fs}
    assert before == after, "a refused command changed the directory"
    with pytest.raises(ValueError, match="not a grok.py run's"):
        grok.check_run_dir_contents("/")  # --out / holds a system's files: refused before any write
    grok.train(small_cfg(tmp_path / "new", wd="0.5"))  # the corrected command: a new directory


def test_stale_temporary_files_are_removed_by_the_next_writer(tmp_path, monkeypatch):
    out = tmp_path / "run"
    killed_at(small_cfg(out, snapshots=3), 15, monkeypatch)
    (out / "checkpoint.pt.tmp12345").write_bytes(b"x" * 1000)  # as a SIGKILL during a write leaves them
    (out / "snapshots" / "epoch_00000030.pt.tmp999").write_bytes(b"x")
    grok.train(small_cfg(out, snapshots=3))
    assert not leftovers(out) and (out / "params.pt").exists(), leftovers(out)


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path):
    import signal
    out = tmp_path / "run"
    flags = small_flags(out, "--epochs", "400", "--ckpt-every", "100")
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "grok.py"), *flags], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert p.returncode == 130 and "interrupted; run the same command again to resume" in err \
        and err.count("\n") == 1, err
    grok.train(small_cfg(out, epochs=400, ckpt_every=100))  # the same settings resume it
    grok.train(small_cfg(tmp_path / "whole", epochs=400, ckpt_every=100))
    assert same_params(out / "params.pt", tmp_path / "whole" / "params.pt")


@pytest.mark.parametrize("kw, message", [
    (dict(threads=-1), "--threads must be >= 0"),
    (dict(seeds="0,5-3"), "range '5-3' runs downwards"),
    (dict(seeds="0,0"), "--seeds names 0 more than once"),
    (dict(train="40,40"), "--train names 40 more than once"),
    (dict(d_model=10 ** 9), "GiB available"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, kw, message):
    with pytest.raises(ValueError) as e:
        grok.train(small_cfg(tmp_path / "run", **kw))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


def test_memory_check_counts_the_parameters(monkeypatch):
    # 2000 runs of a wide model: one copy of the parameters is about 4.4 GB, which the estimate
    # must see (it used to count only the data and the activations: 21 MB).
    cfg = grok.Config(p=11, train="10", seeds="0-1999", d_model=1024, d_mlp=8, device="cpu", out="unused")
    dims = dict(d_vocab=13, n_ctx=4, n_out=11, d_model=1024, n_heads=4, d_head=32, d_mlp=8)
    brute = sum(t.numel() for t in grok.init_params(dims, 0).values())
    assert grok.param_count(dims) == brute, (grok.param_count(dims), brute)
    monkeypatch.setattr(grok, "available_memory", lambda: 8 * 2 ** 30)
    with pytest.raises(ValueError, match="parameters a run"):
        grok.sweep_data(cfg)


def test_init_from_a_network_of_another_task_is_refused(tmp_path):
    grok.train(small_cfg(tmp_path / "div", task="div", train="1.0", epochs=3))
    with pytest.raises(ValueError) as e:
        grok.train(small_cfg(tmp_path / "run", init_from=str(tmp_path / "div")))
    assert "is a network for div" in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["{}", "[]", '{"config": 5}'])
def test_config_json_of_the_wrong_shape_is_one_line(tmp_path, capsys, text):
    out = tmp_path / "run"
    grok.train(small_cfg(out))
    (out / "config.json").write_text(text)
    code, err = main_err(small_flags(out), capsys)
    assert code == 2 and "is not a grok.py config.json" in err and err.count("\n") == 1, err
    code, err = analysis_err([str(out), "--final-only", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "is not a grok.py config.json" in err and err.count("\n") == 1, err


def test_path_errors_name_the_path(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "sub", tmp_path / ("n" * 300)):
        code, err = main_err(small_flags(out), capsys)
        assert code == 2 and str(out)[:60] in err and err.count("\n") == 1, err


# -----------------------------------------------------------------------------
# analysis.py and report.py: foreign, missing or malformed inputs, one line each


def analysis_err(argv, capsys):
    """analysis.main in this process, expected to fail: (exit code, stderr)."""
    import analysis
    with pytest.raises(SystemExit) as e:
        analysis.main(argv)
    return e.value.code, capsys.readouterr().err


def test_analysis_refuses_a_foreign_split(tmp_path, capsys):
    grok.train(small_cfg(tmp_path / "a", train="60"))
    grok.train(small_cfg(tmp_path / "b", train="60", seeds="1"))
    shutil.copy(tmp_path / "a" / "train_idx.npz", tmp_path / "keep.npz")
    shutil.copy(tmp_path / "b" / "train_idx.npz", tmp_path / "a" / "train_idx.npz")  # another seed's pairs
    code, err = analysis_err([str(tmp_path / "a"), "--final-only", "--out", str(tmp_path / "an")], capsys)
    assert code == 2 and f"{tmp_path / 'a' / 'train_idx.npz'} is not this run's split" in err and err.count("\n") == 1, err
    shutil.copy(tmp_path / "keep.npz", tmp_path / "a" / "train_idx.npz")
    import analysis
    analysis.main([str(tmp_path / "a"), "--final-only", "--out", str(tmp_path / "an")])  # its own split: analysed


def test_a_missing_snapshot_is_named_and_the_advice_works(tmp_path, capsys):
    import analysis
    out = tmp_path / "run"
    grok.train(small_cfg(out, train="60", snapshots=4))
    os.remove(out / "snapshots" / "epoch_00000003.pt")
    code, err = analysis_err([str(out), "--out", str(tmp_path / "an")], capsys)
    assert code == 2 and "lacks the snapshot(s) of epoch 3" in err and "--final-only" in err and err.count("\n") == 1, err
    analysis.main([str(out), "--final-only", "--out", str(tmp_path / "an")])  # the first way it offers
    shutil.rmtree(out)  # the second: train it again
    grok.train(small_cfg(out, train="60", snapshots=4))
    analysis.main([str(out), "--out", str(tmp_path / "an2")])
    assert len(np.load(tmp_path / "an2" / "progress.npz")["epoch"]) == len(grok.snapshot_epochs(30, 4))


def test_analysis_refuses_a_directory_given_twice(tmp_path, capsys):
    grok.train(small_cfg(tmp_path / "d", train="60"))
    code, err = analysis_err(["--efficiency", str(tmp_path / "d"), str(tmp_path / "d") + "/", "--out",
                              str(tmp_path / "e")], capsys)
    assert code == 2 and "is given more than once" in err and err.count("\n") == 1, err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("which", ["history", "progress", "efficiency"])
def test_npz_files_with_the_wrong_keys_are_one_line(tmp_path, capsys, which):
    import analysis
    import report
    out = tmp_path / "run"
    grok.train(small_cfg(out, train="60", snapshots=3))
    if which == "history":
        np.savez(out / "history.npz", epoch=np.arange(3))
        code, err = analysis_err([str(out), "--out", str(tmp_path / "an")], capsys)
        path = out / "history.npz"
    elif which == "progress":
        analysis.main([str(out), "--out", str(tmp_path / "an")])
        capsys.readouterr()
        np.savez(tmp_path / "an" / "progress.npz", runs=np.arange(1))
        code, err = analysis_err([str(out), "--out", str(tmp_path / "an"), "--replot"], capsys)
        path = tmp_path / "an" / "progress.npz"
    else:
        np.savez(tmp_path / "efficiency.npz", seed=np.arange(2))
        with pytest.raises(ValueError) as e:
            analysis.load_npz(str(tmp_path / "efficiency.npz"), analysis.EFFICIENCY_KEYS, report.RUN_AGAIN)
        code, err, path = 2, f"error: {e.value}\n", tmp_path / "efficiency.npz"
    assert code == 2 and err.startswith(f"error: {path} lacks") and err.count("\n") == 1, err


def test_analysis_toy_sim_and_report_name_an_unwritable_output(tmp_path, capsys):
    import analysis
    import report
    import toy_sim
    grok.train(small_cfg(tmp_path / "run", train="60"))
    (tmp_path / "file").write_text("x")
    code, err = analysis_err([str(tmp_path / "run"), "--final-only", "--out", str(tmp_path / "file" / "a")], capsys)
    assert code == 1 and str(tmp_path / "file") in err and err.count("\n") == 1, err
    with pytest.raises(OSError) as e:
        toy_sim.atomic_write_text("x", str(tmp_path / "file" / "toy.csv"))
    assert str(tmp_path / "file" / "toy.csv") in e.value.strerror and "\n" not in e.value.strerror
    folder = tmp_path / "out"
    (folder / "results.md").mkdir(parents=True)  # results.md cannot be written: a directory is in its place
    with pytest.raises(SystemExit) as e:
        report.main([str(folder)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "results.md" in err and err.count("\n") == 1, err


def test_a_bad_stage_times_line_names_the_file(tmp_path):
    import report
    (tmp_path / "stage_times.txt").write_text("fig2 12\nfig1a abc\n")
    with pytest.raises(ValueError) as e:
        report.read_stage_times(str(tmp_path / "stage_times.txt"))
    assert f"{tmp_path / 'stage_times.txt'} line 2" in str(e.value) and "\n" not in str(e.value), str(e.value)
    (tmp_path / "stage_times.txt").write_text("fig2 12\nfig2 14\n")
    assert report.read_stage_times(str(tmp_path / "stage_times.txt")) == {"fig2": 14}

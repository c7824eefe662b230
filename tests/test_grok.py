"""Tests for grok.py: each builds the same thing two ways and compares them.

Run: python -m pytest -q tests/test_grok.py
"""
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import grok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(d_model=32, n_heads=4, d_head=8, d_mlp=64)  # a small model keeps the suite fast


def small_cfg(out, **kw):
    """A tiny, fast configuration for tests (p=11)."""
    base = dict(task="add", p=11, train="40", seeds="0", epochs=30, log_every=10, log_points=5,
                print_every=10**6, ckpt_every=10, out=str(out), device="cpu", **SMALL)
    base.update(kw)
    return grok.Config(**base)


# -----------------------------------------------------------------------------
# Tasks: every label against a brute-force computation


def brute_force_label(task, x, y, p):
    """The label of one pair, computed the slow obvious way (the inverse by search)."""
    inv = next((k for k in range(1, p) if (k * y) % p == 1), None) if y else None
    return {"add": (x + y) % p, "sub": (x - y) % p,
            "div": (x * inv) % p if inv else None,
            "cond": ((x * inv) % p if y % 2 == 1 else (x - y) % p) if y else None,
            "sq": (x * x + y * y) % p, "quad": (x * x + x * y + y * y) % p,
            "quad_x": (x * x + x * y + y * y + x) % p, "cube": (x ** 3 + x * y) % p,
            "cube_y": (x ** 3 + x * y * y + y) % p}[task]


@pytest.mark.parametrize("task", [t for t in grok.TASKS if not t.startswith("s5")])
def test_modular_labels_brute_force(task):
    p = 7
    (x, y, z), n = grok.task_table(task, p)
    expected = {(a, b): brute_force_label(task, a, b, p) for a in range(p) for b in range(p)}
    expected = {k: v for k, v in expected.items() if v is not None}
    got = {(int(a), int(b)): int(c) for a, b, c in zip(x, y, z)}
    assert n == p and got == expected, f"{task}: {len(set(got.items()) ^ set(expected.items()))} labels differ"


@pytest.mark.parametrize("task", ["s5_mul", "s5_conj", "s5_xyx"])
def test_s5_labels_brute_force(task):
    perms = sorted(itertools.permutations(range(5)))
    mul = lambda a, b: tuple(a[b[i]] for i in range(5))  # (a*b)(i) = a(b(i))
    inv = {a: next(b for b in perms if mul(a, b) == tuple(range(5))) for a in perms}
    f = {"s5_mul": lambda a, b: mul(a, b), "s5_conj": lambda a, b: mul(mul(a, b), inv[a]),
         "s5_xyx": lambda a, b: mul(mul(a, b), a)}[task]
    (x, y, z), n = grok.task_table(task, 0)
    bad = sum(perms[c] != f(perms[a], perms[b]) for a, b, c in zip(x, y, z))
    assert n == 120 and len(x) == 120 * 120 and bad == 0, f"{bad} wrong labels"


def test_dataset_formats():
    tok, lab, d_vocab, n = grok.make_dataset("add", 5, "varma")
    assert tok.shape == (25, 4) and d_vocab == 7 and (tok[:, 1] == 5).all() and (tok[:, 3] == 6).all()
    assert ((tok[:, 0] + tok[:, 2]) % 5 == lab).all()
    tok, lab, d_vocab, n = grok.make_dataset("add", 5, "nanda")
    assert tok.shape == (25, 3) and d_vocab == 6 and (tok[:, 2] == 5).all()


def test_split_is_seeded_nested_and_disjoint():
    tr_a, te_a = grok.split_indices(100, 30, seed=3)
    tr_b, _ = grok.split_indices(100, 50, seed=3)
    assert len(np.intersect1d(tr_a, te_a)) == 0 and len(tr_a) + len(te_a) == 100
    assert set(tr_a) <= set(tr_b), "one seed must give nested subsets over D"
    assert not np.array_equal(tr_a, grok.split_indices(100, 30, seed=4)[0])


# -----------------------------------------------------------------------------
# Model: last-position-only forward against a straightforward all-positions forward


def all_positions_forward(P, tokens):
    """A plain 1-layer transformer over every position, causal mask, written independently."""
    x = P["W_E"][tokens] + P["W_pos"]  # [B, n_ctx, d_model]
    q = torch.einsum("bpd,hde->bhpe", x, P["W_Q"])
    k = torch.einsum("bpd,hde->bhpe", x, P["W_K"])
    v = torch.einsum("bpd,hde->bhpe", x, P["W_V"])
    scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(P["W_Q"].shape[-1])
    n = tokens.shape[1]
    scores = scores.masked_fill(~torch.tril(torch.ones(n, n, dtype=torch.bool)), float("-inf"))
    z = torch.einsum("bhqk,bhke->bhqe", scores.softmax(-1), v)
    x = x + torch.einsum("bhqe,hed->bqd", z, P["W_O"])
    x = x + torch.relu(x @ P["W_in"] + P["b_in"]) @ P["W_out"] + P["b_out"]
    return x @ P["W_U"]  # [B, n_ctx, n_out]


@pytest.mark.parametrize("fmt", ["varma", "nanda"])
def test_forward_matches_all_positions(fmt):
    tokens, _, d_vocab, n = grok.make_dataset("add", 13, fmt)
    dims = dict(d_vocab=d_vocab, n_ctx=tokens.shape[1], n_out=n, d_model=128, n_heads=4, d_head=32, d_mlp=512)
    runs = [grok.init_params(dims, s) for s in (0, 1)]
    for P in runs:  # non-zero biases, so that they are tested too
        P["b_in"].normal_(0, 0.1), P["b_out"].normal_(0, 0.1)
    stacked = {k: torch.stack([P[k] for P in runs]) for k in runs[0]}
    idx = torch.stack([torch.randperm(len(tokens), generator=torch.Generator().manual_seed(s))[:50] for s in (0, 1)])
    for forward in (grok.forward_last, grok.forward_last_folded):
        got = forward(stacked, tokens[idx])  # [2, 50, n_out]
        for r, P in enumerate(runs):
            want = all_positions_forward(P, tokens[idx[r]])[:, -1]
            err = (got[r] - want).abs().max().item()
            assert err < 1e-4, f"{forward.__name__}, run {r}: max |difference| {err:.2e}"


def test_gradients_match_all_positions():
    tokens, labels, d_vocab, n = grok.make_dataset("add", 7, "varma")
    dims = dict(d_vocab=d_vocab, n_ctx=4, n_out=n, **SMALL)
    P = {k: v.double().requires_grad_() for k, v in grok.init_params(dims, 5).items()}
    want = torch.autograd.grad(torch.nn.functional.cross_entropy(all_positions_forward(P, tokens)[:, -1], labels),
                               list(P.values()))
    stacked = {k: v[None] for k, v in P.items()}
    w = torch.full((1, len(labels)), 1.0 / len(labels), dtype=torch.float64)
    got = torch.autograd.grad(grok.cross_entropy(grok.forward_last(stacked, tokens[None]), labels[None], w).sum(),
                              list(P.values()))
    for name, a, b in zip(P, got, want):
        err = (a - b).abs().max().item()
        assert err < 1e-10, f"gradient of {name}: max |difference| {err:.2e}"


def test_cross_entropy_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, 9, generator=g) * 30  # large logits: float64 keeps the small losses exact
    labels = torch.randint(0, 9, (3, 20), generator=g)
    w = torch.full((3, 20), 1 / 20, dtype=torch.float64)
    want = torch.stack([torch.nn.functional.cross_entropy(logits[r].double(), labels[r]) for r in range(3)])
    err = (grok.cross_entropy(logits, labels, w) - want).abs().max().item()
    assert err < 1e-12, f"max |difference| {err:.2e}"


# -----------------------------------------------------------------------------
# AdamW against torch.optim.AdamW, with a different lr and weight decay per run


def test_adamw_matches_torch_optim():
    g = torch.Generator().manual_seed(0)
    R, lrs, wds = 3, [1e-3, 3e-3, 1e-2], [1.0, 0.3, 0.0]
    init = {"W": torch.randn(R, 5, 4, generator=g), "b": torch.randn(R, 4, generator=g)}
    ours = {k: v.clone() for k, v in init.items()}
    state = {"m": {k: torch.zeros_like(v) for k, v in init.items()},
             "v": {k: torch.zeros_like(v) for k, v in init.items()}}
    theirs = [[torch.nn.Parameter(init[k][r].clone()) for k in init] for r in range(R)]
    opts = [torch.optim.AdamW(theirs[r], lr=lrs[r], betas=(0.9, 0.98), eps=1e-8, weight_decay=wds[r])
            for r in range(R)]
    for step in range(1, 51):
        grads = {k: torch.randn(v.shape, generator=g) * 10 ** (step % 3 - 1) for k, v in init.items()}
        grok.adamw_step(ours, grads, state, step, torch.tensor(lrs), torch.tensor(wds), 0.9, 0.98, 1e-8)
        for r in range(R):
            for p, k in zip(theirs[r], init):
                p.grad = grads[k][r].clone()
            opts[r].step()
    err = max((ours[k][r] - theirs[r][i].detach()).abs().max().item() for r in range(R) for i, k in enumerate(init))
    assert err < 1e-6, f"max |difference| after 50 steps: {err:.2e}"


# -----------------------------------------------------------------------------
# Batched runs = the same runs trained one by one


def test_batched_runs_equal_single_runs(tmp_path):
    batch = small_cfg(tmp_path / "batch", seeds="0,1", train="40,70", wd="0.5,1.0", lr="1e-3,3e-3", epochs=40)
    grok.train(batch)
    cfg_all = json.load(open(tmp_path / "batch" / "config.json"))
    hist = np.load(tmp_path / "batch" / "history.npz")
    final = torch.load(tmp_path / "batch" / "params.pt")
    R = len(cfg_all["runs"]["seed"])
    assert R == 16
    for r in range(R):
        s, d, w, l = (cfg_all["runs"][k][r] for k in ("seed", "n_train", "wd", "lr"))
        out = tmp_path / f"single{r}"
        grok.train(small_cfg(out, seeds=str(s), train=str(d), wd=str(w), lr=str(l), epochs=40))
        h1 = np.load(out / "history.npz")
        p1 = torch.load(out / "params.pt")
        err_p = max((final[k][r] - p1[k][0]).abs().max().item() for k in p1)
        err_h = max(np.abs(hist[k][r] - h1[k][0]).max() for k in ("train_loss", "test_loss", "param_norm"))
        assert err_p < 1e-4 and err_h < 1e-4, f"run {r}: params differ by {err_p:.2e}, history by {err_h:.2e}"


def test_pad_groups_against_one_padded_batch(tmp_path):
    # Grouping runs by D (pad_ratio 1.25: 40 and 70 train apart, the D=40 runs are not
    # consecutive) and padding every run to the largest D (pad_ratio 10: one batch) are the
    # same arithmetic on the real examples, so the runs must agree.
    assert grok.pad_groups([40, 70, 40, 70, 45], 1.25) == [[0, 2, 4], [1, 3]]
    assert grok.pad_groups([40, 70, 40], 10.0) == [[0, 2, 1]]
    kw = dict(seeds="0,1", train="40,70", epochs=25)
    grok.train(small_cfg(tmp_path / "groups", pad_ratio=1.25, **kw))
    grok.train(small_cfg(tmp_path / "padded", pad_ratio=10.0, **kw))
    a, b = (np.load(tmp_path / d / "history.npz") for d in ("groups", "padded"))
    err = max(np.abs(a[k] - b[k]).max() for k in ("train_loss", "train_acc", "test_loss", "param_norm"))
    assert err < 1e-5, f"grouped and padded runs differ by {err:.2e}"


# -----------------------------------------------------------------------------
# Files, checkpoints and resume


def test_run_directory_contents(tmp_path):
    out = grok.train(small_cfg(tmp_path / "run", seeds="0,1", snapshots=4))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["torch"] == torch.__version__ and cfg["device"] == "cpu" and cfg["runs"]["seed"] == [0, 1]
    h = np.load(os.path.join(out, "history.npz"))
    assert h["epoch"][0] == 0 and h["epoch"][-1] == 30 and h["test_acc"].shape == (2, len(h["epoch"]))
    idx = np.load(os.path.join(out, "train_idx.npz"))
    assert idx["train_idx"].shape == (2, 40) and len(np.intersect1d(idx["train_idx"][0], idx["test_idx"][0])) == 0
    snaps = sorted(os.listdir(os.path.join(out, "snapshots")))
    assert snaps[0] == "epoch_00000000.pt" and snaps[-1] == "epoch_00000030.pt"
    last = torch.load(os.path.join(out, "snapshots", snaps[-1]))
    final = torch.load(os.path.join(out, "params.pt"))
    assert all(torch.equal(last[k], final[k]) for k in final)
    # The recorded parameter norm is the norm of the saved parameters.
    norm = torch.sqrt(sum(v.double().pow(2).flatten(1).sum(1) for v in final.values()))
    assert np.allclose(h["param_norm"][:, -1], norm.numpy(), rtol=1e-6)
    assert not [f for f in os.listdir(out) if ".tmp" in f], "temporary files left behind"


def test_resume_after_kill_is_bit_identical(tmp_path, monkeypatch):
    cfg = dict(epochs=50, ckpt_every=10, seeds="0,1")
    grok.train(small_cfg(tmp_path / "whole", **cfg))
    # Kill the second attempt at epoch 37 (between checkpoints) by failing inside the optimiser.
    real_step, calls = grok.adamw_step, {"n": 0}

    def dying_step(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 37:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kw)

    monkeypatch.setattr(grok, "adamw_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        grok.train(small_cfg(tmp_path / "killed", **cfg))
    assert torch.load(tmp_path / "killed" / "checkpoint.pt")["epoch"] == 30
    assert not (tmp_path / "killed" / "params.pt").exists()
    monkeypatch.setattr(grok, "adamw_step", real_step)
    grok.train(small_cfg(tmp_path / "killed", **cfg))  # the same command again resumes
    a, b = torch.load(tmp_path / "whole" / "params.pt"), torch.load(tmp_path / "killed" / "params.pt")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed run differs by {diff:.2e}"
    ha, hb = np.load(tmp_path / "whole" / "history.npz"), np.load(tmp_path / "killed" / "history.npz")
    assert all(np.array_equal(ha[k], hb[k]) for k in ha if k != "wall_s"), "resumed history differs"


def test_finished_run_is_not_retrained(tmp_path, capsys):
    cfg = small_cfg(tmp_path / "run")
    grok.train(cfg)
    before = os.path.getmtime(tmp_path / "run" / "params.pt")
    grok.train(cfg)
    assert "already finished" in capsys.readouterr().out
    assert os.path.getmtime(tmp_path / "run" / "params.pt") == before


def test_init_from_starts_at_the_saved_parameters(tmp_path):
    grok.train(small_cfg(tmp_path / "full", train="1.0", epochs=20))
    src = torch.load(tmp_path / "full" / "params.pt")
    grok.train(small_cfg(tmp_path / "ungrok", train="30,60", seeds="0,1", init_from=str(tmp_path / "full"),
                         epochs=10, snapshots=2))
    start = torch.load(tmp_path / "ungrok" / "snapshots" / "epoch_00000000.pt")
    assert all(torch.equal(start[k][r], src[k][0]) for k in src for r in range(4))


def test_init_from_several_seeds_matches_each_run_to_its_seed(tmp_path):
    grok.train(small_cfg(tmp_path / "full", train="1.0", seeds="3,5", epochs=10))
    src = torch.load(tmp_path / "full" / "params.pt")
    grok.train(small_cfg(tmp_path / "ungrok", train="30,60", seeds="5,3", init_from=str(tmp_path / "full"),
                         epochs=5, snapshots=2))
    start = torch.load(tmp_path / "ungrok" / "snapshots" / "epoch_00000000.pt")
    seeds = json.load(open(tmp_path / "ungrok" / "config.json"))["runs"]["seed"]
    assert seeds == [5, 5, 3, 3]
    for r, s in enumerate(seeds):  # source run 0 has seed 3, run 1 seed 5
        assert all(torch.equal(start[k][r], src[k][[3, 5].index(s)]) for k in src), f"run {r} (seed {s})"
    with pytest.raises(ValueError, match=r"--seeds must be among them"):
        grok.train(small_cfg(tmp_path / "bad", seeds="4", init_from=str(tmp_path / "full")))


def test_random_labels_differ_from_true_labels(tmp_path):
    grok.train(small_cfg(tmp_path / "mem", random_labels=True, train="80"))
    idx = np.load(tmp_path / "mem" / "train_idx.npz")
    _, labels, _, _ = grok.make_dataset("add", 11, "varma")
    true = labels.numpy()[idx["train_idx"][0]]
    agree = (true == idx["train_labels"][0]).mean()
    assert agree < 0.3, f"random labels agree with the true ones on {agree:.0%} of pairs"


# -----------------------------------------------------------------------------
# Bad input: one clear line, nothing on disk damaged


@pytest.mark.parametrize("kw, message", [
    (dict(task="mul"), "unknown task 'mul'"),
    (dict(task="div", p=12), "p must be prime"),
    (dict(train="0"), "not in 1..121"),
    (dict(train="500"), "not in 1..121"),
    (dict(train="1.5"), "outside (0, 1]"),
    (dict(train="0.0"), "outside (0, 1]"),
    (dict(fmt="bos"), "unknown input format"),
    (dict(seeds="a"), "not a comma list"),
    (dict(epochs=0), "--epochs must be a positive integer"),
])
def test_bad_input_is_one_clear_line(tmp_path, kw, message):
    with pytest.raises(ValueError) as e:
        grok.train(small_cfg(tmp_path / "bad", **kw))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_resume_with_other_settings_names_the_keys(tmp_path):
    grok.train(small_cfg(tmp_path / "run", epochs=10))
    with pytest.raises(ValueError, match=r"\(lr, wd differ\)"):
        grok.train(small_cfg(tmp_path / "run", epochs=10, wd="0.5", lr="2e-3"))
    assert os.path.exists(tmp_path / "run" / "params.pt")


def test_init_from_a_run_of_another_shape(tmp_path):
    grok.train(small_cfg(tmp_path / "src", p=13, epochs=5))
    with pytest.raises(ValueError, match=r"a run of another shape: W_E is \(15, 32\) per run"):
        grok.train(small_cfg(tmp_path / "dst", init_from=str(tmp_path / "src")))


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    grok.train(small_cfg(tmp_path / "src", seeds="0,1", epochs=5))
    params = torch.load(tmp_path / "src" / "params.pt")
    params["W_U"][1, 0, 0] = float("nan")  # run 1 is broken from the start
    torch.save(params, tmp_path / "src" / "params.pt")
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 0 in run 1"):
        grok.train(small_cfg(tmp_path / "dst", seeds="0,1", init_from=str(tmp_path / "src")))
    assert not os.path.exists(tmp_path / "dst" / "params.pt")


def test_command_line_error_is_one_line():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "grok.py"), "--task", "mul", "--out", "/nonexistent/x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown task 'mul'") and r.stderr.count("\n") == 1


def test_bench_prints_the_result_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "grok.py"), "--bench", "--p", "11", "--bench-epochs", "2",
                        "--device", "cpu", "--out", str(tmp_path / "never")], capture_output=True, text=True)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.startswith("ms_per_epoch=") and last.endswith("runs=1"), r.stdout + r.stderr
    assert not (tmp_path / "never").exists(), "--bench must not write a run directory"

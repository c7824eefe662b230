"""Tests for analysis.py: each builds the same thing two ways and compares them.

Run: python -m pytest -q tests/test_analysis.py
"""
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import analysis as A
import grok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(d_model=32, n_heads=4, d_head=8, d_mlp=64)  # a small model keeps the suite fast


def tiny_cfg(out, **kw):
    """A tiny, fast grok.py configuration (p=11, a few epochs) for file-handling tests."""
    base = dict(task="add", p=11, train="60", seeds="0,1", epochs=20, log_every=5, log_points=5,
                print_every=10**6, ckpt_every=10**6, out=str(out), device="cpu", threads=1, **TINY)
    base.update(kw)
    return grok.Config(**base)


# -----------------------------------------------------------------------------
# Explicit references: the slow, obvious constructions the fast code is compared with


def shift(p):
    """(a + b - c) for every (a, b, c) as a numpy array [p, p, p] (not reduced mod p)."""
    a = np.arange(p)
    return a[:, None, None] + a[None, :, None] - a[None, None, :]


def explicit_trig_projection(Z):
    """App. B by the letter: project Z [p, p, p] onto each p^3-long unit vector cos(w_k(a+b-c)); Z_M = Z - Z_T."""
    p = Z.shape[-1]
    Z_T, coef = np.zeros_like(Z), []
    for k in range(1, math.ceil((p - 1) / 2) + 1):  # the paper's K = ceil((p-1)/2)
        v = np.cos(2 * np.pi * k * shift(p) / p).ravel()  # [p^3]
        unit = v / np.linalg.norm(v)
        Z_T += (Z.ravel() @ unit * unit).reshape(p, p, p)
        coef.append(Z.ravel() @ v / (v @ v))
    return Z_T, Z - Z_T, np.array(coef)


def project_onto(basis, X):
    """Least-squares projection of the columns of X [n, m] onto the span of basis [n, j] (rank deficiency allowed)."""
    coef = np.linalg.lstsq(basis, X, rcond=None)[0]
    return basis @ coef


def fourier_1d(p, k):
    """cos(w_k x), sin(w_k x) over x = 0..p-1: [p, 2]."""
    x = np.arange(p)
    return np.stack([np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)], 1)


def degree2_basis(p, k):
    """The 9 products {1, cos w_k a, sin w_k a} x {1, cos w_k b, sin w_k b} over the pairs (a, b): [p^2, 9]."""
    a, b = np.divmod(np.arange(p * p), p)
    f = np.concatenate([np.ones((p, 1)), fourier_1d(p, k)], 1)  # [p, 3]
    return np.einsum("ni,nj->nij", f[a], f[b]).reshape(p * p, 9)


def cross_entropy(Z, a, b, labels):
    """Mean cross-entropy of logit tables Z [p, p, p] on the pairs (a, b) with labels, by torch's own function."""
    return torch.nn.functional.cross_entropy(torch.as_tensor(Z[a, b]), torch.as_tensor(labels)).item()


# -----------------------------------------------------------------------------
# The logits of every pair: order and the forward pass


@pytest.mark.parametrize("fmt", ["varma", "nanda"])
def test_pairs_are_a_major_so_logits_reshape_to_Z_abc(fmt):
    p = 7
    tokens, labels, _, _ = grok.make_dataset("add", p, fmt)
    a, b = np.divmod(np.arange(p * p), p)
    x_col, y_col = (0, 2) if fmt == "varma" else (0, 1)
    assert np.array_equal(tokens[:, x_col].numpy(), a) and np.array_equal(tokens[:, y_col].numpy(), b)
    assert np.array_equal(labels.numpy(), (a + b) % p)


@pytest.mark.parametrize("fmt", ["varma", "nanda"])
def test_logits_and_hidden_match_a_plain_forward(fmt):
    tokens, _, d_vocab, n = grok.make_dataset("add", 11, fmt)
    dims = dict(d_vocab=d_vocab, n_ctx=tokens.shape[1], n_out=n, **TINY)
    runs = [grok.init_params(dims, s) for s in (0, 1)]
    for P in runs:  # non-zero biases, so that they are tested too
        P["b_in"].normal_(0, 0.1), P["b_out"].normal_(0, 0.1)
    stacked = {k: torch.stack([P[k] for P in runs]) for k in runs[0]}
    logits, hidden = A.logits_and_hidden(stacked, tokens.expand(2, -1, -1))
    # The reference: grok.py's textbook forward at every position, read at the last position.
    l_ref, h_ref = grok.forward(stacked, tokens.expand(2, -1, -1), return_hidden=True)
    for r in range(2):
        err_h = (hidden[r] - h_ref[r, :, -1]).abs().max().item()
        err_l = (logits[r] - l_ref[r, :, -1]).abs().max().item()
        assert err_h < 1e-5 and err_l < 1e-5, f"run {r}: hidden differ by {err_h:.2e}, logits by {err_l:.2e}"


# -----------------------------------------------------------------------------
# App. B: the FFT split against the explicit projection


@pytest.mark.parametrize("p", [7, 8, 13])
def test_fft_projection_matches_explicit_projection(p):
    g = np.random.default_rng(p)
    Z = g.normal(size=(2, p, p, p)) + 3.0  # two tables at once (a leading run axis), with an offset
    Z_T, Z_M, coef = A.trig_split(torch.from_numpy(Z))
    for r in range(2):
        eT, eM, ec = explicit_trig_projection(Z[r])
        err = max(np.abs(Z_T[r].numpy() - eT).max(), np.abs(Z_M[r].numpy() - eM).max(),
                  np.abs(coef[r].numpy() - ec).max())
        assert err < 1e-10, f"p={p}, table {r}: FFT vs explicit projection, max |difference| {err:.2e}"


@pytest.mark.parametrize("p", [11, 12])
def test_pure_trig_logits_land_entirely_in_Z_T(p):
    g = np.random.default_rng(0)
    amp = {2: 3.0, 5: -1.5, p // 2: 0.7}  # any frequencies, including k = p/2 when p is even
    trig = sum(c * np.cos(2 * np.pi * k * shift(p) / p) for k, c in amp.items())
    offset = g.normal(size=(p, p, 1)) * 5  # a per-input shift: invisible to softmax
    Z = trig + offset
    Z_T, Z_M, coef = A.trig_split(torch.from_numpy(Z))
    # App. B: Z_M = Z - Z_T, so the shift is all of Z_M; the centred variant removes it.
    err = np.abs(Z_M.numpy() - np.broadcast_to(offset, Z.shape)).max()
    assert err < 1e-10, f"Z_M differs from the per-input shift by {err:.2e}"
    assert A.centre(Z_M).abs().max().item() < 1e-10, "the centred Z_M of pure trig logits is not zero"
    want = np.zeros(p // 2)
    for k, c in amp.items():
        want[k - 1] = c
    assert np.abs(coef.numpy() - want).max() < 1e-10, f"coefficients {coef.numpy()} != {want}"
    # the trig share of |Z|^2 (the paper's) against the closed form |Z_T|^2 / (|Z_T|^2 + |offset|^2 p)
    paper = A.trig_strength(coef, torch.from_numpy(Z)).sum().item()
    closed = (trig ** 2).sum() / ((trig ** 2).sum() + (offset ** 2).sum() * p)
    centred = A.trig_strength(coef, A.centre(torch.from_numpy(Z))).sum().item()
    assert abs(paper - closed) < 1e-10 and abs(centred - 1) < 1e-10, f"trig share {paper} vs {closed}, centred {centred}"
    # o_t^y: every cos(w_k(a+b-c)) is 1 at the correct label, so the correct trig logit is the amplitude sum;
    # o_m^y is the mean shift at the correct label (App. B), 0 in the centred variant.
    idx = torch.arange(p * p)
    labels = (idx // p + idx % p) % p
    o_t, o_m = A.correct_logit_means(Z_T, Z_M, idx, labels)
    _, o_m_centred = A.correct_logit_means(Z_T, A.centre(Z_M), idx, labels)
    assert abs(o_t - sum(amp.values())) < 1e-10, f"o_t^y {o_t}"
    assert abs(o_m - offset.mean()) < 1e-10 and abs(o_m_centred) < 1e-10, f"o_m^y {o_m} (want {offset.mean()})"


def test_random_lookup_table_lands_almost_entirely_in_Z_M():
    p = 11
    g = np.random.default_rng(1)
    table = g.integers(0, p, (p, p))  # a memoriser: one random answer per input
    Z = 4.0 * (np.arange(p)[None, None] == table[:, :, None])  # [p, p, p]
    Z_T, Z_M, coef = A.trig_split(torch.from_numpy(Z))
    frac = A.trig_strength(coef, A.centre(torch.from_numpy(Z))).sum().item()
    explicit = (explicit_trig_projection(Z)[0] ** 2).sum() / ((Z - Z.mean(-1, keepdims=True)) ** 2).sum()
    assert frac < 0.02 and abs(frac - explicit) < 1e-12, f"trig fraction {frac:.4f} (explicit {explicit:.4f})"
    # The contrast: a lookup table of the *true* answers depends on a+b-c only, so it is entirely
    # trigonometric. The split cannot tell a memoriser of all p^2 pairs from C_gen (App. B, flaw 1).
    true = 4.0 * ((shift(p) % p) == 0)
    _, _, c_true = A.trig_split(torch.from_numpy(true))
    frac_true = A.trig_strength(c_true, A.centre(torch.from_numpy(true))).sum().item()
    assert abs(frac_true - 1) < 1e-10, f"trig fraction of the true table: {frac_true}"


# -----------------------------------------------------------------------------
# Nanda et al.'s measures


def test_restricted_and_excluded_loss_on_known_logits():
    p, key, j = 13, [2, 5], 3
    alpha, beta = 2.0, 1.5
    cos = lambda k: np.cos(2 * np.pi * k * shift(p) / p)
    Z_key, Z_other = alpha * sum(cos(k) for k in key), beta * cos(j)
    Z = Z_key + Z_other
    a, b = np.divmod(np.arange(p * p), p)
    labels = (a + b) % p
    train = np.random.default_rng(1).permutation(p * p)[:80]
    restr = A.restricted_logits(torch.from_numpy(Z), torch.tensor(key)).reshape(p * p, p)
    got_r = A.loss_acc(restr, torch.arange(p * p), torch.from_numpy(labels))[0]
    want_r = cross_entropy(Z_key, a, b, labels)  # keep only the key frequencies: exactly Z_key
    excl = A.excluded_logits(torch.from_numpy(Z), torch.tensor(key)).reshape(p * p, p)
    got_e = A.loss_acc(excl, torch.from_numpy(train), torch.from_numpy(labels[train]))[0]
    want_e = cross_entropy(Z_other, a[train], b[train], labels[train])  # remove them: Z_other is left
    assert abs(got_r - want_r) < 1e-10, f"restricted loss {got_r} != {want_r}"
    assert abs(got_e - want_e) < 1e-10, f"excluded loss {got_e} != {want_e}"


@pytest.mark.parametrize("p", [11, 12])
def test_restricted_and_excluded_logits_against_explicit_projections(p):
    g = np.random.default_rng(p)
    Z = g.normal(size=(p, p, p)) * 3
    key = np.array([1, 4, p // 2])
    a, b = np.divmod(np.arange(p * p), p)
    # Nanda et al.: for every label c, the least-squares fit on cos/sin(w_k(a+b)) over the inputs;
    # restricted keeps it (with the constant), excluded removes it (without).
    basis = np.concatenate([fourier_1d(p, k)[(a + b) % p] for k in key], 1)  # [p^2, 2|key|]
    with_const = np.concatenate([np.ones((p * p, 1)), basis], 1)
    flat = Z.reshape(p * p, p)
    want_r, want_e = project_onto(with_const, flat), flat - project_onto(basis, flat)
    got_r = A.restricted_logits(torch.from_numpy(Z), torch.from_numpy(key)).reshape(p * p, p).numpy()
    got_e = A.excluded_logits(torch.from_numpy(Z), torch.from_numpy(key)).reshape(p * p, p).numpy()
    assert np.abs(got_r - want_r).max() < 1e-10, f"restricted logits: max |difference| {np.abs(got_r - want_r).max():.2e}"
    assert np.abs(got_e - want_e).max() < 1e-10, f"excluded logits: max |difference| {np.abs(got_e - want_e).max():.2e}"


@pytest.mark.parametrize("p", [7, 8])
def test_neuron_fve_matches_least_squares(p):
    g = np.random.default_rng(p)
    a, b = np.divmod(np.arange(p * p), p)
    N = 12
    X = g.normal(size=(p * p, N)) * 0.3  # noise ...
    for n in range(N):  # ... plus a random degree-2 polynomial in sin/cos of one frequency
        X[:, n] += degree2_basis(p, n % (p // 2) + 1) @ g.normal(size=9)
    X[:, 0] = 0.0  # a dead neuron
    freq, fve = A.neuron_fve(torch.from_numpy(X), p)
    Xc = X - X.mean(0)
    fits = [(project_onto(degree2_basis(p, k), Xc) ** 2).sum(0) / (Xc ** 2).sum(0).clip(1e-300)
            for k in range(1, p // 2 + 1)]
    fits = np.array(fits)  # [K, N]
    assert np.isnan(fve[0].item()), "a dead neuron has no variance to explain"
    err = np.abs(fve[1:].numpy() - fits.max(0)[1:]).max()
    assert err < 1e-10, f"fraction of variance explained: max |difference| {err:.2e}"
    assert np.array_equal(freq[1:].numpy(), fits.argmax(0)[1:] + 1), "best frequency differs"


@pytest.mark.parametrize("p", [7, 8])
def test_embedding_fourier_norms_match_explicit_basis(p):
    W_E = torch.randn(p + 2, 5, generator=torch.Generator().manual_seed(p), dtype=torch.float64)
    got = A.embedding_fourier_norms(W_E, p).numpy()
    W = W_E[:p].numpy()
    want = [np.linalg.norm(W.mean(0) * np.sqrt(p))]  # constant direction 1/sqrt(p)
    want += [np.linalg.norm(project_onto(fourier_1d(p, k), W)) for k in range(1, p // 2 + 1)]
    assert np.abs(got - np.array(want)).max() < 1e-10, f"{got} != {want}"


def test_key_frequencies_take_the_fewest_that_cover():
    norms = torch.tensor([9.0, 3.0, 0.1, 2.0, 0.1, 0.1]).double()  # index 0 is the constant, ignored
    # squared norms over k = 1..5: 9, 0.01, 4, 0.01, 0.01 (total 13.03): {1} holds 69%, {1, 3} 99.8%
    assert A.key_frequencies(norms, 0.9).tolist() == [1, 3]
    assert A.key_frequencies(norms, 0.5).tolist() == [1]
    assert A.key_frequencies(norms, 1.0).tolist() == [1, 2, 3, 4, 5]


def test_margin_is_positive_exactly_when_top1_is_right():
    g = torch.Generator().manual_seed(0)
    Zf = torch.randn(50, 9, generator=g)
    idx, labels = torch.arange(50), torch.randint(0, 9, (50,), generator=g)
    m = A.margins(Zf, idx, labels)
    sorted_logits = Zf.sort(-1, descending=True).values
    want = torch.where(Zf.argmax(-1) == labels, sorted_logits[:, 0] - sorted_logits[:, 1],
                       Zf[idx, labels] - sorted_logits[:, 0])
    assert (m - want).abs().max().item() < 1e-6 and ((m > 0).double().mean().item() == A.loss_acc(Zf, idx, labels)[1])


def test_phase_boundaries_on_synthetic_curves():
    hist_epoch = np.arange(0, 2001, 10)
    # Test loss: flat at 10 until 500, then falls linearly in log scale to 1e-4 at 1000, then flat:
    # 10% of the way down is epoch 550. The sum of squared weights: 1000 until 550, then linear
    # to 100 at 850: 90% of its fall is epoch 820. The excluded loss is lowest at epoch 100.
    logL = np.interp(hist_epoch, [0, 500, 1000, 2000], np.log([10, 10, 1e-4, 1e-4]))
    acc = np.interp(hist_epoch, [0, 600, 900, 2000], [0, 0, 1, 1])
    norm = np.sqrt(np.interp(hist_epoch, [0, 550, 850, 2000], [1000, 1000, 100, 100]))
    snap = np.array([0, 50, 100, 200, 400, 800, 1600, 2000])
    excluded = np.array([4.0, 2.0, 1.0, 2.0, 3.0, 5.0, 6.0, 6.0])
    phases = A.find_phases(snap, excluded, hist_epoch, np.exp(logL), acc, norm)
    assert phases == (100, 550, 820), f"phases {phases}"
    t1, t2, t3 = A.find_phases(snap, excluded, hist_epoch, np.exp(logL), acc * 0.5, norm)  # never groks
    assert t1 == 100 and math.isnan(t2) and math.isnan(t3)


def test_geometric_buckets():
    v = np.concatenate([np.geomspace(0.5, 400, 40), [-1.0, 0.0]])
    idx, edges = A.geometric_buckets(v, 6)
    assert np.allclose(edges[1:] / edges[:-1], edges[1] / edges[0]), "edges are not geometric"
    pos = v > 0
    assert (idx[~pos] == -1).all() and set(idx[pos]) == set(range(6))
    assert ((edges[idx[pos]] <= v[pos]) & (v[pos] < edges[idx[pos] + 1])).all()


# -----------------------------------------------------------------------------
# A short real run that groks


@pytest.fixture(scope="module")
def grokked(tmp_path_factory):
    """Train once: a+b mod 31 on half the pairs with a small model; it memorises by epoch ~100 and groks by ~400."""
    # Why this configuration: at p = 113 grokking takes thousands of epochs at ~15 epochs/s. At
    # p = 31 a d_model = 64, d_mlp = 128 model trains at ~250 epochs/s on one core. lr = 3e-3 and
    # wd = 3 make weight decay 9x stronger per step than the paper's (1e-3, 1), so cleanup comes
    # within a few hundred epochs. With 50% of the pairs the network fits the training set first
    # (train accuracy 1 at epoch ~100, test accuracy ~0.35) and generalises later (test accuracy
    # 0.95 at ~400). We checked that this is not luck: five copies whose initial weights differ by
    # 1e-6 all reach 0.95 between epochs 320 and 410. With 45% of the pairs (a longer delay) the
    # same 1e-6 decided whether the run grokked at all, too fragile for a test.
    out = tmp_path_factory.mktemp("grok31") / "run"
    grok.train(grok.Config(task="add", p=31, train="0.5", seeds="0", wd="3", lr="3e-3", epochs=1200,
                           d_model=64, n_heads=4, d_head=16, d_mlp=128, log_every=10, log_points=50,
                           snapshots=40, print_every=10**6, ckpt_every=10**6, out=str(out), device="cpu", threads=1))
    return str(out), A.analyse_run(str(out), log=lambda s: None)


def test_real_run_final_is_trigonometric_and_memorisation_era_is_not(grokked):
    _, pr = grokked
    d = A.run_slice(pr, 0)
    t1, t2, t3 = d["phases"]
    assert 0 < t1 < t2 < t3 <= d["epoch"][-1], f"phases {d['phases']}"
    i1 = int(np.nonzero(d["epoch"] == t1)[0][0])
    final, mem = d["trig_frac"][-1], d["trig_frac"][i1]
    # Measured: 0.84 at the end (the memorised residue is still decaying), 0.03 at the end of memorisation.
    assert d["test_acc"][-1] > 0.98 and final > 0.8, f"final test acc {d['test_acc'][-1]}, trig fraction {final}"
    assert mem < 0.2, f"trig fraction at the end of memorisation (epoch {t1}) {mem:.3f}, final {final:.3f}"
    # Nanda et al.: after cleanup the key frequencies alone do better than the network, and
    # removing them ruins the training loss; neurons are well explained by one frequency.
    restricted, excluded = d["restricted_loss"][-1], d["excluded_loss"][-1]
    assert restricted < min(0.1, d["test_loss"][-1]) and excluded > 1.0, f"restricted {restricted}, excluded {excluded}"
    assert np.nanmedian(d["neuron_fve"][-1]) > 0.8, f"median neuron FVE {np.nanmedian(d['neuron_fve'][-1])}"
    # The centred o_m^y: App. B's Z_M also holds each input's mean logit, which no loss sees.
    assert d["o_t"][-1] > 10 * abs(d["o_m_train_centred"][-1]), "after grokking the C_gen logit dominates"


def test_real_run_losses_match_grok_history(grokked):
    # Two ways: grok.py's evaluate() during training, and analysis.py's logits from the snapshots.
    _, pr = grokked
    d = A.run_slice(pr, 0)
    common, i_s, i_h = np.intersect1d(d["epoch"], d["hist_epoch"], return_indices=True)
    assert len(common) > 10
    for k in ("train_loss", "test_loss", "test_acc", "train_acc"):
        err = np.abs(d[k][i_s] - d["hist_" + k][i_h]).max() / max(np.abs(d["hist_" + k][i_h]).max(), 1e-12)
        assert err < 1e-3, f"{k}: relative difference {err:.2e} at epochs {common}"
    err = np.abs(np.sqrt(d["sum_sq"][i_s]) - d["hist_param_norm"][i_h]).max()
    assert err < 1e-3, f"parameter norm: max |difference| {err:.2e}"


def test_command_line_writes_every_figure_and_replots(grokked, tmp_path, capsys):
    run_dir, _ = grokked
    out = tmp_path / "an"
    A.main([run_dir, "--out", str(out), "--threads", "1"])
    names = {"progress.npz", "summary.txt", "fig9_run0.png", "progress_run0.png", "margin_run0.png"}
    assert names <= set(os.listdir(out)) and not [f for f in os.listdir(out) if ".tmp" in f]
    summary = (out / "summary.txt").read_text()
    assert "key frequencies" in summary and "cleanup" in summary and "trig fraction" in summary
    before = A.load_npz(str(out / "progress.npz"))
    os.remove(out / "fig9_run0.png")
    A.main([run_dir, "--out", str(out), "--replot"])
    assert (out / "fig9_run0.png").exists()
    after = A.load_npz(str(out / "progress.npz"))
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before), "--replot changed the data"


# -----------------------------------------------------------------------------
# Circuit efficiency over several run directories (Fig. 3 and Fig. 10)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Three tiny run directories: random labels (C_mem-only), true labels, and true labels with snapshots."""
    base = tmp_path_factory.mktemp("tiny")
    mem = grok.train(tiny_cfg(base / "mem", random_labels=True, train="40,60"))
    gen = grok.train(tiny_cfg(base / "gen", train="80,100", wd="0.5,1"))
    snap = grok.train(tiny_cfg(base / "snap", seeds="0", snapshots=5))
    return dict(mem=mem, gen=gen, snap=snap, base=base)


def test_efficiency_table_two_ways(tiny_runs):
    table = A.efficiency_table([tiny_runs["mem"], tiny_runs["gen"]], log=lambda s: None)
    assert len(table["run"]) == 12 and table["random_labels"].sum() == 4  # 4 C_mem runs, 8 true-label runs
    # Parameter norm: from params.pt here, from grok.py's own history there.
    hist = np.concatenate([np.load(os.path.join(tiny_runs[k], "history.npz"))["param_norm"][:, -1]
                           for k in ("mem", "gen")])
    assert np.allclose(table["param_norm"], hist, rtol=1e-6), f"{table['param_norm']} != {hist}"
    # The whole logit of the trained (random) label, straight from grok.forward_last.
    params = torch.load(os.path.join(tiny_runs["mem"], "params.pt"))
    split = np.load(os.path.join(tiny_runs["mem"], "train_idx.npz"))
    tokens, _, _, _ = grok.make_dataset("add", 11, "varma")
    for r in range(4):
        idx = split["train_idx"][r][split["train_idx"][r] >= 0]
        logits = grok.forward_last({k: v[r:r + 1] for k, v in params.items()}, tokens[idx][None])[0].double()
        labels = torch.from_numpy(split["train_labels"][r][:len(idx)])
        want = logits[torch.arange(len(idx)), labels].mean()
        assert abs(table["o_train"][r] - want.item()) < 1e-5, f"run {r}: {table['o_train'][r]} != {want.item()}"
    all_gen, no_gen = A.fig3_triples(table, 0.0), A.fig3_triples(table, 1.0)
    assert len(all_gen["gen_logit"]) == 8 and len(no_gen["gen_logit"]) == 0 and int(no_gen["n_dropped"]) == 8
    assert np.array_equal(np.sort(all_gen["mem_D"]), [40, 40, 60, 60])


def test_efficiency_command_line_writes_fig3_and_fig10(tiny_runs, tmp_path):
    out = tmp_path / "eff"
    A.main(["--efficiency", tiny_runs["mem"], tiny_runs["gen"], "--out", str(out), "--min-trig", "0"])
    assert {"fig3.png", "fig10.png", "efficiency.npz", "efficiency.txt"} <= set(os.listdir(out))
    os.remove(out / "fig3.png")
    A.main(["--efficiency", "--replot", "--out", str(out)])
    assert (out / "fig3.png").exists()


def test_final_only_and_one_run(tiny_runs):
    pr = A.analyse_run(tiny_runs["gen"], which=1, final_only=True, log=lambda s: None)
    assert pr["epoch"].tolist() == [20] and pr["runs"].tolist() == [1] and pr["trig_frac"].shape == (1, 1)
    pr = A.analyse_run(tiny_runs["snap"], log=lambda s: None)
    assert pr["epoch"][0] == 0 and pr["epoch"][-1] == 20 and pr["strength"].shape == (1, len(pr["epoch"]), 5)


# -----------------------------------------------------------------------------
# Bad input: one clear line


def test_bad_run_directories_are_one_clear_line(tiny_runs):
    base = tiny_runs["base"]
    shutil.copytree(tiny_runs["gen"], base / "broken")
    os.remove(base / "broken" / "params.pt")
    sub = grok.train(tiny_cfg(base / "sub", task="sub", seeds="0", epochs=2))
    p13 = grok.train(tiny_cfg(base / "p13", p=13, seeds="0", epochs=2))
    cases = [([str(base / "nowhere")], "does not exist"),
             ([str(base / "broken")], "is incomplete: params.pt missing"),
             ([sub], "task 'sub' has no trigonometric decomposition"),
             ([tiny_runs["gen"]], "has no parameter snapshots"),
             ([tiny_runs["snap"], "--run", "3"], "--run 3 is out of range"),
             ([tiny_runs["gen"], tiny_runs["mem"]], "give one run directory"),
             (["--efficiency", tiny_runs["gen"], sub], "task 'sub' has no trigonometric decomposition"),
             (["--efficiency", tiny_runs["gen"], p13], "hold networks of different shapes (p 11 vs 13"),
             ([tiny_runs["gen"], "--bogus"], "unrecognized arguments: --bogus")]
    for argv, message in cases:
        with pytest.raises(ValueError) as e:
            args = A.parse_args(argv)
            (A.main_efficiency if args.efficiency else A.main_run)(args, log=lambda s: None)
        assert message in str(e.value) and "\n" not in str(e.value), (argv, str(e.value))


def test_command_line_error_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "analysis.py"), str(tmp_path / "nowhere")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: run directory") and r.stderr.count("\n") == 1, r.stderr

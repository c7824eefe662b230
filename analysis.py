"""
analysis.py: what the trained networks of grok.py compute, for modular addition.

Reads grok.py's run directories and measures, per run and over training:
  - the split of the logits into trigonometric (C_gen) and memorisation (C_mem) parts of
    Varma et al. (2023), App. B, with the correct-label logits o_t^y and o_m^y (Fig. 9);
  - the progress measures of Nanda et al. (2023): the embedding's Fourier norms, key
    frequencies, restricted and excluded loss, the sum of squared weights, the three phases
    (memorisation, circuit formation, cleanup) and each neuron's fraction of variance
    explained by a degree-2 polynomial in sin/cos of one frequency;
  - the correct-minus-best-wrong logit margin, which moves smoothly while top-1 accuracy jumps;
  - the circuit-efficiency triples of Sec. 5.1 (Fig. 3) and the logit ratios of App. A.4 (Fig. 10)
    over many finished runs.
Everything here is for the modular addition task (grok.py --task add) only: the trigonometric
algorithm of Nanda et al. is specific to it. Figures are drawn from saved .npz files.

Launch commands:
    python grok.py --epochs 10000 --snapshots 100 --out runs/std   # the paper's setting (p=113, 30%, wd=1)
    python grok.py --lr 3e-3 --wd 3 --epochs 1000 --snapshots 60 --out runs/fast   # groks by ~epoch 400
    python analysis.py runs/std                    # every run in it: figures + summary in runs/std/analysis
    python analysis.py runs/std --run 0 --out out  # one run of a batched directory
    python analysis.py runs/std --final-only       # the final parameters only (no snapshots needed)
    python analysis.py runs/std --replot           # redraw the figures from runs/std/analysis/progress.npz
    python grok.py --random-labels --train 1000,2000,4000 --seeds 0-4 --wd 0.3,1,3 --out runs/mem
    python grok.py --train 6000,8000,10000 --seeds 0-4 --wd 0.3,1,3 --out runs/gen
    python analysis.py --efficiency runs/mem runs/gen --out figures   # Fig. 3 and Fig. 10
    python analysis.py --experiment fig1a runs/std --out figures      # Fig. 1a from a grokking run
    python analysis.py --experiment fig4 runs/ungrok_wd1 runs/ungrok_wd2 --out figures   # Fig. 4, 7, 1b
    python analysis.py --experiment semi runs/semi --out figures        # Fig. 5, 6, 1c (semi-grokking sweep)
    python analysis.py --experiment fig8 runs/ungrok8_div_wd1 runs/ungrok8_div_wd3 --out figures   # Fig. 8
    python analysis.py --report out/quick          # results.md for a reproduce.sh output folder
The experiment figures and results.md read only run histories, so they work for every task.
Tests: python -m pytest -q tests/test_analysis.py
"""
import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import matplotlib

matplotlib.use("Agg")  # render to files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402  (must come after use("Agg"))

import grok  # noqa: E402  the model, the dataset and the atomic writers: one source of truth

# -----------------------------------------------------------------------------
# Configuration of the command line


@dataclass
class Args:
    run_dirs: tuple = ()  # one run directory, or (with --efficiency) several to pool
    out: str = ""  # output folder; "" = RUN_DIR/analysis, or figures/ with --efficiency
    run: int = -1  # analyse only this run of a batched directory (-1 = every run)
    final_only: bool = False  # analyse params.pt alone: no snapshots needed, no curves over training
    replot: bool = False  # redraw the figures from an existing progress.npz, computing nothing
    efficiency: bool = False  # pool the run directories into Fig. 3 and Fig. 10 (Sec. 5.1, App. A.4)
    key_cover: float = 0.9  # key frequencies: fewest that hold this share of the final embedding's Fourier norm^2
    min_trig: float = 0.95  # Sec. 5.1: a C_gen-only run needs "> 95% of the logit norm" trigonometric
    buckets: int = 6  # Fig. 3 caption: "we geometrically bucket logit values into six buckets"
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    experiment: str = ""  # one experiment's figures: fig1a (a run dir), fig4 or fig8 (ungrokking dirs), semi
    report: str = ""  # write results.md for this reproduce.sh output folder (no run directory needed)
    profile: str = "quick"  # the reproduce.sh profile named in results.md


# -----------------------------------------------------------------------------
# Reading run directories

RUN_FILES = ("config.json", "history.npz", "train_idx.npz", "params.pt")  # params.pt is written last


def load_run(run_dir):
    """Read a finished grok.py run directory: config, per-run settings, history and data split."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"run directory {run_dir!r} does not exist")
    missing = [f for f in RUN_FILES if not os.path.exists(os.path.join(run_dir, f))]
    if missing:
        raise ValueError(f"run directory {run_dir!r} is incomplete: {', '.join(missing)} missing "
                         f"(an unfinished run? rerun the same grok.py command to finish it)")
    fix = f"rerun the grok.py command of {run_dir} after deleting the file, or delete the directory"
    saved = grok.load_json(os.path.join(run_dir, "config.json"), fix)
    hist = grok.load_checked(os.path.join(run_dir, "history.npz"), read_npz, fix)
    split = grok.load_checked(os.path.join(run_dir, "train_idx.npz"), read_npz, fix)
    # Runs that diverged were frozen by grok.py at their last finite state (history.npz says when and why).
    reasons = [str(r) for r in hist.get("stop_reason", [])]
    diverged = [r for r, why in enumerate(reasons) if why.startswith("diverged")]
    if diverged and len(diverged) == len(reasons):
        raise ValueError(f"{run_dir}: every run diverged ({reasons[0]}); there is nothing to analyse")
    return dict(dir=run_dir, cfg=saved["config"], runs=saved["runs"], dims=saved["dims"], hist=hist, split=split,
                n_pairs=saved["n_pairs"], diverged=diverged)


def read_npz(path):
    """Every array of an .npz file, read into memory."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def check_trig_task(run):
    """Raise unless the run is modular addition, the only task with a trigonometric decomposition here."""
    task = run["cfg"]["task"]
    if task != "add":
        raise ValueError(f"{run['dir']}: task {task!r} has no trigonometric decomposition in analysis.py; "
                         f"allowed: 'add' (a+b mod p, the task of App. B)")


def load_params(path):
    """A stacked parameter file (params.pt or a snapshot) as float32 CPU tensors: name -> [R, ...]."""
    fix = "rerun the grok.py command of its run directory after deleting the file"
    params = grok.load_checked(path, lambda p: torch.load(p, map_location="cpu"), fix)
    if not isinstance(params, dict) or not all(torch.is_tensor(params.get(n)) for n in grok.PARAM_SHAPES):
        raise ValueError(f"{path} holds no grok.py parameters; {fix}")
    return {k: v.float() for k, v in params.items()}


def snapshot_files(run_dir):
    """The parameter snapshots of a run directory, sorted: (epochs [S], paths)."""
    d = os.path.join(run_dir, "snapshots")
    names = sorted(f for f in os.listdir(d) if f.startswith("epoch_") and f.endswith(".pt")) if os.path.isdir(d) else []
    return [int(f[6:-3]) for f in names], [os.path.join(d, f) for f in names]


def pick_runs(run, which):
    """The run indices to analyse: every run, or the one given by --run."""
    R = len(run["runs"]["seed"])
    if which == -1:
        return list(range(R))
    if not 0 <= which < R:
        raise ValueError(f"--run {which} is out of range; {run['dir']} holds runs 0..{R - 1}")
    return [which]


def pair_data(run, r):
    """Tokens of all p^2 pairs [1, p^2, n_ctx], true labels [p^2], and run r's train/test indices and labels."""
    cfg = run["cfg"]
    tokens, labels, _, _ = grok.make_dataset(cfg["task"], cfg["p"], cfg["fmt"])
    # grok.task_table builds the pairs with meshgrid(indexing="ij"): pair index = a*p + b, so
    # the logits reshape to Z[a, b, c] with no permutation (checked in the tests).
    tr, te = run["split"]["train_idx"][r], run["split"]["test_idx"][r]
    keep = tr >= 0  # rows are padded with -1 to the longest run of the directory
    train_labels = run["split"]["train_labels"][r][keep]  # random ones for --random-labels runs
    return dict(p=cfg["p"], tokens=tokens[None], labels=labels, train_idx=torch.from_numpy(tr[keep]),
                train_labels=torch.from_numpy(train_labels), test_idx=torch.from_numpy(te[te >= 0]))


# -----------------------------------------------------------------------------
# The network on every input: logits and MLP activations


def one_run(params, r):
    """Run r's parameters with the run axis kept: name -> [1, ...]."""
    return {k: v[r:r + 1] for k, v in params.items()}


def logits_and_hidden(params, tokens):
    """Logits [R, B, n_out] and MLP activations [R, B, d_mlp] at the last position (grok.py's model)."""
    with torch.no_grad():
        return grok.forward_last(params, tokens, return_hidden=True)


def sum_squared_weights(params):
    """Sum of squares of every parameter of each run (Nanda et al.'s weight-norm curve): [R]."""
    return sum(v.double().pow(2).flatten(1).sum(1) for v in params.values())


# -----------------------------------------------------------------------------
# Trigonometric and memorisation logits (Varma et al., App. B)
#
# "Given a classifier h, we can aggregate its logits on every possible input, resulting in a
# vector Z_h of length p^3 where Z_h^{a,b,c} = o_h^c ... For a frequency w_k, let us define the
# p^3-dimensional vector Z_{w_k} as Z_{w_k}^{a,b,c} = cos(w_k(a+b-c)) ... we set 1 <= k <= K,
# where K = ceil((p-1)/2) ... Z_{h,T} = sum_{k=1}^K (Z_h . Z^_{w_k}) Z^_{w_k}" and "Z_{h,M} = Z_h - Z_{h,T}".
#
# Z_M is taken by the letter: Z - Z_T, with nothing removed first. Softmax is blind to a shift of
# an input's logits by a constant, and such a shift lies in Z_M (it is orthogonal to every
# Z_{w_k}); where that matters we also give the centred variant, Z_M minus each input's mean over
# the labels, always under a name with "centred" in it.


def frequency_norms2(p):
    """Squared norm of each p^3-long direction cos(w_k(a+b-c)), k = 1..K (K = p // 2): [K]."""
    k = torch.arange(1, p // 2 + 1)
    # sum of cos^2 over p^3 points is p^3/2, except k = p/2 (even p) where cos is +-1 everywhere
    return torch.where(2 * k % p == 0, 2.0, 1.0).double() * (p ** 3 / 2)


def centre(Z):
    """Subtract each input's mean logit over the labels (the last axis)."""
    return Z - Z.mean(-1, keepdim=True)


def trig_coefficients(Z):
    """Coefficients of logit tables Z [..., p, p, p] on the directions cos(w_k(a+b-c)), by a 3-D FFT: [..., K]."""
    p = Z.shape[-1]
    k = torch.arange(1, p // 2 + 1)
    F = torch.fft.rfftn(Z.double(), dim=(-3, -2, -1))  # [..., p, p, p//2+1], F[u,v,w] = sum Z e^{-2pi i(ua+vb+wc)/p}
    # Z . Z_{w_k} = sum Z cos(w_k(a+b-c)) = Re F[k, k, -k] = Re F[-k, -k, k] (Z is real); rfftn keeps
    # only the c-frequencies 0..p//2, so we read the second form. One FFT instead of K dot products
    # with p^3-long vectors.
    dots = F[..., -k % p, -k % p, k].real  # [..., K]
    return dots / frequency_norms2(p)


def trig_profile(coef, p):
    """The trig logit as a function of s = (a+b-c) mod p: g[s] = sum_k coef_k cos(w_k s), [..., p]."""
    k, s = torch.arange(1, p // 2 + 1).double(), torch.arange(p).double()
    return coef @ torch.cos(2 * math.pi * k[:, None] * s[None] / p)  # [..., K] @ [K, p] -> [..., p]


def shift_index(p):
    """(a + b - c) mod p for every (a, b, c): [p, p, p]."""
    a = torch.arange(p)
    return (a[:, None, None] + a[None, :, None] - a[None, None, :]) % p


def trig_split(Z):
    """Split logit tables Z [..., p, p, p] into App. B's Z_T, Z_M = Z - Z_T and the coefficients [..., K]."""
    p = Z.shape[-1]
    Z = Z.double()
    coef = trig_coefficients(Z)
    Z_T = trig_profile(coef, p)[..., shift_index(p)]  # [..., p] gathered -> [..., p, p, p]
    return Z_T, Z - Z_T, coef


def trig_strength(coef, Z):
    """Share of the logits' squared norm |Z|^2 along each direction cos(w_k(a+b-c)): [..., K] (centred Z: the centred share)."""
    # Reading taken for "> 95% of the logit norm": shares of the *squared* norm. Z_T and Z_M are
    # orthogonal, so |Z|^2 = |Z_T|^2 + |Z_M|^2 and only squared norms add up to 100%.
    p = Z.shape[-1]
    return coef ** 2 * frequency_norms2(p) / Z.pow(2).sum((-3, -2, -1))[..., None]


def correct_logit_means(Z_T, Z_M, idx, labels):
    """Mean correct-label trig and memorisation logits (o_t^y, o_m^y of App. B) over inputs idx with labels."""
    # "We cannot directly measure the circuit weights w_t and w_m, but instead use an indirect
    # measure: the value of the logit for the correct class given by each circuit, i.e. o_t^y and o_m^y."
    p = Z_T.shape[-1]
    t = Z_T.reshape(p * p, p)[idx, labels]  # [n]
    m = Z_M.reshape(p * p, p)[idx, labels]  # [n]
    return t.mean().item(), m.mean().item()


# -----------------------------------------------------------------------------
# Losses, accuracy and margins of a logit table


def loss_acc(Zf, idx, labels):
    """Mean cross-entropy (float64) and top-1 accuracy of flat logits Zf [p^2, p] on inputs idx."""
    logits = Zf[idx].double()  # [n, p]
    loss = -logits.log_softmax(-1).gather(-1, labels[:, None]).mean()
    return loss.item(), (logits.argmax(-1) == labels).double().mean().item()


def margins(Zf, idx, labels):
    """Correct logit minus the best wrong logit for each input in idx: [n] (> 0 exactly when top-1 is right)."""
    # The blog note "Four explanations for grokking": "softmax classifiers ... route through a
    # top-1 argmax, so logits that are evolving continuously map onto a piecewise-constant accuracy
    # curve that flips once the right logit crosses its competitor." The margin is that crossing,
    # measured before the threshold.
    logits = Zf[idx].double()  # [n, p]
    correct = logits.gather(-1, labels[:, None])[:, 0]
    wrong = logits.scatter(-1, labels[:, None], -math.inf).max(-1).values
    return correct - wrong


# -----------------------------------------------------------------------------
# Nanda et al.'s progress measures


def embedding_fourier_norms(W_E, p):
    """Norm of the p numbers' embedding along each Fourier frequency 0..p//2 (cos and sin together): [..., p//2+1]."""
    # Nanda et al.: the embedding is sparse in the Fourier basis over the input number a: only the
    # key frequencies carry weight after grokking. W_E rows p.. are the '+' and '=' tokens; skip them.
    F = torch.fft.rfft(W_E[..., :p, :].double(), dim=-2)  # [..., p//2+1, d_model]
    k = torch.arange(p // 2 + 1)
    # Parseval: |projection on {cos w_k a, sin w_k a}|^2 = 2|F_k|^2/p; the constant and k = p/2 have 1/p
    scale = torch.where((k == 0) | (2 * k == p), 1.0, 2.0).double() / p  # float64 before dividing
    return (F.abs().pow(2).sum(-1) * scale).sqrt()


def key_frequencies(emb_norms, cover):
    """Key frequencies k >= 1 from embedding Fourier norms [K+1]: the fewest, strongest first, holding `cover`."""
    # Nanda et al. read the key frequencies off the grokked network's embedding, where a handful
    # of frequencies stand out. The cut-off rule is ours: sort frequencies 1..K by squared norm
    # and keep the shortest head that holds `cover` of it. Why the embedding and not the logits:
    # a low frequency (k = 1) separates neighbouring labels only weakly, so the network gives it a
    # large logit coefficient, and a share-of-logit-norm rule would keep it and drop the others.
    strength = emb_norms[1:].pow(2)
    order = torch.argsort(strength, descending=True)
    cum = torch.cumsum(strength[order], 0) / strength.sum()
    n = int((cum < cover).sum()) + 1
    return torch.sort(order[:n] + 1).values


def fold(X, p, sign):
    """Sum X [p, p, ...] over the input pairs (a, b) with equal (a + sign*b) mod p: [p, ...]."""
    a = torch.arange(p)
    s = ((a[:, None] + sign * a[None, :]) % p).reshape(-1)  # [p*p], pair index a*p + b
    return torch.zeros((p,) + X.shape[2:], dtype=X.dtype).index_add_(0, s, X.reshape((p * p,) + X.shape[2:]))


def key_projection(Z, freqs):
    """Per label c, the projection of Z [p, p, p] over the inputs onto cos/sin(w_k(a+b)) for k in freqs (k = 0: the constant)."""
    # The span of cos(w_k(a+b)), sin(w_k(a+b)) is that of e^{+-i w_k (a+b)}, whose coefficients are the
    # 2-D FFT over (a, b) at (k, k) and (-k, -k): a 1-D FFT over s = a+b of Z summed along a+b = s
    # (no p^3 2-D FFT needed). It contains cos(w_k(a+b-c)) = cos(w_k(a+b))cos(w_k c) + sin(w_k(a+b))sin(w_k c).
    p = Z.shape[-1]
    Z = Z.double()
    F = torch.fft.fft(fold(Z, p, +1), dim=0)  # [p (k), p (c)]: F[k, c] = 2-D FFT of Z[:, :, c] at (k, k)
    mask = torch.zeros(p, 1, dtype=torch.float64)
    mask[freqs % p], mask[-freqs % p] = 1.0, 1.0
    # projection = (1/p^2) sum_{u = +-k} F[u, c] e^{2 pi i u (a+b)/p} = ifft(F * mask)[a+b, c] / p
    proj = torch.fft.ifft(F * mask, dim=0).real / p  # [p (s), p (c)]
    a = torch.arange(p)
    return proj[(a[:, None] + a[None, :]) % p]  # [p, p] index -> [p, p, p]


def restricted_logits(Z, key):
    """Nanda et al.'s restricted logits: Z [p, p, p] with only the key frequencies' cos/sin(w_k(a+b)) terms (and the constant) kept."""
    # Nanda et al.: restricted loss tracks "performance on the general algorithm": every component
    # of the logits is ablated except the key frequencies. Reading taken: for each label c keep
    # the span of cos(w_k(a+b)), sin(w_k(a+b)) over the key k, plus each label's mean over the
    # inputs (frequency 0, a per-label bias); this is the very span excluded_logits removes (but
    # for the constant), so restricted and excluded logits add up to Z plus that bias.
    return key_projection(Z, torch.cat([torch.zeros(1, dtype=key.dtype), key]))


def excluded_logits(Z, key):
    """Nanda et al.'s excluded logits: Z [p, p, p] minus its components on cos(w_k(a+b)), sin(w_k(a+b)) of the key frequencies, per c."""
    # Nanda et al.'s excluded loss ("performance on memorized exceptions") removes, for each key
    # frequency, the directions cos(w_k(a+b)) and sin(w_k(a+b)) over the inputs (separately for
    # every label c), then evaluates on the training set.
    return Z.double() - key_projection(Z, key)


def neuron_fve(hidden, p):
    """Per neuron: the best frequency k and the share of variance degree-2 sin/cos terms of it explain: ([N], [N])."""
    # Nanda et al.: each neuron's activation over (a, b) is well explained by the span of
    # {1, cos w_k a, sin w_k a} x {1, cos w_k b, sin w_k b} for one frequency k. That span is the
    # 2-D Fourier cells (u, v) with u, v in {0, k, -k}: they lie on the row u = 0, the column v = 0,
    # the diagonal u = v and the antidiagonal u = -v of the 2-D spectrum, and each of those lines
    # is the 1-D FFT of a marginal sum (over b, over a, along a+b, along a-b). By Parseval the
    # explained variance is the sum of |FFT|^2 over the cells; the full p x p x N FFT is not needed.
    N = hidden.shape[-1]
    X = hidden.reshape(p, p, N).double()  # [a, b, neuron]
    X = X - X.mean((0, 1))  # the mean is cell (0, 0): not variance
    lines = torch.stack([X.sum(1), X.sum(0), fold(X, p, +1), fold(X, p, -1)])  # [4, p, N]
    power = torch.fft.fft(lines, dim=1).abs().pow(2)  # [4, p, N]: rows H[k,0], H[0,k], H[k,k], H[k,-k]
    k = torch.arange(1, p // 2 + 1)
    # Each cell (u, v) has a twin (-u, -v) with the same |H| (real input): count both, except when
    # k = p/2 (even p) where they coincide and the antidiagonal cell is the diagonal one.
    twin = torch.where(2 * k % p == 0, 1.0, 2.0).double()[:, None]  # [K, 1]
    anti = torch.where(2 * k % p == 0, 0.0, 2.0).double()[:, None]  # [K, 1]
    explained = twin * power[:3, k].sum(0) + anti * power[3, k]  # [K, N]
    total = X.pow(2).sum((0, 1)) * p * p  # [N], Parseval: sum |H|^2 = p^2 sum X^2
    best = explained.max(0)
    fve = torch.where(total > 0, best.values / total.clamp_min(1e-300), torch.nan)  # dead neuron: nan
    return best.indices + 1, fve


# -----------------------------------------------------------------------------
# Every measure of one run at one point of training


def trig_summary(params, r, data):
    """Run r on all pairs: logits Zf [p^2, p], hidden [p^2, d_mlp], and the App. B split (Z_T, Z_M, coef, strength)."""
    p = data["p"]
    logits, hidden = logits_and_hidden(one_run(params, r), data["tokens"])
    Zf = logits[0]  # [p^2, p]
    Z = Zf.double().reshape(p, p, p)  # [a, b, c]
    Z_T, Z_M, coef = trig_split(Z)
    return Zf, hidden[0], Z_T, Z_M, coef, trig_strength(coef, Z)


def logit_measures(Zf, Z_T, Z_M, strength, data):
    """Losses, accuracies, margins, correct-label logits and trig fraction of one run's logit table: a dict."""
    tr, te, y_tr, y_te = data["train_idx"], data["test_idx"], data["train_labels"], data["labels"][data["test_idx"]]
    out = {}
    out["train_loss"], out["train_acc"] = loss_acc(Zf, tr, y_tr)
    out["test_loss"], out["test_acc"] = loss_acc(Zf, te, y_te)
    m_te = margins(Zf, te, y_te)
    out["test_margin"], out["train_margin"] = m_te.mean().item(), margins(Zf, tr, y_tr).mean().item()
    out["test_margin_q"] = torch.quantile(m_te, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).numpy()
    out["o_t"], out["o_m_train"] = correct_logit_means(Z_T, Z_M, tr, y_tr)
    _, out["o_m_test"] = correct_logit_means(Z_T, Z_M, te, y_te)
    # The centred variants: each input's mean logit over the labels removed (invisible to softmax).
    _, out["o_m_train_centred"] = correct_logit_means(Z_T, centre(Z_M), tr, y_tr)
    out["o_train"] = Zf.double()[tr, y_tr].mean().item()  # the whole logit of the trained label
    out["trig_frac"], out["strength"] = strength.sum().item(), strength.numpy()
    out["trig_frac_centred"] = (Z_T.pow(2).sum() / (Z_T + centre(Z_M)).pow(2).sum()).item()
    return out


def measure_point(params, r, data, key):
    """Every measure of run r's parameters at one point of training: a dict of floats and small arrays."""
    p = data["p"]
    Zf, hidden, Z_T, Z_M, coef, strength = trig_summary(params, r, data)
    out = logit_measures(Zf, Z_T, Z_M, strength, data)
    # Nanda et al. (summary): "restricted loss" tracks "performance on the general algorithm" and
    # "excluded loss" "performance on memorized exceptions". Readings taken: the restricted loss on
    # every pair (the general algorithm is meant for every input), the excluded loss on the
    # training set (the memorised exceptions are the training pairs). Z_T + Z_M is the logit table.
    Z = Z_T + Z_M
    every = torch.arange(p * p)
    restricted = restricted_logits(Z, key).reshape(p * p, p)  # [p^2, p]
    out["restricted_loss"], _ = loss_acc(restricted, every, data["labels"])
    excluded = excluded_logits(Z, key).reshape(p * p, p)  # [p^2, p]
    out["excluded_loss"], _ = loss_acc(excluded, data["train_idx"], data["train_labels"])
    out["emb_norms"] = embedding_fourier_norms(params["W_E"][r], p).numpy()
    out["sum_sq"] = sum_squared_weights(one_run(params, r))[0].item()
    out["neuron_freq"], out["neuron_fve"] = (t.numpy() for t in neuron_fve(hidden, p))
    return out


# -----------------------------------------------------------------------------
# Phases (Nanda et al.: memorisation, circuit formation, cleanup)
#
# Nanda et al. (summary): "Identifies three distinct phases of learning: 1) Memorization, 2) Circuit
# Formation, and 3) Cleanup"; "Once this circuit is sufficiently formed, weight decay penalizes the
# high-norm memorization weights, causing them to be 'cleaned up.'" They give no formula for the
# boundaries; the rule here is ours, from their descriptions: in memorisation the train loss falls
# and so does the excluded loss; in circuit formation the excluded loss rises while the test loss
# stays high; in cleanup the test loss falls sharply as the weight norm falls, then the norm levels off.
#   - A run whose best test accuracy stays below grok_acc did not grok: only t1 is defined.
#   - Cleanup starts at t2, the first epoch after the test-loss peak (taken before the test-loss
#     minimum) at which log(test loss) has fallen `lo` (10%) of the way from the peak to the minimum.
#   - Cleanup ends at t3, the first epoch after t2 at which the sum of squared weights has made
#     `hi` (90%) of its fall from its value at t2 to its lowest value after t2. (Not the test loss:
#     after grokking it keeps falling exponentially, so any threshold on it moves with run length.)
#   - Memorisation ends at t1, the snapshot with the lowest excluded loss at or before t2.


def fraction_of_way(x, start):
    """Where each x [T] stands between x[start] (0) and the lowest value from start on (1)."""
    return (x[start] - x) / max(x[start] - x[start:].min(), 1e-12)


def find_phases(snap_epoch, excluded, hist_epoch, test_loss, test_acc, param_norm, lo=0.1, hi=0.9, grok_acc=0.9):
    """Phase boundaries of one run, (t1, t2, t3): end of memorisation, start and end of cleanup (nan if undefined)."""
    t2 = t3 = math.nan
    if len(test_loss) and np.max(test_acc) >= grok_acc:
        T = len(test_loss)
        logL = np.log(np.maximum(test_loss, 1e-300))
        i_peak = int(np.argmax(logL[:int(np.argmin(logL)) + 1]))
        i2 = int(np.argmax((np.arange(T) >= i_peak) & (fraction_of_way(logL, i_peak) >= lo)))
        sq = np.asarray(param_norm, dtype=np.float64) ** 2  # sum of squared weights, at every recorded epoch
        i3 = int(np.argmax((np.arange(T) >= i2) & (fraction_of_way(sq, i2) >= hi)))
        t2, t3 = float(hist_epoch[i2]), float(hist_epoch[i3])
    before = snap_epoch <= t2 if not math.isnan(t2) else np.ones(len(snap_epoch), bool)
    t1 = float(snap_epoch[before][np.argmin(excluded[before])]) if before.any() else math.nan
    return t1, t2, t3


# -----------------------------------------------------------------------------
# One pass over a run directory


def analyse_run(run_dir, which=-1, final_only=False, key_cover=0.9, log=print):
    """Every measure of the chosen runs at every snapshot (and the final parameters): arrays with a leading run axis."""
    run = load_run(run_dir)
    check_trig_task(run)
    if run["diverged"]:
        log(f"note: run(s) {run['diverged']} of {run_dir} diverged and were frozen at their last finite state "
            f"(history.npz: stop_epoch, stop_reason); their measures describe that state")
    runs = pick_runs(run, which)
    final = load_params(os.path.join(run_dir, "params.pt"))
    final_epoch = int(run["hist"]["epoch"][-1])
    epochs, paths = snapshot_files(run_dir)
    if final_only:
        epochs, paths = [], []
    elif not epochs:
        raise ValueError(f"{run_dir} has no parameter snapshots; train it with grok.py --snapshots N "
                         f"(e.g. 100), or pass --final-only to analyse the final parameters alone")
    if not epochs or epochs[-1] != final_epoch:  # stopped early (--stop-acc) or --final-only: add params.pt
        epochs, paths = epochs + [final_epoch], paths + [None]
    datas = {r: pair_data(run, r) for r in runs}
    p = run["cfg"]["p"]
    # Key frequencies of each run come from its final parameters and stay fixed over training, as
    # in Nanda et al., so the restricted and excluded losses follow one set of frequencies.
    keys = {r: key_frequencies(embedding_fourier_norms(final["W_E"][r], p), key_cover) for r in runs}
    rows = {r: [] for r in runs}
    t0 = time.perf_counter()
    for path in paths:
        params = final if path is None else load_params(path)
        for r in runs:
            rows[r].append(measure_point(params, r, datas[r], keys[r]))
    log(f"analysed {len(runs)} run(s) x {len(paths)} point(s) in {time.perf_counter() - t0:.1f} s")
    K = p // 2
    key_mask = np.zeros((len(runs), K), bool)
    for i, r in enumerate(runs):
        key_mask[i, keys[r].numpy() - 1] = True
    out = {k: np.stack([np.stack([np.asarray(row[k]) for row in rows[r]]) for r in runs]) for k in rows[runs[0]][0]}
    out.update(epoch=np.array(epochs), runs=np.array(runs), key_mask=key_mask, p=np.array(p),
               seed=np.array([run["runs"]["seed"][r] for r in runs]),
               n_train=np.array([run["runs"]["n_train"][r] for r in runs]),
               wd=np.array([run["runs"]["wd"][r] for r in runs]), lr=np.array([run["runs"]["lr"][r] for r in runs]))
    h = run["hist"]
    out["hist_epoch"] = h["epoch"]
    for k in ("train_loss", "test_loss", "train_acc", "test_acc", "param_norm"):
        out["hist_" + k] = h[k][runs]  # [R', T]
    out["phases"] = np.array([find_phases(out["epoch"], out["excluded_loss"][i], h["epoch"], h["test_loss"][r],
                                          h["test_acc"][r], h["param_norm"][r]) for i, r in enumerate(runs)])  # [R', 3]
    return out


def run_slice(progress, i):
    """The arrays of the i-th analysed run of a progress dict (leading run axis dropped where there is one)."""
    R = len(progress["runs"])
    return {k: (v[i] if v.ndim and v.shape[0] == R and k not in ("epoch", "hist_epoch") else v)
            for k, v in progress.items()}


def summary_lines(progress):
    """A short human-readable summary of a progress dict: key frequencies, phases, trig fractions."""
    lines = ["# analysis.py summary (modular addition; App. B split and Nanda et al.'s measures)",
             "# phases: memorisation ends at the lowest excluded loss; cleanup starts when log test loss is 10% "
             "of the way down from its peak, ends when the sum of squared weights has made 90% of its fall"]
    for i, r in enumerate(progress["runs"]):
        d = run_slice(progress, i)
        keys = (np.nonzero(d["key_mask"])[0] + 1).tolist()
        top = (np.argsort(d["strength"][-1])[::-1][:len(keys)] + 1).tolist()  # strongest in the final logits
        t1, t2, t3 = d["phases"]
        fmt = lambda t: "n/a" if math.isnan(t) else f"{t:.0f}"
        fve = d["neuron_fve"][-1]
        lines += [
            f"run {int(r)}: seed {int(d['seed'])}, D {int(d['n_train'])}, wd {float(d['wd']):g}, lr {float(d['lr']):g}",
            f"  key frequencies (embedding, {len(keys)}): {keys}; strongest in the final logits: {sorted(top)}",
            f"  phases: memorisation ends {fmt(t1)}, cleanup {fmt(t2)} -> {fmt(t3)}",
            f"  final: epoch {int(d['epoch'][-1])}, trig fraction {d['trig_frac'][-1]:.4f}, o_t^y {d['o_t'][-1]:.3f}, "
            f"o_m^y train {d['o_m_train'][-1]:.3f} / test {d['o_m_test'][-1]:.3f}",
            f"  final: train/test loss {d['train_loss'][-1]:.3g} / {d['test_loss'][-1]:.3g}, test acc "
            f"{d['test_acc'][-1]:.4f}, restricted {d['restricted_loss'][-1]:.3g}, "
            f"excluded {d['excluded_loss'][-1]:.3g}",
            f"  final neurons: median FVE {np.nanmedian(fve):.3f}, share with FVE > 0.9: "
            f"{np.mean(fve[~np.isnan(fve)] > 0.9):.2f} ({int(np.isnan(fve).sum())} dead)"]
    return lines


# -----------------------------------------------------------------------------
# Circuit efficiency over many finished runs (Sec. 5.1, Fig. 3; App. A.4, Fig. 10)


def efficiency_table(run_dirs, log=print):
    """One row per finished run of every directory: settings, parameter norm, correct logits, trig share, accuracy."""
    measures = ("o_train", "o_t", "o_m_train", "o_m_train_centred", "trig_frac", "trig_frac_centred", "test_acc",
                "train_acc")
    cols = {k: [] for k in ("dir", "dir_name", "run", "seed", "n_train", "wd", "random_labels", "init_from",
                            "converged", "param_norm") + measures}
    t0 = time.perf_counter()
    first = None
    for j, d in enumerate(run_dirs):
        run = load_run(d)
        check_trig_task(run)
        # Norms and logits compare only between networks of one shape on one task (p and dims).
        shape = dict(p=run["cfg"]["p"], **run["dims"])
        first = first or (d, shape)
        if shape != first[1]:
            diff = ", ".join(f"{k} {first[1][k]} vs {v}" for k, v in shape.items() if first[1][k] != v)
            raise ValueError(f"{d} and {first[0]} hold networks of different shapes ({diff}); pool runs of one shape")
        params = load_params(os.path.join(d, "params.pt"))
        norms = sum_squared_weights(params).sqrt()  # [R]
        for r in range(len(run["runs"]["seed"])):
            data = pair_data(run, r)
            Zf, _, Z_T, Z_M, _, strength = trig_summary(params, r, data)
            m = logit_measures(Zf, Z_T, Z_M, strength, data)
            why = str(run["hist"]["stop_reason"][r]) if "stop_reason" in run["hist"] else ""
            row = dict(dir=j, dir_name=os.path.basename(os.path.normpath(d)), run=r, seed=run["runs"]["seed"][r],
                       n_train=run["runs"]["n_train"][r], wd=run["runs"]["wd"][r],
                       random_labels=bool(run["cfg"]["random_labels"]), init_from=bool(run["cfg"]["init_from"]),
                       converged=why.startswith("converged"), param_norm=norms[r].item(), **{k: m[k] for k in measures})
            for k, v in row.items():
                cols[k].append(v)
    log(f"efficiency: {len(cols['run'])} run(s) from {len(run_dirs)} director(ies) in {time.perf_counter() - t0:.1f} s")
    return {k: np.array(v) for k, v in cols.items()}


def fig3_triples(table, min_trig=0.95):
    """The (correct logit, parameter norm, D) triples of Fig. 3: C_mem-only and C_gen-only runs, as a dict of arrays."""
    # Sec. 5.1: "We produce C_mem-only networks by using completely random labels for the training
    # data ..., and assume that the entire parameter norm at convergence is allocated to memorisation.
    # We produce C_gen-only networks by training on large dataset sizes and checking that > 95% of the
    # logit norm comes from just the trigonometric subspace."
    # Readings taken: a C_mem-only run's logit is o_m^y (App. B's Z_M) for the trained (random)
    # label, over the training set; a C_gen-only run's logit is o_t^y, and its whole norm counts too.
    mem = table["random_labels"]
    gen = ~table["random_labels"] & (table["trig_frac"] > min_trig)
    return dict(mem_logit=table["o_m_train"][mem], mem_norm=table["param_norm"][mem], mem_D=table["n_train"][mem],
                gen_logit=table["o_t"][gen], gen_norm=table["param_norm"][gen], gen_D=table["n_train"][gen],
                n_dropped=np.array(int((~table["random_labels"] & ~gen).sum())), min_trig=np.array(min_trig))


def norm_elasticity(logit, norm, D):
    """Least squares log P = a + b log o + c log D over positive triples: (b, c, points used; nan if too few)."""
    ok = (logit > 0) & (norm > 0) & (D > 0)
    X = np.stack([np.ones(int(ok.sum())), np.log(logit[ok]), np.log(D[ok])], axis=1)  # [n, 3]
    if ok.sum() < 4 or np.linalg.matrix_rank(X) < 3:  # needs two logits and two sizes, one point spare
        return float("nan"), float("nan"), int(ok.sum())
    coef = np.linalg.lstsq(X, np.log(norm[ok]), rcond=None)[0]
    return float(coef[1]), float(coef[2]), int(ok.sum())


def test_p1(triples, min_mem=0.1, max_gen=0.05):
    """P1: at a fixed logit, C_mem's parameter norm grows with D and C_gen's does not (Fig. 3's isologits)."""
    # Sec. 5.1: "(P1) Efficiency. We predict (Section 4.1) that memorisation efficiency decreases with
    # increasing train dataset size, while generalisation efficiency stays constant." Fig. 3's
    # isologit curves show the parameter norm needed for a fixed logit against D. Our test fits
    # log P = a + b log o + c log D to each circuit's (o, P, D) triples: c is the growth of the
    # norm with D at a fixed logit. P1 holds when c_mem >= min_mem (doubling D costs C_mem at
    # least 7% more norm for the same logit) and |c_gen| <= max_gen (under 3.5% either way).
    b_mem, c_mem, n_mem = norm_elasticity(triples["mem_logit"], triples["mem_norm"], triples["mem_D"])
    b_gen, c_gen, n_gen = norm_elasticity(triples["gen_logit"], triples["gen_norm"], triples["gen_D"])
    enough = bool(np.isfinite(c_mem) and np.isfinite(c_gen))
    held = enough and c_mem >= min_mem and abs(c_gen) <= max_gen
    return dict(held=bool(held), enough=enough, c_mem=c_mem, c_gen=c_gen, b_mem=b_mem, b_gen=b_gen,
                n_mem=n_mem, n_gen=n_gen, min_mem=min_mem, max_gen=max_gen)


def geometric_buckets(values, n):
    """Bucket positive values into n geometric buckets: (bucket per value, -1 if not positive; edges [n+1])."""
    pos = values[values > 0]
    if len(pos) == 0:
        return np.full(len(values), -1), np.ones(n + 1)
    edges = np.geomspace(pos.min(), pos.max() * (1 + 1e-9), n + 1)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n - 1)
    return np.where(values > 0, idx, -1), edges


def bucket_curves(x, y, bucket, n):
    """Mean of y per distinct x within each bucket: list over buckets of (xs, mean ys)."""
    curves = []
    for b in range(n):
        sel = bucket == b
        xs = np.unique(x[sel])
        curves.append((xs, np.array([y[sel & (x == v)].mean() for v in xs])))
    return curves


def fig10_points(table, n_buckets=6):
    """Fig. 10's points for true-label runs: logit ratio o_t^y/o_m^y (train), test accuracy, D and a norm bucket."""
    # App. A.4: "the ratio of the C_gen to C_mem logit o_t^y/o_m^y should increase monotonically with
    # dataset size"; "Colours correspond to different bucketed values of parameter norm (P)". The paper
    # uses its ungrokking runs; any true-label runs are taken here (ungrokking runs: grok.py --init-from).
    keep = ~table["random_labels"]
    bucket, edges = geometric_buckets(table["param_norm"][keep], n_buckets)
    with np.errstate(divide="ignore", invalid="ignore"):  # o_m^y = 0 gives inf/nan: not plotted on a log axis
        ratio = table["o_t"][keep] / table["o_m_train"][keep]
    return dict(ratio=ratio, test_acc=table["test_acc"][keep],
                D=table["n_train"][keep], norm=table["param_norm"][keep], bucket=bucket, edges=edges)


# -----------------------------------------------------------------------------
# Figures: one function per figure, drawn from saved arrays


def save_figure(fig, path):
    """Write a figure as PNG via a temporary file in the same folder and os.replace."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        grok.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def legend(ax, **kw):
    """Draw the legend of an axis if anything on it has a label (matplotlib warns otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def shade_phases(ax, phases, end):
    """Shade the three phases (memorisation, circuit formation, cleanup) on an axis over epochs."""
    t1, t2, t3 = phases
    spans = [(0, t1, "C0", "memorisation"), (t1, t2, "C2", "circuit formation"), (t2, t3, "C3", "cleanup")]
    for a, b, c, name in spans:
        if not (math.isnan(a) or math.isnan(b)) and b > a:
            ax.axvspan(a, min(b, end), color=c, alpha=0.08, label=name)


def run_title(d):
    """A one-line description of a run for figure titles."""
    return f"run {int(d['runs'])}: p={int(d['p'])}, seed {int(d['seed'])}, D={int(d['n_train'])}, wd={float(d['wd']):g}"


def plot_fig9(data, path):
    """Fig. 9 of the paper: train/test loss, parameter norm, and C_gen and C_mem correct-label logits over training."""
    # Fig. 9 caption: "We show loss, parameter norm, and the value of the correct logit for C_gen and
    # C_mem for a randomly-picked training run." o_m^y on test is added: there C_mem's logit is < 0.
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    he = data["hist_epoch"]
    axes[0].semilogy(he, data["hist_train_loss"], "C0", label="train loss")
    axes[0].semilogy(he, data["hist_test_loss"], "C3", label="test loss")
    axes[1].plot(he, data["hist_param_norm"], "k", label="parameter norm")
    e = data["epoch"]
    axes[2].plot(e, data["o_t"], "C2.-", label="C_gen logit $o_t^y$ (same on every input)")
    axes[2].plot(e, data["o_m_train"], "C1.-", label="C_mem logit $o_m^y$, train")
    axes[2].plot(e, data["o_m_test"], "C1.--", alpha=0.6, label="C_mem logit $o_m^y$, test")
    axes[2].axhline(0, color="gray", lw=0.6)
    axes[2].set_xlabel("epoch")
    for ax in axes:
        legend(ax, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_title("Fig. 9 (Varma et al.): " + run_title(data), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_progress_measures(data, path):
    """Nanda et al.'s progress measures over training, phases shaded; embedding Fourier norms; neuron FVE."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    e, end = data["epoch"], data["epoch"][-1]
    ax = axes[0, 0]
    shade_phases(ax, data["phases"], end)
    ax.semilogy(data["hist_epoch"], data["hist_train_loss"], "C0", label="train")
    ax.semilogy(data["hist_epoch"], data["hist_test_loss"], "C3", label="test")
    ax.semilogy(e, data["restricted_loss"], "C2.-", label="restricted (key freqs only)")
    ax.semilogy(e, data["excluded_loss"], "C1.-", label="excluded (key freqs removed, train)")
    ax.set_title("losses; phases shaded", fontsize=10)
    ax = axes[0, 1]
    shade_phases(ax, data["phases"], end)
    ax.plot(data["hist_epoch"], data["hist_param_norm"] ** 2, "k", lw=0.8, label="sum of squared weights")
    ax.plot(e, data["sum_sq"], "k.", ms=4, label="at snapshots")
    ax.set_title("sum of squared weights", fontsize=10)
    ax = axes[0, 2]
    shade_phases(ax, data["phases"], end)
    ax.plot(e, data["trig_frac"], "C2.-", label="trig share of logit norm$^2$ (App. B)")
    ax.plot(e, np.nanmean(data["neuron_fve"], axis=1), "C4.-", label="mean neuron FVE")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Fourier structure over training", fontsize=10)
    ax = axes[1, 0]
    # "Before" grokking = the end of memorisation (t1), or the first snapshot when t1 is undefined.
    t1 = data["phases"][0]
    i_before = 0 if math.isnan(t1) else int(np.argmin(np.abs(e - t1)))
    k = np.arange(data["emb_norms"].shape[-1])
    ax.bar(k - 0.2, data["emb_norms"][i_before], 0.4, color="C0", label=f"epoch {e[i_before]} (before)")
    ax.bar(k + 0.2, data["emb_norms"][-1], 0.4, color="C3", label=f"epoch {end} (after)")
    for kk in np.nonzero(data["key_mask"])[0] + 1:
        ax.axvline(kk, color="C2", lw=0.6, ls=":")
    ax.set_xlabel("frequency k (dotted: key frequencies)")
    ax.set_title("embedding norm per Fourier frequency", fontsize=10)
    ax = axes[1, 1]
    fve = data["neuron_fve"][-1]
    ax.hist(fve[~np.isnan(fve)], bins=np.linspace(0, 1, 41), color="C4")
    ax.set_xlabel("fraction of variance explained (final)")
    ax.set_title("neurons: degree-2 sin/cos of one frequency", fontsize=10)
    ax = axes[1, 2]
    img = ax.imshow(data["strength"].T, aspect="auto", origin="lower", cmap="viridis",
                    extent=(-0.5, len(e) - 0.5, 0.5, data["strength"].shape[-1] + 0.5))
    ticks = np.linspace(0, len(e) - 1, min(6, len(e))).astype(int)
    ax.set_xticks(ticks, [str(e[t]) for t in ticks])
    ax.set_xlabel("epoch (snapshots, uneven spacing)")
    ax.set_ylabel("frequency k")
    ax.set_title("share of logit norm$^2$ per frequency", fontsize=10)
    fig.colorbar(img, ax=ax)
    for ax in (axes[0, 0], axes[0, 1], axes[0, 2], axes[1, 0]):
        legend(ax, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        ax.set_xlabel("epoch")
    fig.suptitle("Progress measures (Nanda et al. 2023): " + run_title(data), fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def plot_margin(data, path):
    """Test accuracy beside test loss and the correct-minus-best-wrong logit margin (smooth while top-1 jumps)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    e = data["epoch"]
    axes[0].plot(data["hist_epoch"], data["hist_test_acc"], "C3", lw=0.8, label="test accuracy (history)")
    axes[0].plot(e, data["test_acc"], "C3o", ms=3, label="at snapshots")
    axes[0].set_title("top-1 test accuracy", fontsize=10)
    axes[1].semilogy(data["hist_epoch"], data["hist_test_loss"], "C3", label="test loss")
    axes[1].set_title("test loss", fontsize=10)
    q = data["test_margin_q"]
    axes[2].fill_between(e, q[:, 0], q[:, 2], color="C0", alpha=0.2, label="10-90% of test inputs")
    axes[2].plot(e, data["test_margin"], "C0.-", label="mean test margin")
    axes[2].plot(e, q[:, 1], "C0:", label="median")
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set_title("correct logit minus best wrong logit (> 0: top-1 right)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch")
        legend(ax, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy is a threshold on a smoothly moving margin: " + run_title(data), fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def plot_fig3(data, path):
    """Fig. 3 of the paper: C_mem and C_gen scatter plots (logit vs norm, colour D) and isologit curves (norm vs D)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    n = int(data["buckets"])
    for row, (name, what) in enumerate((("mem", "C_mem"), ("gen", "C_gen"))):
        logit, norm, D = data[f"{name}_logit"], data[f"{name}_norm"], data[f"{name}_D"]
        ax = axes[row, 0]
        if len(logit):
            sc = ax.scatter(norm, logit, c=D, cmap="viridis", s=14,
                            norm=matplotlib.colors.LogNorm() if D.min() > 0 and D.max() > D.min() else None)
            fig.colorbar(sc, ax=ax, label="dataset size D")
        bucket, edges = geometric_buckets(logit, n)
        for v in edges:
            ax.axhline(v, color="gray", ls=":", lw=0.7)
        ax.set_xlabel("parameter norm")
        ax.set_ylabel("correct logit $o^y$")
        ax.set_title(f"({'ac'[row]}) {what} scatter ({len(logit)} runs)", fontsize=10)
        ax = axes[row, 1]
        colours = plt.cm.plasma(np.linspace(0, 0.9, n))
        for b, (xs, ys) in enumerate(bucket_curves(D, norm, bucket, n)):
            if len(xs):
                ax.plot(xs, ys, "o-", color=colours[b], label=f"logit {edges[b]:.3g}-{edges[b + 1]:.3g}")
        ax.set_xlabel("dataset size D")
        ax.set_ylabel("mean parameter norm")
        ax.set_title(f"({'bd'[row]}) {what} isologit curves", fontsize=10)
        legend(ax, fontsize=7)
        for a in axes[row]:
            a.grid(alpha=0.3)
    fig.suptitle(f"Fig. 3 (Varma et al.): C_mem = random-label runs; C_gen = true-label runs with > "
                 f"{float(data['min_trig']):.0%} trig logit norm ({int(data['n_dropped'])} runs below, left out)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_fig10(data, path):
    """Fig. 10 of the paper: logit ratio o_t^y/o_m^y and test accuracy against D, coloured by parameter-norm bucket."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    n = len(data["edges"]) - 1
    colours = plt.cm.viridis(np.linspace(0, 0.9, n))
    pos = data["ratio"] > 0  # a log axis shows positive ratios only; the title counts the others
    for b in range(n):
        sel = data["bucket"] == b
        label = f"P {data['edges'][b]:.3g}-{data['edges'][b + 1]:.3g}"
        for ax, y, ok in ((axes[0], data["ratio"], pos), (axes[1], data["test_acc"], np.ones_like(pos))):
            if not (sel & ok).any():
                continue
            ax.scatter(data["D"][sel & ok], y[sel & ok], color=colours[b], s=12, label=label)
            xs = np.unique(data["D"][sel & ok])
            ax.plot(xs, [np.median(y[sel & ok & (data["D"] == v)]) for v in xs], color=colours[b], lw=1)
    axes[0].set_yscale("log")
    axes[0].set_title(f"(a) logit ratio $o_t^y/o_m^y$ (train; {int((~pos).sum())} non-positive not shown)", fontsize=10)
    axes[1].set_title("(b) test accuracy", fontsize=10)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("dataset size D")
        ax.grid(alpha=0.3)
        legend(ax, fontsize=7, title="parameter norm", title_fontsize=7)
    fig.suptitle("Fig. 10 (Varma et al.): relative strength of C_gen and C_mem at convergence "
                 "(lines: median per D)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# -----------------------------------------------------------------------------
# The experiments of Sec. 5 from run histories: Fig. 1, Fig. 4, Fig. 7 and the tests of P2, P3
# (these read only history.npz and config.json, so they work for every task, not only addition)


def run_curves(run, r, title):
    """Train/test accuracy and loss of run r over epochs, with a title: the data of one Fig. 1 panel."""
    h = run["hist"]
    return dict(epoch=h["epoch"], train_acc=h["train_acc"][r], test_acc=h["test_acc"][r],
                train_loss=h["train_loss"][r], test_loss=h["test_loss"][r], title=np.array(title))


def plot_fig1(data, path):
    """One panel of Fig. 1 of the paper: train and test accuracy (and loss) over epochs, log axis."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    e = np.maximum(data["epoch"], 1)  # epoch 0 on a log axis: drawn at 1
    ax.plot(e, data["train_acc"], label="train", color="C0")
    ax.plot(e, data["test_acc"], label="test", color="C3")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    bx.plot(e, data["train_loss"], label="train", color="C0")
    bx.plot(e, data["test_loss"], label="test", color="C3")
    bx.set_yscale("log")
    bx.set_ylabel("loss")
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
        legend(a, fontsize=8)
    fig.suptitle(str(data["title"]), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def final_table(run):
    """Per run of a directory: D, weight decay, seed and the final train/test accuracy (last record)."""
    h, runs = run["hist"], run["runs"]
    return dict(D=np.array(runs["n_train"]), wd=np.array(runs["wd"]), seed=np.array(runs["seed"]),
                train_acc=h["train_acc"][:, -1], test_acc=h["test_acc"][:, -1])


def crossing(D, acc, level=0.5):
    """The dataset size where accuracy first rises through `level`, interpolated on log D (nan if never)."""
    order = np.argsort(D)
    D, acc = np.asarray(D, float)[order], np.asarray(acc, float)[order]
    for i in range(1, len(D)):
        if acc[i - 1] < level <= acc[i]:
            f = (level - acc[i - 1]) / (acc[i] - acc[i - 1])
            return float(np.exp(np.log(D[i - 1]) + f * (np.log(D[i]) - np.log(D[i - 1]))))
    return float("nan")


def mean_by(D, acc):
    """Mean accuracy per distinct D (over seeds): (sorted D values, means)."""
    xs = np.unique(D)
    return xs, np.array([acc[D == x].mean() for x in xs])


def test_p2(table, low=0.2, high=0.9, max_ratio=3.0):
    """P2, a phase transition in D': accuracy goes from < low to > high within a factor max_ratio of D'."""
    # Sec. 5.2: "if we plot test accuracy at convergence against the size of the reduced training
    # dataset D', there will be a phase transition around D_crit." Our test, per weight decay:
    # the mean final test accuracy is below `low` at the smallest D', above `high` at the largest,
    # and the largest D' still below `low` and the smallest D' above `high` lie within a factor
    # max_ratio of each other (a sharp transition rather than a slow drift).
    rows, held = [], []
    for wd in np.unique(table["wd"]):
        sel = table["wd"] == wd
        xs, ys = mean_by(table["D"][sel], table["test_acc"][sel])
        lo, hi = xs[ys < low], xs[ys > high]
        ratio = (hi.min() / lo.max()) if len(lo) and len(hi) and hi.min() > lo.max() else float("nan")
        ok = bool(ys[0] < low and ys[-1] > high and ratio <= max_ratio)
        held.append(ok)
        rows.append(dict(wd=float(wd), acc_smallest=float(ys[0]), acc_largest=float(ys[-1]), width=ratio))
    return dict(held=bool(held) and all(held), rows=rows, low=low, high=high, max_ratio=max_ratio)


def test_p3(table, level=0.5, max_spread=1.5):
    """P3, no effect of weight decay: the D' where accuracy crosses `level` agrees across weight decays."""
    # Sec. 5.2: "we predict that test accuracy at convergence is independent of the strength of
    # weight decay." Our test: the crossing D' (interpolated on log D') for each weight decay lies
    # within a factor max_spread between the smallest and the largest.
    wds = np.unique(table["wd"])
    cross = np.array([crossing(*mean_by(table["D"][table["wd"] == w], table["test_acc"][table["wd"] == w]), level)
                      for w in wds])
    ok = np.isfinite(cross).all() and len(wds) >= 2
    spread = float(cross.max() / cross.min()) if ok else float("nan")
    # Without a crossing for every weight decay (the grid of D' does not bracket the transition)
    # or with a single weight decay, the data cannot test P3 either way.
    return dict(held=bool(ok and spread <= max_spread), wds=wds, crossing=cross, spread=spread,
                level=level, max_spread=max_spread, enough=bool(ok))


def semi_grok_table(run, tail=0.1, near=0.99, low=0.2, high=0.9, min_rise=0.15, delay=5.0, max_drift=0.1):
    """Per run of a directory: when train accuracy became near-perfect, test accuracy then and at the
    end, when the test rise came, and the outcome (0 none, 1 semi-grokked, 2 grokked, 3 transient)."""
    # Sec. 5.3: "(P4) ... we should observe a transition to middling test accuracy well after
    # near-perfect train accuracy." Readings taken: near-perfect train accuracy is >= `near`; the
    # final test accuracy is the mean over the last `tail` of the records in epochs (spikes, Fig. 1c,
    # would otherwise decide it); middling is within [low, high]; a transition is a rise of at least
    # min_rise over the test accuracy at near-perfect train accuracy, whose half-way point comes at
    # least `delay` times later than near-perfect train accuracy ("well after"). P4 speaks of the
    # network "at convergence": a middling run counts as semi-grokked only if its test accuracy
    # has settled, moving by at most max_drift over the second half of training (the same tail
    # window ending at half the epochs); one still moving is transient (Fig. 5: "transient
    # semi-grokking").
    h = run["hist"]
    e = h["epoch"]
    last = e >= e[-1] - tail * e[-1]
    mid = (e >= (0.5 - tail) * e[-1]) & (e <= 0.5 * e[-1])
    rows = {k: [] for k in ("D", "seed", "wd", "t_train", "acc_then", "acc_mid", "acc_final", "t_rise", "outcome")}
    for r in range(len(run["runs"]["seed"])):
        tr, te = h["train_acc"][r], h["test_acc"][r]
        fit = np.flatnonzero(tr >= near)
        t_tr = float(e[fit[0]]) if len(fit) else float("nan")
        then = float(te[fit[0]]) if len(fit) else float("nan")
        final = float(te[last].mean())
        at_mid = float(te[mid].mean()) if mid.any() else float("nan")
        half = then + 0.5 * (final - then)
        after = np.flatnonzero((te >= half) & (e >= (t_tr if len(fit) else np.inf)))
        t_rise = float(e[after[0]]) if len(after) and final - then >= min_rise else float("nan")
        if not len(fit) or final < low:
            outcome = 0
        elif final > high:
            outcome = 2
        elif not (np.isfinite(t_rise) and t_rise >= delay * max(t_tr, 1.0)):
            outcome = 0  # middling, but not by a delayed rise
        else:  # a delayed rise to middling accuracy: settled, or still moving
            outcome = 1 if abs(final - at_mid) <= max_drift else 3
        for k, v in zip(rows, (run["runs"]["n_train"][r], run["runs"]["seed"][r], run["runs"]["wd"][r],
                               t_tr, then, at_mid, final, t_rise, outcome)):
            rows[k].append(v)
    out = {k: np.array(v) for k, v in rows.items()}
    out.update(near=near, low=low, high=high, min_rise=min_rise, delay=delay, tail=tail, max_drift=max_drift)
    return out


def test_p4(semi):
    """P4: at least one run semi-grokked (a delayed rise to middling test accuracy, see semi_grok_table)."""
    # Sec. 5.3: "Out of 200 runs, at least 6 show clear semi-grokking at the end of training."
    # One run is enough to show that semi-grokking happens; the counts go into results.md.
    n = len(semi["outcome"])
    counts = {name: int((semi["outcome"] == k).sum())
              for k, name in enumerate(("none", "semi", "grokked", "transient"))}
    # Without a run that fits its training set, nothing here could have semi-grokked either way.
    fitted = int(np.isfinite(semi["t_train"]).sum())
    return dict(held=counts["semi"] > 0, enough=fitted > 0, runs=n, fitted=fitted, **counts)


def plot_fig4(data, path):
    """Fig. 4 of the paper: final test accuracy after ungrokking against the reduced size D', a line per weight decay."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, wd in enumerate(np.unique(data["wd"])):
        sel = data["wd"] == wd
        ax.scatter(data["D"][sel], data["test_acc"][sel], color=f"C{i}", s=10, alpha=0.5)
        xs, ys = mean_by(data["D"][sel], data["test_acc"][sel])
        ax.plot(xs, ys, color=f"C{i}", marker="o", ms=3, label=f"wd = {wd:g}")
    ax.set_xscale("log")
    ax.set_xlabel("reduced dataset size D'")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    legend(ax, fontsize=8)
    ax.set_title(str(data["title"]), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_fig7(data, path):
    """Fig. 7 of the paper: test accuracy over epochs of every ungrokking run, coloured by D'."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    norm = matplotlib.colors.LogNorm(data["D"].min(), data["D"].max())
    e = np.maximum(data["epoch"], 1)
    for r in range(len(data["D"])):
        ax.plot(e, data["test_acc"][r], color=plt.cm.viridis(norm(data["D"][r])), lw=0.8, alpha=0.8)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="D'")
    ax.set_xscale("log")
    ax.set_xlabel("epoch (after the switch to D')")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(str(data["title"]), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_fig5(data, path):
    """Fig. 5 of the paper: test accuracy over epochs of every semi-grokking run, coloured by final accuracy."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    e = np.maximum(data["epoch"], 1)
    for r in np.argsort(data["acc_final"]):  # the most generalising runs drawn last, on top
        ax.plot(e, data["test_acc"][r], color=plt.cm.viridis(data["acc_final"][r]), lw=0.8, alpha=0.8)
    fig.colorbar(plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap="viridis"), ax=ax,
                 label="final test accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(str(data["title"]), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_fig6(data, path):
    """Fig. 6 of the paper: one semi-grokking run in detail: accuracy, loss and parameter norm over epochs."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    e = np.maximum(data["epoch"], 1)
    for ax, what in zip(axes[:2], ("acc", "loss")):
        ax.plot(e, data[f"train_{what}"], label="train", color="C0")
        ax.plot(e, data[f"test_{what}"], label="test", color="C3")
        ax.set_ylabel("accuracy" if what == "acc" else "loss")
        legend(ax, fontsize=8)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_yscale("log")
    axes[2].plot(e, data["param_norm"], color="k")
    axes[2].set_ylabel("parameter norm")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(str(data["title"]), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_fig8(data, path):
    """Fig. 8 of the paper: final test accuracy after ungrokking against D', one panel per task, a line per wd."""
    tasks = list(dict.fromkeys(str(t) for t in data["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        on = data["task"] == task
        for i, wd in enumerate(np.unique(data["wd"][on])):
            sel = on & (data["wd"] == wd)
            xs, ys = mean_by(data["D"][sel], data["test_acc"][sel])
            ax.plot(xs, ys, color=f"C{i}", marker="o", ms=3, label=f"wd = {wd:g}")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("reduced dataset size D'")
        ax.set_title(f"{task} ({grok.TASKS[task]})", fontsize=9)
        ax.grid(alpha=0.3)
        legend(ax, fontsize=7)
    axes[0, 0].set_ylabel("final test accuracy")
    fig.suptitle(str(data["title"]), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def experiment_fig1a(run_dir, out):
    """Fig. 1a from the standard grokking run (run 0 of the directory)."""
    run = load_run(run_dir)
    c = run["cfg"]
    D = run["runs"]["n_train"][0]
    title = (f"Fig. 1a: grokking, {c['task']} mod {c['p']}, D={D} ({100 * D / run['n_pairs']:.0f}% of pairs), "
             f"wd={run['runs']['wd'][0]:g}")
    plot_fig1(run_curves(run, 0, title), os.path.join(out, "fig1a_grokking.png"))


def ungrok_table(run_dirs):
    """The final_table of several ungrokking directories (one per weight decay), concatenated."""
    tables = [final_table(load_run(d)) for d in run_dirs]
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def experiment_fig4(run_dirs, out):
    """Fig. 4, Fig. 7 and Fig. 1b from ungrokking sweeps (grok.py --init-from a grokked run), one dir per wd."""
    # reproduce.sh runs each weight decay for epochs proportional to 1/wd: AdamW shrinks weights by
    # a factor (1 - lr*wd) per step, so equal lr*wd*epochs gives every weight decay the same
    # amount of decay, the clock on which C_gen gives way to C_mem.
    runs = [load_run(d) for d in run_dirs]
    table = ungrok_table(run_dirs)
    c = runs[0]["cfg"]
    decay = ", ".join(f"wd={r['runs']['wd'][0]:g}: {r['cfg']['epochs']} epochs" for r in runs)
    tag = f"{c['task']} mod {c['p']};\n{decay}"
    plot_fig4(dict(table, title=np.array(f"Fig. 4: ungrokking ({tag})")), os.path.join(out, "fig4_ungrokking.png"))
    first = runs[0]  # the smallest weight decay's directory: the longest run, for Fig. 7 and Fig. 1b
    t1 = final_table(first)
    plot_fig7(dict(epoch=first["hist"]["epoch"], test_acc=first["hist"]["test_acc"], D=t1["D"],
                   title=np.array(f"Fig. 7: ungrokking runs, wd={t1['wd'][0]:g}, {c['task']} mod {c['p']}")),
              os.path.join(out, "fig7_ungrokking_runs.png"))
    r = int(np.argmin(t1["D"]))  # the smallest D': the clearest ungrokking
    plot_fig1(run_curves(first, r, f"Fig. 1b: ungrokking, a grokked network trained further on D'={t1['D'][r]} "
                                   f"(wd={t1['wd'][r]:g}, {c['task']} mod {c['p']})"),
              os.path.join(out, "fig1b_ungrokking.png"))
    grok.save_npz(table, os.path.join(out, "fig4_ungrokking.npz"))


def semi_tables(run_dirs):
    """semi_grok_table over several directories, concatenated, with each run's curves [runs, T]."""
    runs = [load_run(d) for d in run_dirs]
    epochs = runs[0]["hist"]["epoch"]
    if any(len(r["hist"]["epoch"]) != len(epochs) or (r["hist"]["epoch"] != epochs).any() for r in runs):
        raise ValueError("semi-grokking directories must record the same epochs (same --epochs and log flags)")
    tables = [semi_grok_table(r) for r in runs]
    out = {k: (np.concatenate([t[k] for t in tables]) if isinstance(v, np.ndarray) else v)
           for k, v in tables[0].items()}
    for k in ("train_acc", "test_acc", "train_loss", "test_loss", "param_norm"):
        out[k] = np.concatenate([r["hist"][k] for r in runs])
    out["epoch"] = epochs
    return out, runs[0]["cfg"]


def pick_semi_run(semi):
    """The run shown in Fig. 1c and Fig. 6, and a note saying which: a semi-grokked run if any, else a
    transient one, else any run; among those, the one whose final test accuracy is nearest 0.5."""
    for outcome, why in ((1, "semi-grokked"), (3, "no run semi-grokked; a transient one"),
                         (None, "no run semi-grokked; the run nearest 0.5 final test accuracy")):
        pool = np.flatnonzero(semi["outcome"] == outcome) if outcome else np.arange(len(semi["outcome"]))
        if len(pool):
            return int(pool[np.argmin(np.abs(semi["acc_final"][pool] - 0.5))]), why


def experiment_semi(run_dirs, out):
    """Fig. 5, Fig. 6 and Fig. 1c from a semi-grokking sweep: runs from scratch at D near D_crit."""
    semi, c = semi_tables(run_dirs)
    tag = f"{c['task']} mod {c['p']}, {c['epochs']} epochs"
    plot_fig5(dict(semi, title=np.array(f"Fig. 5: semi-grokking sweep, {len(semi['D'])} runs, D in "
                                        f"[{semi['D'].min()}, {semi['D'].max()}] ({tag})")),
              os.path.join(out, "fig5_semi_grokking.png"))
    r, why = pick_semi_run(semi)
    curves = {k: semi[k][r] for k in ("train_acc", "test_acc", "train_loss", "test_loss", "param_norm")}
    what = f"D={semi['D'][r]}, seed {semi['seed'][r]}, wd={semi['wd'][r]:g}, {tag}; {why}"
    plot_fig1(dict(curves, epoch=semi["epoch"], title=np.array(f"Fig. 1c: semi-grokking ({what})")),
              os.path.join(out, "fig1c_semi_grokking.png"))
    plot_fig6(dict(curves, epoch=semi["epoch"], title=np.array(f"Fig. 6: one semi-grokking run ({what})")),
              os.path.join(out, "fig6_semi_grokking_run.png"))
    grok.save_npz({k: np.asarray(v) for k, v in semi.items()}, os.path.join(out, "fig5_semi_grokking.npz"))


def experiment_fig8(run_dirs, out):
    """Fig. 8 from ungrokking sweeps on several tasks (one directory per task and weight decay)."""
    runs = [load_run(d) for d in run_dirs]
    tables = [final_table(r) for r in runs]
    data = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    data["task"] = np.concatenate([[r["cfg"]["task"]] * len(t["D"]) for r, t in zip(runs, tables)])
    decay = sorted({(r["runs"]["wd"][0], r["cfg"]["epochs"]) for r in runs})
    c = runs[0]["cfg"]
    title = (f"Fig. 8: ungrokking on other tasks, mod {c['p']}; " +
             ", ".join(f"wd={w:g}: {e} epochs" for w, e in decay))
    plot_fig8(dict(data, title=np.array(title)), os.path.join(out, "fig8_ungrokking_tasks.png"))
    grok.save_npz(data, os.path.join(out, "fig8_ungrokking_tasks.npz"))


# -----------------------------------------------------------------------------
# results.md: every claim's test, computed from the saved outputs of reproduce.sh


def toy_ingredients(csv_path, delay=5.0):
    """The toy model's three ingredients (Fig. 2) from toy_sim.py's CSV: grokking step per preset and verdicts."""
    # Fig. 2 captions: (a) "we observe grokking"; (b) "test loss stays high ... throughout training";
    # (c) "test loss decreases immediately". Our test: the step where test loss first falls below
    # half its peak is at least `delay` times that of train loss in (a), never comes in (b), and
    # comes within twice the train step in (c).
    cols = np.genfromtxt(csv_path, delimiter=",", names=True)

    def half_peak(x):
        peak = int(np.argmax(x))
        below = np.flatnonzero(x[peak:] < 0.5 * x[peak])
        return float(cols["step"][peak + below[0]]) if len(below) else float("nan")
    t = {k: (half_peak(cols[f"{k}_train"]), half_peak(cols[f"{k}_test"])) for k in "abc"}
    held = (t["a"][1] >= delay * t["a"][0]) and math.isnan(t["b"][1]) and (t["c"][1] <= 2 * t["c"][0])
    return dict(steps=t, held=bool(held), delay=delay)


def source_dir(run_dir):
    """The run directory a --init-from run started from; a sibling of the same name if the folder moved."""
    path = load_run(run_dir)["cfg"]["init_from"]
    sibling = os.path.join(os.path.dirname(os.path.abspath(run_dir)), os.path.basename(os.path.normpath(path)))
    return path if os.path.isdir(path) or not os.path.isdir(sibling) else sibling


def init_note(run_dir):
    """Where an ungrokking sweep started from, for results.md (the paper starts from every pair)."""
    src = load_run(source_dir(run_dir))
    D, n = src["runs"]["n_train"][0], src["n_pairs"]
    return (f"This project ungroks from {len(src['runs']['seed'])} grokked network(s) trained on D={D} of the "
            f"{n} pairs ({100 * D / n:.0f}%)" + ("." if D == n else ", not on every pair as the paper does."))


def verdict(held, enough=True):
    """The verdict word of results.md."""
    return "not enough data" if not enough else ("held" if held else "did not hold")


def subset(table, sel):
    """The rows sel of a dict of equal-length arrays."""
    return {k: v[sel] for k, v in table.items()}


def dcrit_per_seed(table, level=0.5):
    """D' where each (weight decay, seed)'s final test accuracy crosses `level`: list of (wd, seed, D')."""
    return [(float(w), int(s), crossing(table["D"][sel], table["test_acc"][sel], level))
            for w in np.unique(table["wd"]) for s in np.unique(table["seed"])
            for sel in [(table["wd"] == w) & (table["seed"] == s)]]


def dcrit_lines(out):
    """results.md's D_crit section (per weight decay and seed, from the ungrokking sweeps of addition)
    and its rows for the summary table: (lines, rows)."""
    # D_crit is where C_gen and C_mem are equally efficient (Sec. 4.1). Its estimate here: the D'
    # at which the final test accuracy after ungrokking crosses 0.5, interpolated on log D'
    # (`crossing`), for each weight decay and network seed; the spread is the range over seeds.
    L = ["Estimate: the D' where final test accuracy after ungrokking crosses 0.5, interpolated on log D', "
         "for each weight decay and network seed; spread = smallest-largest over seeds.", ""]
    sources, rows_out = [], []
    u = [os.path.join(out, "runs", d) for d in sorted(os.listdir(os.path.join(out, "runs")))
         if d.startswith("ungrok_wd")] if os.path.isdir(os.path.join(out, "runs")) else []
    u = [d for d in u if os.path.exists(os.path.join(d, "params.pt"))]
    if u:
        g = load_run(source_dir(u[0]))
        sources.append((f"p={load_run(u[0])['cfg']['p']} (fig4; one network seed, from D={g['runs']['n_train'][0]})",
                        ungrok_table(u)))
    f8 = os.path.join(out, "fig8_ungrokking_tasks.npz")
    if os.path.exists(f8):
        d8 = load_npz(f8)
        if (d8["task"] == "add").any():
            p8 = load_run(os.path.join(out, "runs", "full_add"))["cfg"]["p"]
            sources.append((f"p={p8} (fig8; from networks trained on every pair)", subset(d8, d8["task"] == "add")))
    if not sources:
        return L + ["No ungrokking runs of addition. **Not enough data.**", ""], rows_out
    L += ["| modulus | weight decay | D_crit (mean over seeds) | spread over seeds | seeds |",
          "| --- | --- | --- | --- | --- |"]
    for name, t in sources:
        rows = dcrit_per_seed(t)
        for w in sorted({r[0] for r in rows}):
            xs = np.array([r[2] for r in rows if r[0] == w])
            ok = xs[np.isfinite(xs)]
            mean = f"{ok.mean():.0f}" if len(ok) else "no crossing"
            spread = f"{ok.min():.0f}-{ok.max():.0f}" if len(ok) > 1 else "-"
            L.append(f"| {name} | {w:g} | {mean} | {spread} | {len(ok)} of {len(xs)} crossed |")
        pooled = np.array([r[2] for r in rows])
        if np.isfinite(pooled).any():
            p113 = name.startswith("p=113")
            rows_out.append((f"D_crit, {name.split(' ')[0]} (mean over wd and seeds)", f"{np.nanmean(pooled):.0f}",
                          "~800-1000 at 70% (App. A.2)" if p113 else "- (p=113 only)", f"{len(np.unique(t['seed']))}",
                          "fig4_ungrokking.png" if p113 else "fig8_ungrokking_tasks.png"))
    L += ["", "Paper: D_crit is not given as one number; the ungrokking runs reach \"a test accuracy of ~0.7 with "
          "a dataset size of around 800-1000\" and semi-grokking runs sit in [1500, 2050] (App. A.2, Sec. 5.3) at "
          "p=113. D_crit grows with the modulus, so only figures at the same p compare.", ""]
    return L, rows_out


def report_lines(out, profile):
    """results.md for a reproduce.sh output folder: one section per claim, numbers from the saved runs."""
    runs = os.path.join(out, "runs")
    L = [f"# Results of `./reproduce.sh {profile}`", "",
         "Every number below is computed by `analysis.py --report` from the files this run wrote; "
         "nothing is typed in by hand. Thresholds are stated with each test.", ""]
    times = os.path.join(out, "stage_times.txt")
    if os.path.exists(times):
        L += ["Stage times on this machine: " + ", ".join(f"{a} {int(b)} s" for a, b in
                                                         (line.split() for line in open(times) if line.strip())), ""]
    table = [("quantity", "this project", "the paper", "seeds", "figure")]

    L += ["## The toy model's three ingredients (Sec. 3, Fig. 2)", ""]
    csv = os.path.join(out, "fig2_toy.csv")
    if os.path.exists(csv):
        toy = toy_ingredients(csv)
        fmt = lambda x: "never" if math.isnan(x) else f"{x:.0f}"
        for k, name in zip("abc", ("all three ingredients", "C_gen less efficient", "equal learning speed")):
            L.append(f"- ({k}) {name}: train loss below half its peak at step {fmt(toy['steps'][k][0])}, "
                     f"test loss at step {fmt(toy['steps'][k][1])}")
        L += ["", f"Test: (a) test step >= {toy['delay']:g} x train step; (b) never; (c) test step <= 2 x train step.",
              f"**Verdict: {verdict(toy['held'])}.** Paper (Fig. 2): \"we only get grokking when C_gen is learned "
              "more slowly than C_mem\". Figure: `fig2_toy.png`.", ""]
        table.append(("toy: test-loss drop step (a)", fmt(toy["steps"]["a"][1]), "delayed (Fig. 2a)", "-", "fig2_toy.png"))
    else:
        L += ["Not run (stage fig2). **Verdict: not enough data.**", ""]

    L += ["## Grokking (Fig. 1a)", ""]
    gdir = os.path.join(runs, "grok")
    if os.path.exists(os.path.join(gdir, "params.pt")):
        g = load_run(gdir)
        e, tr, te = g["hist"]["epoch"], g["hist"]["train_acc"][0], g["hist"]["test_acc"][0]
        first = lambda a: float(e[np.argmax(a >= 0.99)]) if (a >= 0.99).any() else float("nan")
        t_tr, t_te = first(tr), first(te)
        held = bool(np.isfinite(t_te) and t_te >= 10 * t_tr)
        L += [f"Train accuracy first >= 0.99 at epoch {t_tr:.0f}; test accuracy at epoch {t_te:.0f} "
              f"(D={g['runs']['n_train'][0]}, wd={g['runs']['wd'][0]:g}).", "",
              "Test: test accuracy reaches 0.99 at least 10x later than train accuracy.",
              f"**Verdict: {verdict(held)}.** Paper: grokking is the delayed rise of test accuracy (Fig. 1a). "
              "Figures: `fig1a_grokking.png`, `analysis_grok/fig9_run0.png`.", ""]
        table.append(("epoch of 99% test acc. (train)", f"{t_te:.0f} ({t_tr:.0f})", "delayed (Fig. 1a)", "1",
                      "fig1a_grokking.png"))
    else:
        L += ["Not run (stage fig1a). **Verdict: not enough data.**", ""]

    L += ["## P2 and P3: ungrokking (Sec. 5.2, Fig. 4)", ""]
    udirs = sorted(os.path.join(runs, d) for d in (os.listdir(runs) if os.path.isdir(runs) else [])
                   if d.startswith("ungrok_wd") and os.path.exists(os.path.join(runs, d, "params.pt")))
    if udirs:
        u = ungrok_table(udirs)
        p2, p3 = test_p2(u), test_p3(u)
        for row in p2["rows"]:
            L.append(f"- wd={row['wd']:g}: final test accuracy {row['acc_smallest']:.3f} at the smallest D' "
                     f"({u['D'].min()}), {row['acc_largest']:.3f} at the largest ({u['D'].max()}); transition "
                     f"width (D' above {p2['high']} / D' below {p2['low']}) = {row['width']:.2f}")
        L += ["", f"P2 test: for every weight decay, accuracy < {p2['low']} at the smallest D', > {p2['high']} "
              f"at the largest, and the transition within a factor {p2['max_ratio']:g} of D'.",
              f"**P2 verdict: {verdict(p2['held'])}.** Paper (Fig. 4): \"We see a sharp transition from strong "
              "test accuracy to near-zero test accuracy\".", ""]
        cross = ", ".join(f"wd={w:g}: {c:.0f}" for w, c in zip(p3["wds"], p3["crossing"]))
        L += [f"D' where mean final test accuracy crosses {p3['level']}: {cross}; largest / smallest = {p3['spread']:.2f}.",
              "", f"P3 test: that crossing agrees within a factor {p3['max_spread']:g} across weight decays.",
              f"**P3 verdict: {verdict(p3['held'], p3['enough'])}.** Paper (Fig. 4): \"independent of weight decay "
              "(different coloured lines almost perfectly overlap)\". Figures: `fig4_ungrokking.png`, "
              "`fig7_ungrokking_runs.png`, `fig1b_ungrokking.png`.", ""]
        L += [init_note(udirs[0]), ""]
        widths = [row["width"] for row in p2["rows"]]
        table.append(("P2: transition width in D' (acc. < 0.2 to > 0.9), widest over wd",
                      f"{max(widths):.2f}x" if np.isfinite(widths).all() else "no transition",
                      "sharp (Fig. 4)", "1", "fig4_ungrokking.png"))
        table.append(("P3: spread over weight decays of the D' at 0.5 test acc.", f"{p3['spread']:.2f}x",
                      "lines overlap (Fig. 4)", "-", "fig4_ungrokking.png"))
    else:
        L += ["Not run (stage fig4). **Verdicts P2, P3: not enough data.**", ""]

    L += ["## P1: efficiency against dataset size (Sec. 5.1, Fig. 3)", ""]
    eff = os.path.join(out, "efficiency", "efficiency.npz")
    if os.path.exists(eff):
        eff_table = load_npz(eff)
        tri = fig3_triples(eff_table)
        p1 = test_p1(tri)
        fmt_D = lambda D: ", ".join(str(int(d)) for d in np.unique(D)) or "none"
        L += [f"- C_mem-only (random labels): {p1['n_mem']} runs at D = {fmt_D(tri['mem_D'])}; fit "
              f"log P = a + b log o + c log D gives c_mem = {p1['c_mem']:.3f} (b = {p1['b_mem']:.3f})",
              f"- C_gen-only (true labels, > {float(tri['min_trig']):.0%} of the logit norm trigonometric): "
              f"{p1['n_gen']} runs at D = {fmt_D(tri['gen_D'])}; c_gen = {p1['c_gen']:.3f} (b = {p1['b_gen']:.3f}); "
              f"{int(tri['n_dropped'])} true-label runs below the threshold left out", "",
              f"P1 test: c is the growth of the parameter norm with D at a fixed logit; P1 holds when c_mem >= "
              f"{p1['min_mem']:g} and |c_gen| <= {p1['max_gen']:g}.",
              f"**P1 verdict: {verdict(p1['held'], p1['enough'])}.** Paper (Fig. 3 caption): \"C_mem requires larger "
              "parameter norm to produce the same logits as dataset size increases, and ... C_gen uses the same "
              "parameter norm to produce fixed logits, irrespective of dataset size.\" Figure: `fig3_efficiency.png`.",
              "", "This project's C_gen-only runs continue the one grokked network at other D and weight decays "
              "(and include the ungrokking runs that stay trigonometric); the paper trains them from scratch over "
              "seeds, so the spread over seeds that it reports is absent here.", ""]
        table.append(("P1: norm growth with D at fixed logit, C_mem / C_gen", f"{p1['c_mem']:.3f} / {p1['c_gen']:.3f}",
                      "up (Fig. 3b) / flat (Fig. 3d)", f"{len(np.unique(eff_table['seed']))}",
                      "fig3_efficiency.png"))
    else:
        L += ["Not run (stage fig3). **Verdict: not enough data.**", ""]

    L += ["## P4: semi-grokking (Sec. 5.3, Fig. 5, 6, 1c)", ""]
    semi_npz = os.path.join(out, "fig5_semi_grokking.npz")
    if os.path.exists(semi_npz):
        semi = load_npz(semi_npz)
        p4 = test_p4(semi)
        c = load_run(os.path.join(runs, "semi"))["cfg"]
        r, why = pick_semi_run(semi)
        L += [f"{p4['runs']} runs from scratch ({c['task']} mod {c['p']}, D in [{semi['D'].min()}, {semi['D'].max()}], "
              f"{c['epochs']} epochs): {p4['grokked']} grokked (final test accuracy > {float(semi['high']):g}), "
              f"{p4['semi']} semi-grokked, {p4['transient']} transient (middling but still moving), "
              f"{p4['none']} neither.", "",
              "| D | seed | train acc >= 0.99 at | test acc then | at half the epochs | final | rise half-way at "
              "| outcome |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for i in np.argsort(semi["D"] * 1000 + semi["seed"]):
            L.append(f"| {semi['D'][i]} | {semi['seed'][i]} | {semi['t_train'][i]:.0f} | {semi['acc_then'][i]:.3f} | "
                     f"{semi['acc_mid'][i]:.3f} | {semi['acc_final'][i]:.3f} | {semi['t_rise'][i]:.0f} | "
                     f"{('none', 'semi-grokked', 'grokked', 'transient')[int(semi['outcome'][i])]} |")
        L += ["", f"P4 test: a run semi-groks when its final test accuracy (mean over the last "
              f"{float(semi['tail']):.0%} of epochs) lies in [{float(semi['low']):g}, {float(semi['high']):g}] and got "
              f"there by a rise of at least {float(semi['min_rise']):g} over its test accuracy at near-perfect train "
              f"accuracy (>= {float(semi['near']):g}), half-way at least {float(semi['delay']):g}x later, and has "
              f"settled: it moved by at most {float(semi['max_drift']):g} over the second half of training "
              "(otherwise: transient). P4 holds when at least one run semi-groks.",
              f"**P4 verdict: {verdict(p4['held'], p4['enough'])}.** Paper (Fig. 5 caption): \"Out of 200 runs, at "
              "least 6 show clear semi-grokking at the end of training\"; Fig. 1c reaches \"test accuracy of 83%\". "
              f"Figures: `fig5_semi_grokking.png`, `fig6_semi_grokking_run.png`, `fig1c_semi_grokking.png` "
              f"(D={semi['D'][r]}, seed {semi['seed'][r]}: {why}).", "",
              f"The paper semi-groks at p=113 over up to 3e7 epochs; " + (
                  f"this profile uses p={c['p']} and {c['epochs']} epochs, so its runs show where they are at the "
                  "end of a short run: a middling run may still be rising (transient semi-grokking, Fig. 5)."
                  if c["p"] != 113 or c["epochs"] < 10 ** 6 else "this profile matches it."), ""]
        table.append(("P4: semi-grokked runs / runs", f"{p4['semi']} / {p4['runs']} (p={c['p']})",
                      ">= 6 / 200 (Fig. 5)", f"{len(np.unique(semi['seed']))}", "fig5_semi_grokking.png"))
    else:
        L += ["Not run (stage fig5). **Verdict: not enough data.**", ""]

    L += ["## Ungrokking on other tasks (App. A.2, Fig. 8)", ""]
    f8 = os.path.join(out, "fig8_ungrokking_tasks.npz")
    if os.path.exists(f8):
        d8 = load_npz(f8)
        for task in dict.fromkeys(str(t) for t in d8["task"]):
            on = d8["task"] == task
            p2, p3 = test_p2(subset(d8, on)), test_p3(subset(d8, on))
            cross = ", ".join(f"wd={w:g}: {c:.0f}" for w, c in zip(p3["wds"], p3["crossing"]))
            widths = ", ".join(f"{row['width']:.1f}x" for row in p2["rows"])
            L.append(f"- {task}: final test accuracy {min(r['acc_smallest'] for r in p2['rows']):.3f}-"
                     f"{max(r['acc_smallest'] for r in p2['rows']):.3f} at the smallest D'; transition width {widths} "
                     f"(P2 test, <= {p2['max_ratio']:g}x: {verdict(p2['held'])}); D' at 0.5 test accuracy {cross} "
                     f"(spread {p3['spread']:.2f}x, P3 test: {verdict(p3['held'], p3['enough'])})")
        L += ["", "Paper (Fig. 8 caption): \"in many cases test accuracy falls below 100%, often to nearly 0% ... For "
              "most datasets the transition point is independent of weight decay\". Figure: "
              "`fig8_ungrokking_tasks.png`.", ""]
    else:
        L += ["Not run (stage fig8).", ""]

    lines, rows = dcrit_lines(out)
    L += ["## D_crit for modular addition", ""] + lines
    table += rows

    L += ["## Summary table", ""] + ["| " + " | ".join(row) + " |" for row in table[:1]]
    L += ["| " + " | ".join("---" for _ in table[0]) + " |"] + ["| " + " | ".join(row) + " |" for row in table[1:]]
    return L


def main_report(args, log=print):
    """Write results.md into a reproduce.sh output folder."""
    out = args.report
    if not os.path.isdir(out):
        raise ValueError(f"--report {out!r}: no such output folder (run ./reproduce.sh first)")
    lines = report_lines(out, args.profile)
    save_text(lines, os.path.join(out, "results.md"))
    log("\n".join(lines))


def main_experiment(args, log=print):
    """Draw one experiment's figures from its run directories (--experiment fig1a, fig4, semi or fig8)."""
    if args.experiment == "fig1a" and len(args.run_dirs) != 1:
        raise ValueError(f"--experiment fig1a needs one run directory, got {len(args.run_dirs)}")
    out = args.out or "figures"
    os.makedirs(out, exist_ok=True)
    experiments = dict(fig1a=lambda: experiment_fig1a(args.run_dirs[0], out),
                       fig4=lambda: experiment_fig4(args.run_dirs, out),
                       semi=lambda: experiment_semi(args.run_dirs, out),
                       fig8=lambda: experiment_fig8(args.run_dirs, out))
    if args.experiment not in experiments:
        raise ValueError(f"unknown --experiment {args.experiment!r}; allowed: {', '.join(experiments)}")
    experiments[args.experiment]()
    log(f"wrote the {args.experiment} figures to {out}")


# -----------------------------------------------------------------------------
# Command line


def save_text(lines, path):
    """Write lines of text atomically."""
    with_nl = "\n".join(lines) + "\n"

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(with_nl)
    grok.atomic_write(path, write)


def load_npz(path):
    """Every array of an .npz file as a dict."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def draw_run_figures(progress, out, log=print):
    """Draw Fig. 9, the progress measures and the margin panel for every run of a progress dict."""
    for i, r in enumerate(progress["runs"]):
        d = run_slice(progress, i)
        for name, plot in (("fig9", plot_fig9), ("progress", plot_progress_measures), ("margin", plot_margin)):
            path = os.path.join(out, f"{name}_run{int(r)}.png")
            plot(d, path)
            log(f"wrote {path}")


def computed_or_saved(npz, replot, log, compute):
    """With replot, the arrays saved in npz; otherwise compute() them and save them to npz."""
    if replot:
        if not os.path.exists(npz):
            raise ValueError(f"--replot: {npz} does not exist; run without --replot first")
        return load_npz(npz)
    arrays = compute()
    os.makedirs(os.path.dirname(os.path.abspath(npz)), exist_ok=True)
    grok.save_npz(arrays, npz)
    log(f"wrote {npz}")
    return arrays


def main_run(args, log=print):
    """Analyse one run directory: progress.npz, summary.txt and three figures per run."""
    if len(args.run_dirs) != 1:
        raise ValueError(f"give one run directory (got {len(args.run_dirs)}); pool several with --efficiency")
    run_dir = args.run_dirs[0]
    out = args.out or os.path.join(run_dir, "analysis")
    progress = computed_or_saved(os.path.join(out, "progress.npz"), args.replot, log,
                                 lambda: analyse_run(run_dir, args.run, args.final_only, args.key_cover, log))
    lines = summary_lines(progress)
    save_text(lines, os.path.join(out, "summary.txt"))
    log("\n".join(lines))
    draw_run_figures(progress, out, log)


def main_efficiency(args, log=print):
    """Pool run directories into the Fig. 3 triples and Fig. 10 points; write both figures and the table."""
    out = args.out or "figures"
    if not args.run_dirs and not args.replot:
        raise ValueError("--efficiency needs at least one run directory")
    table = computed_or_saved(os.path.join(out, "efficiency.npz"), args.replot, log,
                              lambda: efficiency_table(args.run_dirs, log))
    fig3 = dict(fig3_triples(table, args.min_trig), buckets=np.array(args.buckets))
    fig10 = fig10_points(table, args.buckets)
    plot_fig3(fig3, os.path.join(out, "fig3.png"))
    plot_fig10(fig10, os.path.join(out, "fig10.png"))
    lines = [f"runs: {len(table['run'])}; C_mem-only (random labels): {len(fig3['mem_logit'])}; C_gen-only "
             f"(trig > {args.min_trig:.0%}): {len(fig3['gen_logit'])}; true-label runs below: {int(fig3['n_dropped'])}",
             f"Fig. 10 points (true-label runs): {len(fig10['D'])}, "
             f"non-positive ratios: {int((fig10['ratio'] <= 0).sum())}"]
    save_text(lines, os.path.join(out, "efficiency.txt"))
    log("\n".join(lines) + f"\nwrote {os.path.join(out, 'fig3.png')} and {os.path.join(out, 'fig10.png')}")


def parse_args(argv):
    """Parse the command line into Args; a malformed flag raises ValueError (one line)."""
    ap = grok.OneLineParser(prog="analysis.py", description=__doc__.split("\n")[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="*", help="run directory (several with --efficiency)")
    grok.add_field_flags(ap, Args, skip=("run_dirs",))  # the same flag spelling and --help as grok.py
    ns = ap.parse_args(argv)
    args = Args(**{**vars(ns), "run_dirs": tuple(ns.run_dirs)})
    if not args.run_dirs and not (args.efficiency and args.replot) and not args.report:
        raise ValueError("no run directory given; usage: python analysis.py RUN_DIR [--out DIR]")
    if not 0 < args.key_cover <= 1 or not 0 <= args.min_trig <= 1 or args.buckets < 1:
        raise ValueError("--key-cover must be in (0, 1], --min-trig in [0, 1] and --buckets >= 1")
    return args


def main(argv=None):
    """Entry point: bad input gives one line on stderr and exit code 2, no traceback."""
    try:
        args = parse_args(argv)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        if args.report:
            main_report(args)
        elif args.experiment:
            main_experiment(args)
        else:
            (main_efficiency if args.efficiency else main_run)(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

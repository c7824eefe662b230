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
The experiment figures (Fig. 1, 4-8) and the checks of the paper's claims are report.py's.
Tests: python -m pytest -q tests/test_analysis.py
"""
import argparse
import dataclasses
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


# -----------------------------------------------------------------------------
# Reading run directories
#
# Words, the same in every file: a run is one network's training (index r, one row of a history's
# [R, T] arrays); a run directory is what one grok.py command writes, a batch of R runs; a sweep
# is one run directory or the shards of one, read as one (load_sweep). A loaded sweep is a dict:
# dir, cfg, runs (per-run settings), hist, split, diverged.

RUN_FILES = ("config.json", "history.npz", "train_idx.npz", "params.pt")  # params.pt is written last


def load_run_dir(run_dir):
    """Read a finished grok.py run directory: config, per-run settings, history and data split, each checked."""
    if not os.path.isdir(run_dir):
        hint = f" (it was trained in shards, {run_dir}.shard-*: give one of them)" if shard_dirs(run_dir) else ""
        raise ValueError(f"run directory {run_dir!r} does not exist{hint}")
    missing = [f for f in RUN_FILES if not os.path.exists(os.path.join(run_dir, f))]
    if missing:
        raise ValueError(f"run directory {run_dir!r} is incomplete: {', '.join(missing)} missing "
                         f"(an unfinished run? rerun the same grok.py command to finish it)")
    fix = f"rerun the grok.py command of {run_dir} after deleting the file, or delete the directory"
    cfg_path = os.path.join(run_dir, "config.json")
    saved = grok.check_meta(grok.load_json(cfg_path, fix), cfg_path, fix)
    runs, R = saved["runs"], len(saved["runs"]["seed"])
    hist = load_npz(os.path.join(run_dir, "history.npz"), HISTORY_KEYS, fix)
    split = load_npz(os.path.join(run_dir, "train_idx.npz"), ("train_idx", "test_idx", "train_labels", "n_train"), fix)
    T = len(hist["epoch"])
    if any(np.shape(hist[k]) != (R, T) for k in HISTORY_KEYS if k != "epoch"):
        raise ValueError(f"{os.path.join(run_dir, 'history.npz')} does not hold {R} runs x {T} records as config.json "
                         f"says; {fix}")
    check_split(split, saved, os.path.join(run_dir, "train_idx.npz"), fix)
    # Runs that diverged were frozen by grok.py at their last finite state (history.npz says when and why).
    reasons = [str(r) for r in hist.get("stop_reason", [])]
    diverged = [r for r, why in enumerate(reasons) if why.startswith("diverged")]
    if diverged and len(diverged) == len(reasons):
        raise ValueError(f"{run_dir}: every run diverged ({reasons[0]}); there is nothing to analyse")
    return dict(dir=run_dir, cfg=saved["config"], runs=runs, dims=saved["dims"], hist=hist, split=split,
                n_pairs=saved["n_pairs"], diverged=diverged)


HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "param_norm")  # what analysis.py reads


# A sweep trained in shards (grok.py --shard K/N, e.g. the tasks of a Slurm job array) lives in
# directories SWEEP.shard-K-of-N, one per shard; read together they are the sweep, each run once
# and in the sweep's order, as if one process had trained them all.
SHARD_SUFFIX = ".shard-"


class ShardsIncomplete(ValueError):
    """A sweep's shards are not all there, or not all finished: no verdict may be drawn from part of a sweep."""


def shard_dirs(sweep_dir):
    """The shard directories of a sweep (SWEEP.shard-K-of-N), sorted by name; [] if it has none."""
    parent, name = os.path.split(os.path.normpath(sweep_dir))
    parent = parent or "."
    if not os.path.isdir(parent):
        return []
    return sorted(os.path.join(parent, f) for f in os.listdir(parent)
                  if f.startswith(name + SHARD_SUFFIX) and os.path.isdir(os.path.join(parent, f)))


def shard_settings(meta):
    """What every shard of one sweep must share: its settings but the shard, the sweep, the model and the source."""
    config = {k: v for k, v in meta["config"].items() if k not in grok.RESUME_FREE + ("shard",)}
    return dict(config, dims=meta["dims"], n_pairs=meta["n_pairs"], init_sha256=meta.get("init_sha256", ""),
                sweep=meta["shard"]["sweep"], n=meta["shard"]["n"])


def sweep_parts(sweep_dir):
    """The directories holding a sweep's runs, checked as one sweep: [(directory, each of its runs' index in the sweep)]."""
    shards = shard_dirs(sweep_dir)
    if not shards:
        return [(sweep_dir, None)]  # trained whole: load_run_dir checks it
    if os.path.exists(sweep_dir):
        raise ValueError(f"{sweep_dir} and its shards {sweep_dir}{SHARD_SUFFIX}* both exist; a run would count twice: keep one")
    fix = "delete that directory, or train it again with its sweep's command and --shard"
    first, parts, seen = None, [], {}
    for d in shards:
        path = os.path.join(d, "config.json")
        if not os.path.exists(path):
            raise ShardsIncomplete(f"{d} has no config.json: the shard has not started; run its command")
        meta = grok.check_meta(grok.load_json(path, fix), path, fix)
        if not isinstance(meta.get("shard"), dict) or not {"k", "n", "sweep"} <= set(meta["shard"]):
            raise ValueError(f"{d} is named as a shard of {sweep_dir} but its config.json records no shard; {fix}")
        k, n = meta["shard"]["k"], meta["shard"]["n"]
        first = first or (d, shard_settings(meta))
        mine = shard_settings(meta)
        if mine != first[1]:
            differ = sorted(key for key in set(mine) | set(first[1]) if mine.get(key) != first[1].get(key))
            raise ValueError(f"{d} is a shard of another sweep than {first[0]} ({', '.join(differ)} differ); "
                             f"pool only the shards of one sweep: {fix}")
        if k in seen:
            raise ValueError(f"{d} and {seen[k]} are both shard {k}/{n} of {sweep_dir}; a run would count twice: keep one")
        if meta["runs"] != grok.shard_runs(meta["shard"]["sweep"], (k, n)):
            raise ValueError(f"{d}: its runs are not shard {k}/{n} of the sweep it records; {fix}")
        seen[k] = d
        if not os.path.exists(os.path.join(d, "params.pt")):
            raise ShardsIncomplete(f"shard {k}/{n} of {sweep_dir} ({d}) has not finished; run its command again "
                                   f"(it resumes), then pool")
        R = len(meta["shard"]["sweep"]["seed"])
        parts.append((k, d, list(range(R))[k::n]))
    n, R = first[1]["n"], len(first[1]["sweep"]["seed"])
    missing = [k for k in range(min(n, R)) if k not in seen]  # a shard K >= R holds no runs and writes nothing
    if missing:
        raise ShardsIncomplete(f"{sweep_dir}: shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing "
                               f"({len(seen)} of {min(n, R)} there); train them, then pool")
    return [(d, index) for _, d, index in sorted(parts)]


def pooled_history(sweep_dir, parts, loaded, cfg):
    """The shards' histories as one: [R, T] over the longest shard's records, each run in its sweep place."""
    R = sum(len(index) for _, index in parts)
    epochs = max((h["epoch"] for h in loaded), key=len)
    for (d, _), h in zip(parts, loaded):
        if not np.array_equal(h["epoch"], epochs[:len(h["epoch"])]):
            raise ValueError(f"{d} recorded other epochs than the other shards of {sweep_dir}; train it again")
    T = len(epochs)
    out = {"epoch": epochs}
    for key, x in loaded[0].items():
        if key == "epoch" or np.ndim(x) == 0:
            continue
        if key == "wall_s":  # the shards' training times, added: what the sweep cost
            out[key] = sum(np.concatenate([h[key], np.full(T - len(h[key]), h[key][-1] if len(h[key]) else 0.0)])
                           for h in loaded)
            continue
        values = []
        for h in loaded:
            v = np.asarray(h[key])
            if np.ndim(v) == 2 and v.shape[1] < T:
                # A shard whose runs had all stopped ended early; one process would have gone on
                # evaluating them frozen, recording the same values (the movements follow below).
                v = np.concatenate([v, np.repeat(v[:, -1:], T - v.shape[1], axis=1)], axis=1)
            values.append(v)
        values = np.concatenate(values)  # [R, ...] in shard order (a string column takes the widest dtype)
        out[key] = np.empty_like(values)
        out[key][[i for _, index in parts for i in index]] = values
    ends = [len(h["epoch"]) for h in loaded]
    if min(ends) < T and cfg.get("converge_window", 0) > 0 and "move_acc" in out:
        # The convergence test's movements of those frozen records, as grok.py computes them.
        test = grok.Config(**{f.name: cfg[f.name] for f in dataclasses.fields(grok.Config) if f.name in cfg})
        hist = {k: [torch.from_numpy(np.asarray(out[k][:, t])) for t in range(T)]
                for k in ("train_acc", "test_acc", "train_loss", "test_loss", "param_norm")}
        hist["epoch"] = list(epochs)
        for (_, index), end in zip(parts, ends):
            for t in range(end, T):
                moves = grok.convergence_movements(test, hist, int(epochs[t]))
                for k, v in moves.items():
                    out[k][index, t] = v.numpy()[index]
    return out


def pool_splits(parts, loaded):
    """The shards' train_idx.npz as one: rows in sweep order, padded to the longest (-1, labels 0) as grok.py pads."""
    R = sum(len(index) for _, index in parts)
    out = {}
    for key, fill in (("train_idx", -1), ("test_idx", -1), ("train_labels", 0)):
        width = max(s[key].shape[1] for s in loaded)
        full = np.full((R, width), fill, dtype=loaded[0][key].dtype)
        for (_, index), s in zip(parts, loaded):
            full[index, :s[key].shape[1]] = s[key]
        out[key] = full
    out["n_train"] = np.zeros(R, dtype=np.asarray(loaded[0]["n_train"]).dtype)
    for (_, index), s in zip(parts, loaded):
        out["n_train"][index] = np.asarray(s["n_train"]).ravel()
    return out


def load_sweep(sweep_dir):
    """A finished sweep: one run directory, or the shards of one (pooled, each run once, in sweep order)."""
    parts = sweep_parts(sweep_dir)
    if parts[0][1] is None:
        return load_run_dir(sweep_dir)
    runs = [load_run_dir(d) for d, _ in parts]
    index = [i for _, idx in parts for i in idx]
    meta = grok.load_json(os.path.join(parts[0][0], "config.json"), "")
    sweep_runs = meta["shard"]["sweep"]
    cfg = dict(runs[0]["cfg"], shard="", out=sweep_dir)
    return dict(dir=sweep_dir, cfg=cfg, runs=sweep_runs, dims=runs[0]["dims"], n_pairs=runs[0]["n_pairs"],
                hist=pooled_history(sweep_dir, parts, [r["hist"] for r in runs], cfg),
                split=pool_splits(parts, [r["split"] for r in runs]),
                diverged=sorted(idx[r] for (_, idx), part in zip(parts, runs) for r in part["diverged"]),
                shards=[d for d, _ in parts], n_runs=len(index))


def check_split(split, saved, path, what_to_do):
    """Raise (one line) unless train_idx.npz holds the very splits config.json's runs were trained on."""
    # Each run's training subset is a function of its seed, D and the number of pairs alone
    # (grok.split_indices), so it can be computed again here and compared: another run's file, or
    # another modulus's, cannot pass for this one.
    n_train = [int(d) for d in saved["runs"]["n_train"]]
    if list(np.asarray(split["n_train"]).ravel()) != n_train or np.ndim(split["train_idx"]) != 2 \
            or len(split["train_idx"]) != len(n_train):
        raise ValueError(f"{path} is not this run's split (its sizes differ from config.json's); {what_to_do}")
    for r, (seed, d) in enumerate(zip(saved["runs"]["seed"], n_train)):
        train, _ = grok.split_indices(int(saved["n_pairs"]), d, int(seed))
        row = split["train_idx"][r]
        if not np.array_equal(row[row >= 0], train):
            raise ValueError(f"{path} is not this run's split (run {r}'s training pairs differ from its seed's); "
                             f"{what_to_do}")


def load_npz(path, keys=(), what_to_do="make it again with the command that wrote it"):
    """Every array of an .npz file as a dict, checked: one line naming the file if it is damaged or lacks keys."""
    def read(p):
        with np.load(p) as f:
            return {k: f[k] for k in f.files}
    data = grok.load_checked(path, read, what_to_do)
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is not the file this needs; {what_to_do}")
    return data


def check_trig_task(sweep):
    """Raise unless the run is modular addition, the only task with a trigonometric decomposition here."""
    task = sweep["cfg"]["task"]
    if task != "add":
        raise ValueError(f"{sweep['dir']}: task {task!r} has no trigonometric decomposition in analysis.py; "
                         f"allowed: 'add' (a+b mod p, the task of App. B)")


def load_params(path):
    """A stacked parameter file (params.pt or a snapshot) as float32 CPU tensors: name -> [R, ...]."""
    if os.path.basename(os.path.dirname(path)) == "snapshots":  # made only while training: no command makes one again
        fix = ("a snapshot is made only while training: delete the run directory and run its grok.py command "
               "again, or analyse the final parameters alone with --final-only")
    else:
        fix = "delete it and rerun the grok.py command of its run directory (the run finishes again from its checkpoint)"
    params = grok.load_checked(path, lambda p: torch.load(p, map_location="cpu"), fix)
    if not isinstance(params, dict) or not all(torch.is_tensor(params.get(n)) for n in grok.PARAM_SHAPES):
        raise ValueError(f"{path} holds no grok.py parameters; {fix}")
    return {k: v.float() for k, v in params.items()}


def check_snapshots(sweep, epochs, final_epoch):
    """Raise (one line) unless the snapshots present are exactly those the run's config made up to its last epoch."""
    want = sorted(e for e in grok.snapshot_epochs(sweep["cfg"]["epochs"], sweep["cfg"].get("snapshots", 0))
                  if e <= final_epoch)
    missing, extra = sorted(set(want) - set(epochs)), sorted(set(epochs) - set(want))
    if missing or extra:
        what = (f"lacks the snapshot(s) of epoch {', '.join(map(str, missing[:5]))}" if missing else
                f"holds snapshot(s) its config does not make (epoch {', '.join(map(str, extra[:5]))})")
        raise ValueError(f"{sweep['dir']}/snapshots {what}; a snapshot is made only while training: delete the run "
                         f"directory and run its grok.py command again, or analyse it with --final-only")


def snapshot_files(run_dir):
    """The parameter snapshots of a run directory, sorted: (epochs [S], paths)."""
    d = os.path.join(run_dir, "snapshots")
    names = sorted(f for f in os.listdir(d) if f.startswith("epoch_") and f.endswith(".pt")) if os.path.isdir(d) else []
    return [int(f[6:-3]) for f in names], [os.path.join(d, f) for f in names]


def pick_runs(sweep, which):
    """The run indices to analyse: every run, or the one given by --run."""
    R = len(sweep["runs"]["seed"])
    if which == -1:
        return list(range(R))
    if not 0 <= which < R:
        raise ValueError(f"--run {which} is out of range; {sweep['dir']} holds runs 0..{R - 1}")
    return [which]


def pair_data(sweep, r):
    """Tokens of all p^2 pairs [1, p^2, n_ctx], true labels [p^2], and run r's train/test indices and labels."""
    cfg = sweep["cfg"]
    tokens, labels, _, _ = grok.make_dataset(cfg["task"], cfg["p"], cfg["fmt"])
    # grok.task_table builds the pairs with meshgrid(indexing="ij"): pair index = a*p + b, so
    # the logits reshape to Z[a, b, c] with no permutation (checked in the tests).
    tr, te = sweep["split"]["train_idx"][r], sweep["split"]["test_idx"][r]
    keep = tr >= 0  # rows are padded with -1 to the longest run of the directory
    train_labels = sweep["split"]["train_labels"][r][keep]  # random ones for --random-labels runs
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
    # The blog note "Four explanations for Grokking" (its author unnamed): "softmax classifiers
    # ... route through a top-1 argmax, so logits that are evolving continuously map onto a
    # piecewise-constant accuracy curve that flips once the right logit crosses its competitor."
    # The margin is that crossing, measured before the threshold.
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
    sweep = load_run_dir(run_dir)
    check_trig_task(sweep)
    if sweep["diverged"]:
        log(f"note: run(s) {sweep['diverged']} of {run_dir} diverged and were frozen at their last finite state "
            f"(history.npz: stop_epoch, stop_reason); their measures describe that state")
    runs = pick_runs(sweep, which)
    final = load_params(os.path.join(run_dir, "params.pt"))
    final_epoch = int(sweep["hist"]["epoch"][-1])
    epochs, paths = snapshot_files(run_dir)
    if final_only:
        epochs, paths = [], []
    elif not epochs:
        raise ValueError(f"{run_dir} has no parameter snapshots; train it with grok.py --snapshots N "
                         f"(e.g. 100), or pass --final-only to analyse the final parameters alone")
    else:
        check_snapshots(sweep, epochs, final_epoch)
    if not epochs or epochs[-1] != final_epoch:  # stopped early (--stop-acc) or --final-only: add params.pt
        epochs, paths = epochs + [final_epoch], paths + [None]
    datas = {r: pair_data(sweep, r) for r in runs}
    p = sweep["cfg"]["p"]
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
               seed=np.array([sweep["runs"]["seed"][r] for r in runs]),
               n_train=np.array([sweep["runs"]["n_train"][r] for r in runs]),
               wd=np.array([sweep["runs"]["wd"][r] for r in runs]), lr=np.array([sweep["runs"]["lr"][r] for r in runs]))
    h = sweep["hist"]
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


def progress_summary(progress):
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
    parts = [(j, d, part, index) for j, d in enumerate(run_dirs) for part, index in sweep_parts(d)]
    for j, d, part, index in parts:  # a sweep trained in shards: each shard's runs at their place in the sweep
        sweep = load_run_dir(part)
        check_trig_task(sweep)
        # Norms and logits compare only between networks of one shape on one task (p and dims).
        shape = dict(p=sweep["cfg"]["p"], **sweep["dims"])
        first = first or (d, shape)
        if shape != first[1]:
            diff = ", ".join(f"{k} {first[1][k]} vs {v}" for k, v in shape.items() if first[1][k] != v)
            raise ValueError(f"{d} and {first[0]} hold networks of different shapes ({diff}); pool runs of one shape")
        params = load_params(os.path.join(part, "params.pt"))
        norms = sum_squared_weights(params).sqrt()  # [R]
        converged = grok.converged_at_end(sweep["hist"], sweep["cfg"])  # [R]
        for r in range(len(sweep["runs"]["seed"])):
            data = pair_data(sweep, r)
            Zf, _, Z_T, Z_M, _, strength = trig_summary(params, r, data)
            m = logit_measures(Zf, Z_T, Z_M, strength, data)
            row = dict(dir=j, dir_name=os.path.basename(os.path.normpath(d)), run=r if index is None else index[r],
                       seed=sweep["runs"]["seed"][r],
                       n_train=sweep["runs"]["n_train"][r], wd=sweep["runs"]["wd"][r],
                       random_labels=bool(sweep["cfg"]["random_labels"]), init_from=bool(sweep["cfg"]["init_from"]),
                       converged=bool(converged[r]), param_norm=norms[r].item(), **{k: m[k] for k in measures})
            for k, v in row.items():
                cols[k].append(v)
    log(f"efficiency: {len(cols['run'])} run(s) from {len(run_dirs)} director(ies) in {time.perf_counter() - t0:.1f} s")
    order = np.lexsort((np.array(cols["run"]), np.array(cols["dir"])))  # by directory, then by run: the sweep's order
    return {k: np.array(v)[order] if len(order) else np.array(v) for k, v in cols.items()}


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
        grok.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
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
# Command line


def save_text(lines, path):
    """Write lines of text atomically."""
    data = ("\n".join(lines) + "\n").encode()
    grok.atomic_write(path, lambda f: f.write(data))


def draw_run_figures(progress, out, log=print):
    """Draw Fig. 9, the progress measures and the margin panel for every run of a progress dict."""
    for i, r in enumerate(progress["runs"]):
        d = run_slice(progress, i)
        for name, plot in (("fig9", plot_fig9), ("progress", plot_progress_measures), ("margin", plot_margin)):
            path = os.path.join(out, f"{name}_run{int(r)}.png")
            plot(d, path)
            log(f"wrote {path}")


# What --replot reads back: the arrays the summary and the figures of each mode draw from.
PROGRESS_KEYS = ("runs", "epoch", "seed", "n_train", "wd", "lr", "key_mask", "phases", "strength", "trig_frac", "o_t",
                 "o_m_train", "o_m_test", "train_loss", "test_loss", "test_acc", "restricted_loss", "excluded_loss",
                 "neuron_fve", "emb_norms", "sum_sq", "test_margin", "test_margin_q", "hist_epoch", "hist_param_norm",
                 "hist_test_acc", "hist_test_loss", "hist_train_loss")
EFFICIENCY_KEYS = ("dir", "dir_name", "run", "seed", "n_train", "wd", "random_labels", "init_from", "converged",
                   "param_norm", "o_train", "o_t", "o_m_train", "o_m_train_centred", "trig_frac", "trig_frac_centred",
                   "test_acc", "train_acc")


def computed_or_saved(npz, replot, log, compute, keys=()):
    """With replot, the arrays saved in npz (checked for keys); otherwise compute() them and save them to npz."""
    if replot:
        if not os.path.exists(npz):
            raise ValueError(f"--replot: {npz} does not exist; run without --replot first")
        return load_npz(npz, keys, "run without --replot to compute it again")
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
                                 lambda: analyse_run(run_dir, args.run, args.final_only, args.key_cover, log),
                                 PROGRESS_KEYS)
    lines = progress_summary(progress)
    save_text(lines, os.path.join(out, "summary.txt"))
    log("\n".join(lines))
    draw_run_figures(progress, out, log)


def main_efficiency(args, log=print):
    """Pool run directories into the Fig. 3 triples and Fig. 10 points; write both figures and the table."""
    out = args.out or "figures"
    if not args.run_dirs and not args.replot:
        raise ValueError("--efficiency needs at least one run directory")
    table = computed_or_saved(os.path.join(out, "efficiency.npz"), args.replot, log,
                              lambda: efficiency_table(args.run_dirs, log), EFFICIENCY_KEYS)
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
    if not args.run_dirs and not (args.efficiency and args.replot):
        raise ValueError("no run directory given; usage: python analysis.py RUN_DIR [--out DIR]")
    real = [os.path.realpath(d) for d in args.run_dirs]
    twice = sorted({d for d, r in zip(args.run_dirs, real) if real.count(r) > 1})
    if twice:  # pooled twice, each run would count as two networks
        raise ValueError(f"run directory {twice[0]} is given more than once (as {', '.join(twice)}); "
                         f"allowed: each directory once")
    if not 0 < args.key_cover <= 1 or not 0 <= args.min_trig <= 1 or args.buckets < 1:
        raise ValueError("--key-cover must be in (0, 1], --min-trig in [0, 1] and --buckets >= 1")
    return args


def main(argv=None):
    """Entry point: bad input gives one line on stderr and exit code 2, no traceback."""
    try:
        args = parse_args(argv)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        (main_efficiency if args.efficiency else main_run)(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk, a read-only or missing --out: atomic writes leave nothing half-written
        print(f"error: {one_line_os_error(e)}", file=sys.stderr)
        sys.exit(1)


def one_line_os_error(e):
    """An OSError as one line that names its file: atomic_write's own message, or the cause and the path."""
    if e.strerror and "could not write" in e.strerror:
        return e.strerror
    return f"{e.strerror or type(e).__name__}: {e.filename or 'a file'}" + (
        f" -> {e.filename2}" if getattr(e, "filename2", None) else "")


if __name__ == "__main__":
    main()

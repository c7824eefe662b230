"""
grok.py: the 1-layer transformer of the grokking papers, and a full-batch AdamW loop that
trains many runs at once, on CPU or CUDA.

The training setup is App. A of Varma et al. (2023), "Explaining grokking through circuit
efficiency"; the architecture is Nanda et al. (2023), "Progress measures for grokking via
mechanistic interpretability". The file reads top to bottom: Config, data, the textbook model,
loss, AdamW and the textbook training loop (one run, about 30 lines); then the speed section (an
exact, tested rewrite of the model that computes only what the loss reads), the sweep loop that
trains many runs at once, run directories (locks, atomic writes, resume), the benchmark and the
command line.

One process trains R runs at once, each with its own seed, training subset, weight decay and
learning rate: every parameter is one tensor with a leading run axis R.

Launch commands:
    python grok.py                                   # the standard run: a+b mod 113, 30% of pairs, wd=1; groks
    python grok.py --task sub --train 0.5 --epochs 30000 --out runs/sub
    python grok.py --seeds 0-9 --train 1500,1600,1700 --wd 0.5,1.0 --out runs/sweep   # 60 runs, one process
    python grok.py --seeds 0-9 --train 1500,1600,1700 --wd 0.5,1.0 --shard 3/10 --out runs/sweep.shard-3-of-10   # its runs 3, 13, ..., 53
    python grok.py --train 1.0 --stop-acc 1.0 --out runs/full                       # train on every pair, each run to 100%
    python grok.py --init-from runs/full --train 800 --out runs/ungrok             # ungrokking (Sec. 5.2)
    python grok.py --random-labels --train 2000 --out runs/mem                     # C_mem-only (Sec. 5.1)
    python grok.py --train 800,1600 --seeds 0-4 --epochs 100000 --converge-window 4000 --out runs/conv   # each run stops once converged
    python grok.py --bench --fmt nanda --train 3830                                # ms per epoch, this file
    python grok.py --bench --bench-impl reference --fmt nanda --train 3830         # ... the straightforward way
    python grok.py --bench --p 41 --seeds 0-2 --train 50,100,170,300 --wd 1,3      # a sweep's batch (24 small runs)
    python grok.py --bench --p 41 --seeds 0-2 --train 50,100,170,300 --wd 1,3 --bench-impl serial   # ... one by one
    python grok.py --help                                                          # every setting and its source
Running the same command again resumes from the last checkpoint (or says the run is finished).
"""
import argparse
import ctypes
import dataclasses
import errno
import hashlib
import inspect
import io
import itertools
import json
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass

try:
    import fcntl  # one writer per run directory (POSIX); elsewhere runs are not locked
except ImportError:
    fcntl = None

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.adamw import adamw as torch_adamw  # torch's AdamW as a function: its fused kernel, for the fast step
from torch.utils.flop_counter import FlopCounterMode

# -----------------------------------------------------------------------------
# Config


@dataclass
class Config:
    task: str = "add"  # a name from TASKS below; Sec. 5: "All results ... are on the modular addition task"
    p: int = 113  # modulus; App. A: "For all modular arithmetic tasks we use the modulus p = 113"
    fmt: str = "varma"  # "varma": <x><op><y><=> (App. A, n_ctx=4); "nanda": <x><y><=> (Nanda et al., n_ctx=3)
    train: str = "0.3"  # training-set size(s), comma list: with a '.' a fraction of all pairs, else a count D
    seeds: str = "0"  # run seeds: comma list and ranges, e.g. "0-9" or "0,3,7"
    wd: str = "1.0"  # weight decay(s), comma list; App. A: "weight decay of 1.0"
    lr: str = "1e-3"  # learning rate(s), comma list; App. A: "learning rate of 10^-3"
    random_labels: bool = False  # random labels on the training subset: the C_mem-only networks of Sec. 5.1
    epochs: int = 12000  # full-batch steps; the standard run passes 99% test accuracy near epoch 8000
    beta1: float = 0.9  # App. A: AdamW with beta_1 = 0.9
    beta2: float = 0.98  # App. A: beta_2 = 0.98
    eps: float = 1e-8  # not in the paper: torch.optim.AdamW's default, which Nanda et al. use
    d_model: int = 128  # App. A: residual stream width
    n_heads: int = 4  # App. A: d_model / d_head = 4 heads
    d_head: int = 32  # App. A: size of the query, key and value vectors
    d_mlp: int = 512  # App. A: neurons in the MLP's hidden layer
    init_from: str = ""  # run directory whose final parameters start these runs (ungrokking, Sec. 5.2)
    # Above: the paper's settings. Below: how runs are recorded, stopped, stored and run (not the paper's).
    log_every: int = 100  # record metrics every k epochs (plus log_points log-spaced epochs)
    log_points: int = 200  # log-spaced epochs recorded as well, for log-axis plots of 1e3..1e7 epochs
    print_every: int = 1000  # progress line every k epochs
    ckpt_every: int = 1000  # checkpoint every k epochs: a kill loses at most this many
    snapshots: int = 0  # parameter snapshots at this many log-spaced epochs (0 = none); analysis.py reads them
    stop_acc: float = 0.0  # a run whose test accuracy reaches this stops and leaves the batch (0 = none): time to grok
    wd_budget: float = 0.0  # each run trains to this many weight-decay time constants, lr*wd*epochs, then leaves the batch (0: all --epochs); ungrokking moves in these units
    converge_window: int = 0  # convergence test over the trailing window of this many epochs (0 = none); P2-P4 read accuracy "at convergence"
    converge_acc: float = 0.005  # passes when the accuracy the claims read (test; train for random labels) moved by at most this ...
    converge_loss: float = 0.05  # ... its loss (the circuit mix moves it while accuracy is flat) by at most this in log, ~5% ...
    converge_norm: float = 0.005  # ... and the parameter norm (what P1 reads) by at most this in log, all over the window
    converge_levels: str = ""  # comma list: accuracy passes when the window's records lie on one side of each level and out of reach of it, in place of --converge-acc (P2, P3 read only that side)
    converge_train_on: bool = False  # a run that passes trains on, the test only recorded (semi-grokking: Fig. 6's plateau precedes its rise)
    out: str = "runs/default"  # run directory
    shard: str = ""  # "K/N": train only the runs whose index in the sweep (seeds x sizes x wds x lrs) is K mod N, e.g. a Slurm array task; empty: every run
    device: str = "auto"  # "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"
    threads: int = 0  # CPU threads for torch (0 = torch's default, every core)
    group_rows: int = -1  # speed: one group's fixed cost, in padded training examples (-1: 125 on CPU, measured; 15000 on CUDA, estimated)
    bench: bool = False  # time bench_epochs epochs (one AdamW step + a forward over the test pairs each) instead of training
    bench_impl: str = "fast"  # --bench: "fast" (this file), "reference" (forward + torch.optim.AdamW), "serial" (runs one by one)
    bench_epochs: int = 50  # epochs timed by --bench, after 3 warm-up epochs


# -----------------------------------------------------------------------------
# Data: the tasks of Power et al. (2021) used in the paper's Fig. 8. Modular tasks: x, y in
# 0..p-1 (y != 0 where the task divides). S5 tasks: x, y are the 120 permutations of 5 elements.


TASKS = {
    "add": "x+y", "sub": "x-y", "div": "x/y", "cond": "x/y if y odd else x-y",
    "sq": "x^2+y^2", "quad": "x^2+xy+y^2", "quad_x": "x^2+xy+y^2+x",
    "cube": "x^3+xy", "cube_y": "x^3+xy^2+y",
    "s5_mul": "x*y (S5)", "s5_conj": "x*y*x^-1 (S5)", "s5_xyx": "x*y*x (S5)",
}


def is_prime(n):
    """True when n is a prime number."""
    return n >= 2 and all(n % k for k in range(2, int(n ** 0.5) + 1))


def task_table(task, p):
    """All (x, y, label) triples of a task as int64 arrays [3, N], and the number of elements n."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    if task.startswith("s5_"):
        perms = list(itertools.permutations(range(5)))  # lexicographic order: element id = list index
        index = {q: i for i, q in enumerate(perms)}
        compose = lambda a, b: tuple(a[b[i]] for i in range(5))  # (a*b)(i) = a(b(i))
        inverse = lambda a: tuple(sorted(range(5), key=lambda i: a[i]))
        rows = []
        for x, y in itertools.product(perms, perms):
            if task == "s5_mul":
                z = compose(x, y)
            elif task == "s5_conj":
                z = compose(compose(x, y), inverse(x))
            else:
                z = compose(compose(x, y), x)
            rows.append((index[x], index[y], index[z]))
        return np.array(rows, dtype=np.int64).T.copy(), len(perms)
    if p < 2:
        raise ValueError(f"modulus p={p} is too small; allowed: an integer >= 2 (a prime for div and cond)")
    divides = task in ("div", "cond")
    if divides and not is_prime(p):
        raise ValueError(f"task {task!r} needs a modular inverse, so p must be prime; got p={p}")
    x, y = np.meshgrid(np.arange(p), np.arange(1 if divides else 0, p), indexing="ij")
    x, y = x.ravel(), y.ravel()
    if divides:
        # "x/y" means x * y^-1 mod p, the true modular inverse (Fermat: y^(p-2)), never integer division
        inv = np.array([0] + [pow(int(v), p - 2, p) for v in range(1, p)], dtype=np.int64)
        quotient = x * inv[y] % p
    z = {"add": lambda: x + y, "sub": lambda: x - y, "div": lambda: quotient,
         "cond": lambda: np.where(y % 2 == 1, quotient, x - y),
         "sq": lambda: x**2 + y**2, "quad": lambda: x**2 + x*y + y**2,
         "quad_x": lambda: x**2 + x*y + y**2 + x, "cube": lambda: x**3 + x*y,
         "cube_y": lambda: x**3 + x*y**2 + y}[task]() % p
    return np.stack([x, y, z]), p


def make_dataset(task, p, fmt):
    """Every input of the task as tokens [N, n_ctx], its labels [N], d_vocab and n_out."""
    (x, y, z), n = task_table(task, p)
    # App. A: "we construct a dataset of the form <x><o><y><=><x o y>"; tokens 0..n-1 are the
    # elements, n is the operation token and n+1 the '=' token (Nanda's format has no op token).
    if fmt == "varma":
        tokens = np.stack([x, np.full_like(x, n), y, np.full_like(x, n + 1)], axis=1)
        d_vocab = n + 2
    elif fmt == "nanda":
        tokens = np.stack([x, y, np.full_like(x, n)], axis=1)
        d_vocab = n + 1
    else:
        raise ValueError(f"unknown input format {fmt!r}; allowed: varma, nanda")
    return torch.from_numpy(tokens), torch.from_numpy(z), d_vocab, n


def split_indices(n_all, d, seed):
    """Training and test indices of one run: the first d of a seeded permutation, and the rest."""
    # A run's subset depends on its own seed alone, so one seed gives nested subsets over D.
    perm = np.random.default_rng([seed, 1]).permutation(n_all)
    train, test = np.sort(perm[:d]), np.sort(perm[d:])
    # A run trained on every pair has no test set; its "test" metrics are then over all pairs.
    return train, (test if len(test) else np.arange(n_all))


def random_train_labels(seed, d, n_out):
    """Sec. 5.1: "completely random labels for the training data" (the C_mem-only networks)."""
    return np.random.default_rng([seed, 2]).integers(0, n_out, d)


def pad_stack(rows, fill):
    """Stack 1-D arrays of different lengths into [R, max_len], padded with fill."""
    out = np.full((len(rows), max(len(r) for r in rows)), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def run_splits(runs, labels_all, n_out, random_labels):
    """Per-run training and test indices and training labels, padded to [R, max] with -1 / 0."""
    n_all = len(labels_all)
    splits = [split_indices(n_all, d, s) for s, d in zip(runs["seed"], runs["n_train"])]
    train_idx = pad_stack([tr for tr, _ in splits], -1)  # [R, D_max]
    test_idx = pad_stack([te for _, te in splits], -1)  # [R, M_max]
    train_labels = labels_all.numpy()[np.maximum(train_idx, 0)]
    if random_labels:
        for r, seed in enumerate(runs["seed"]):
            train_labels[r] = random_train_labels(seed, train_idx.shape[1], n_out)
    return train_idx, test_idx, np.where(train_idx >= 0, train_labels, 0)


# -----------------------------------------------------------------------------
# The model: a 1-layer decoder-only transformer (App. A)
# App. A: "For all our experiments, we use 1-layer decoder-only transformer networks (Vaswani et
# al., 2017) with learned positional embeddings, untied embeddings/unembeddings ... d_model = 128
# is the residual stream width, d_head = 32 is the size of the query, key, and value vectors for
# each attention head, d_mlp = 512 is the number of neurons in the hidden layer of the MLP, and we
# have d_model/d_head = 4 heads per self-attention layer."
# The paper names neither the MLP's activation nor any normalisation. We read it as the model of
# Nanda et al. (2023), whose sizes these are: a ReLU MLP with biases, and no LayerNorm.


PARAM_SHAPES = {  # weight names as in TransformerLens; a leading run axis R is added to each
    "W_E": ("d_vocab", "d_model"), "W_pos": ("n_ctx", "d_model"),
    "W_Q": ("n_heads", "d_model", "d_head"), "W_K": ("n_heads", "d_model", "d_head"),
    "W_V": ("n_heads", "d_model", "d_head"), "W_O": ("n_heads", "d_head", "d_model"),
    "W_in": ("d_model", "d_mlp"), "b_in": ("d_mlp",), "W_out": ("d_mlp", "d_model"),
    "b_out": ("d_model",), "W_U": ("d_model", "n_out"),
}


def init_params(dims, seed):
    """One run's parameters: weights ~ N(0, 1/d_model), biases zero (Nanda et al.'s scheme)."""
    # Nanda et al. draw every weight as randn / sqrt(d_model) (their W_U uses sqrt(d_vocab),
    # nearly the same at p=113); the paper does not say, and we use 1/sqrt(d_model) throughout.
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, axes in PARAM_SHAPES.items():
        shape = tuple(dims[a] for a in axes)
        if name.startswith("b_"):
            out[name] = torch.zeros(shape)
        else:
            out[name] = torch.randn(shape, generator=g) / math.sqrt(dims["d_model"])
    return out


def forward(params, tokens, return_hidden=False):
    """The textbook transformer at every position: tokens [R, B, n_ctx] -> logits [R, B, n_ctx, n_out]."""
    R, B, T = tokens.shape
    d_head = params["W_Q"].shape[-1]
    run = torch.arange(R, device=tokens.device).view(R, 1, 1)
    # Token embedding plus learned positional embedding.
    x = params["W_E"][run, tokens] + params["W_pos"][:, None]  # [R, B, T, d_model]
    # Attention: per head, queries, keys and values are linear maps of the residual stream.
    q = torch.einsum("rbtd,rhde->rbhte", x, params["W_Q"])  # [R, B, n_heads, T, d_head]
    k = torch.einsum("rbtd,rhde->rbhte", x, params["W_K"])  # [R, B, n_heads, T, d_head]
    v = torch.einsum("rbtd,rhde->rbhte", x, params["W_V"])  # [R, B, n_heads, T, d_head]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d_head)  # [R, B, n_heads, T(query), T(key)]
    causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()  # a query sees keys at or before it
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)  # [R, B, n_heads, T, T]
    z = pattern @ v  # [R, B, n_heads, T, d_head]
    x = x + torch.einsum("rbhte,rhed->rbtd", z, params["W_O"])  # [R, B, T, d_model]
    # MLP: one hidden ReLU layer with biases, added to the residual stream.
    hidden = torch.relu(torch.einsum("rbtd,rdm->rbtm", x, params["W_in"]) + params["b_in"][:, None, None])
    x = x + torch.einsum("rbtm,rmd->rbtd", hidden, params["W_out"]) + params["b_out"][:, None, None]
    logits = torch.einsum("rbtd,rdv->rbtv", x, params["W_U"])  # [R, B, T, n_out]
    return (logits, hidden) if return_hidden else logits  # hidden: the MLP activations [R, B, T, d_mlp]


# -----------------------------------------------------------------------------
# Loss and metrics: cross-entropy at the last position, where the answer token is predicted


def cross_entropy(logits, labels, weights):
    """Per-run weighted cross-entropy of logits [R, B, n_out], log-softmax in float64: [R]."""
    # In float32 the log-softmax of a confident prediction rounds to exactly 0 loss, which
    # stalls and distorts late training; float64 keeps the gradient alive (Nanda et al.).
    logp = logits.double().log_softmax(dim=-1)
    nll = -logp.gather(-1, labels[..., None]).squeeze(-1)  # [R, B]
    return (nll * weights).sum(-1)


def param_norm(params):
    """Total L2 norm of each run's parameters: [R]."""
    return torch.sqrt(sum(p.detach().double().pow(2).flatten(1).sum(1) for p in params.values()))


# -----------------------------------------------------------------------------
# AdamW, written out (Loshchilov and Hutter, 2019), with a per-run lr and weight decay


def adamw_step(params, grads, state, step, lr, wd, beta1, beta2, eps):
    """One in-place AdamW update of every run; lr and wd are [R] tensors, step counts from 1."""
    # Decoupled weight decay: the parameter shrinks by lr*wd before the Adam step, and the
    # decay never enters the moment estimates (this is what torch.optim.AdamW does).
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    for name, p in params.items():
        g, m, v = grads[name], state["m"][name], state["v"][name]
        shape = (-1,) + (1,) * (p.dim() - 1)  # broadcast [R] over the parameter's other axes
        p.mul_(1 - (lr * wd).view(shape))
        m.lerp_(g, 1 - beta1)  # m = beta1 m + (1 - beta1) g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v = beta2 v + (1 - beta2) g^2
        denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)  # eps outside the bias-corrected root, as torch
        p.sub_(m.div(denom).mul_((lr / bc1).view(shape)))  # p -= lr/bc1 * m / denom


# -----------------------------------------------------------------------------
# The textbook training loop: one run, built only from the pieces above
# App. A: "We optimise the network with full batch training (that is, using the entire training
# dataset for each update) using the AdamW optimiser ... with beta_1 = 0.9, beta_2 = 0.98, learning
# rate of 10^-3, and weight decay of 1.0." The loss is the cross-entropy of the answer, predicted
# at the last position (the '=' token). The sweep loop below (train_loop) trains many such runs
# at once with faster code; tests/test_grok.py checks that it follows this loop's trajectory.


def train_textbook(cfg, eval_every=100):
    """One run of cfg (its first seed, size, weight decay and lr): final parameters [1, ...] and records every eval_every epochs."""
    tokens, labels, d_vocab, n_out = make_dataset(cfg.task, cfg.p, cfg.fmt)  # [N, n_ctx], [N]
    seed = parse_list(cfg.seeds, int, "seeds")[0]
    D = train_size(cfg.train.split(",")[0], len(labels))
    wd, lr = parse_list(cfg.wd, float, "wd")[0], parse_list(cfg.lr, float, "lr")[0]
    train, test = split_indices(len(labels), D, seed)  # the first D pairs of a seeded permutation, and the rest
    x_train, y_train = tokens[train][None], labels[train][None]  # [1, D, n_ctx], [1, D]: a run axis of 1
    x_test, y_test = tokens[test][None], labels[test][None]  # [1, N - D, n_ctx], [1, N - D]
    dims = dict(d_vocab=d_vocab, n_ctx=tokens.shape[1], n_out=n_out, d_model=cfg.d_model, n_heads=cfg.n_heads,
                d_head=cfg.d_head, d_mlp=cfg.d_mlp)
    params = {n: t[None].requires_grad_() for n, t in init_params(dims, seed).items()}  # [1, ...]
    state = {k: {n: torch.zeros_like(t) for n, t in params.items()} for k in ("m", "v")}  # AdamW's moments
    lr_t, wd_t = torch.tensor([lr]), torch.tensor([wd])  # adamw_step takes one per run
    mean = lambda y: torch.full(y.shape, 1.0 / y.shape[1], dtype=torch.float64)  # weights of a mean over examples
    records = {k: [] for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")}
    for epoch in range(cfg.epochs + 1):
        if epoch % eval_every == 0 or epoch == cfg.epochs:  # evaluate before the step, as train_loop records
            with torch.no_grad():
                for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
                    logits = forward(params, x)[:, :, -1]  # [1, B, n_out]: the answer, at the last position
                    records[f"{name}_loss"].append(cross_entropy(logits, y, mean(y)).item())
                    records[f"{name}_acc"].append((logits.argmax(-1) == y).double().mean().item())
            records["epoch"].append(epoch)
        if epoch == cfg.epochs:
            break
        logits = forward(params, x_train)[:, :, -1]  # [1, D, n_out]
        loss = cross_entropy(logits, y_train, mean(y_train))  # [1]
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        with torch.no_grad():
            adamw_step(params, dict(zip(params, grads)), state, epoch + 1, lr_t, wd_t, cfg.beta1, cfg.beta2, cfg.eps)
    return {n: t.detach() for n, t in params.items()}, {k: np.array(v) for k, v in records.items()}


# -----------------------------------------------------------------------------
# Speed: the same model and training, computed with less work
#
# Everything above is the definition; everything here is measured against it (tests/test_grok.py).
# Two kinds of work set the speed. One run at p=113 is mostly matmuls in the MLP and unembedding,
# so forward_last computes only the last position. A sweep is many small runs (p=41, D of a few
# hundred), where the cost per run and per group of runs dominates, so a training step works on
# a batch: the runs reordered so that each group of similar D is one slice, the attention tables
# built once for all runs, and AdamW in torch's fused kernel. The README gives the measured
# figures (`python grok.py --bench` on each kind of sweep) and their matmul floors.


def table_rows(tokens, d_vocab):
    """The (position, token) pairs that occur in tokens [..., T], as table rows: the row of each pair [T, d_vocab]
    (-1 where a pair never occurs), the rows' positions and tokens [n_rows], and how many rows the last position has."""
    # Only these pairs ever reach the model: in <x><op><y><=>, position 1 holds only the op token
    # and the last position only '='. Tables over every (position, token) would compute rows
    # that nothing reads, 43 query rows where one is used; these rows are what is read.
    T = tokens.shape[-1]
    flat = tokens.reshape(-1, T)
    seen = torch.zeros(T, d_vocab, dtype=torch.bool, device=tokens.device)
    seen[torch.arange(T, device=tokens.device).expand_as(flat), flat] = True
    pos, tok = seen.nonzero(as_tuple=True)  # sorted by position, then token: the last position's rows come last
    row = torch.full((T, d_vocab), -1, dtype=torch.long, device=tokens.device)
    row[pos, tok] = torch.arange(len(pos), device=tokens.device)
    return dict(row=row, pos=pos, tok=tok, n_last=int((pos == T - 1).sum()))


def table_keys(rows, tokens):
    """The table row of each input's (position, token) pairs: tokens [..., T] -> rows [..., T]."""
    T = tokens.shape[-1]
    return rows["row"][torch.arange(T, device=tokens.device), tokens]


def attention_tables(params, rows):
    """The residual table [R, n_rows, d_model] and the score table [R, n_last, n_rows, n_heads] over table_rows' rows."""
    # The residual stream entering the layer at position j is W_E[token_j] + W_pos[j]: a function
    # of (j, token_j) alone. So every query, key and value is a row of a small table over
    # (position, token), computed once for all inputs (a few hundred rows, not B * n_ctx).
    d_head = params["W_Q"].shape[3]
    # index_select, not [:, rows]: its backward is an index_add, where advanced indexing's is a slower index_put.
    resid_tab = params["W_E"].index_select(1, rows["tok"]) + params["W_pos"].index_select(1, rows["pos"])  # [R, n_rows, d_model]
    q_tab = torch.einsum("rqd,rhde->rqhe", resid_tab[:, -rows["n_last"]:], params["W_Q"])  # [R, n_last, n_heads, d_head]
    k_tab = torch.einsum("rnd,rhde->rnhe", resid_tab, params["W_K"])  # [R, n_rows, n_heads, d_head]
    score_tab = torch.einsum("rqhe,rnhe->rqnh", q_tab, k_tab) / math.sqrt(d_head)  # [R, n_last, n_rows, n_heads]
    return resid_tab, score_tab


def last_position_pattern(score_tab, run, key):
    """The last position's attention pattern [..., T, n_heads] for inputs whose table rows are key [..., T], of runs run [...]."""
    # Each input's scores: the row of (run, last token as the query, position j and token_j as the key).
    # The table is flattened so that one index_select does the lookup: its backward is an index_add,
    # 12x faster here than advanced indexing's (0.16 vs 1.9 ms for 3830 rows).
    n_last, n_rows, n_heads = score_tab.shape[1:]
    query = key[..., -1:] - (n_rows - n_last)  # [..., 1]: the last token's row among the query rows
    s_row = (run[..., None] * n_last + query) * n_rows + key  # [..., T]
    scores = score_tab.reshape(-1, n_heads).index_select(0, s_row.flatten()).view(*s_row.shape, n_heads)
    # The causal mask lets the last position see every position: it masks nothing there.
    return scores.softmax(dim=-2)  # [..., T, n_heads]: the last query's attention over the T keys


def last_position_attention(params, tokens):
    """The residual table [R, n_rows, d_model], each input's table rows [R, B, T] and the last position's pattern [R, B, T, n_heads]."""
    rows = table_rows(tokens, params["W_E"].shape[1])
    key = table_keys(rows, tokens)  # [R, B, T]
    resid_tab, score_tab = attention_tables(params, rows)
    run = torch.arange(tokens.shape[0], device=tokens.device).view(-1, 1)  # [R, 1]
    return resid_tab, key, last_position_pattern(score_tab, run, key)


class MixValues(torch.autograd.Function):
    """z [M, n_heads, d_head] = sum_j pattern[:, j, :, None] * v_flat[kv_row[:, j]]: the values mixed by the pattern, with a lean backward."""
    # What autograd would record for the loop of lookups and addcmuls makes six passes over
    # [M, n_heads, d_head] per position in the backward (addcmul's backward multiplies by its scale
    # 1 before multiplying by the gradient); this backward makes four: the product with each
    # position's values and its sum over d_head (the pattern's gradient), and the gradient scaled
    # by the pattern, added into the value table's rows (the values' gradient).

    @staticmethod
    def forward(ctx, pattern, v_flat, kv_row):
        # pattern [M, T, n_heads], v_flat [n_rows_all, n_heads, d_head], kv_row [M, T]: row of each input's (run, j, token_j)
        ctx.save_for_backward(pattern, v_flat, kv_row)
        z = v_flat.new_zeros(kv_row.shape[0], *v_flat.shape[1:])  # [M, n_heads, d_head]
        for j in range(kv_row.shape[1]):  # one lookup per position keeps the largest intermediate at [M, n_heads, d_head]
            z.addcmul_(pattern[:, j, :, None], v_flat.index_select(0, kv_row[:, j]))  # z + pattern_j * v_j in one pass
        return z

    @staticmethod
    def backward(ctx, grad):
        pattern, v_flat, kv_row = ctx.saved_tensors
        grad = grad.contiguous()  # [M, n_heads, d_head]
        grad_pattern = torch.empty_like(pattern)  # [M, T, n_heads]
        grad_v = torch.zeros_like(v_flat)  # [n_rows_all, n_heads, d_head]
        prod = torch.empty_like(grad)
        for j in range(kv_row.shape[1]):
            torch.mul(grad, v_flat.index_select(0, kv_row[:, j]), out=prod)
            grad_pattern[:, j] = prod.sum(-1)  # d loss / d pattern_j = <grad, v_j> over d_head
            torch.mul(grad, pattern[:, j, :, None], out=prod)
            grad_v.index_add_(0, kv_row[:, j], prod)  # d loss / d v_j = pattern_j * grad, into v_j's table row
        return grad_pattern, grad_v, None


def attention_output(params, resid_tab, pattern, run, key):
    """The last position's mixed values z [..., n_heads * d_head] (before W_O) and its own residual row [..., d_model]."""
    n_rows, d_model = resid_tab.shape[1:]
    n_heads, d_head, T = params["W_V"].shape[1], params["W_V"].shape[3], key.shape[-1]
    v_tab = torch.einsum("rnd,rhde->rnhe", resid_tab, params["W_V"])  # [R, n_rows, n_heads, d_head]
    kv_row = run[..., None] * n_rows + key  # [..., T]: row of (run, j, token_j)
    lead = kv_row.shape[:-1]
    z = MixValues.apply(pattern.reshape(-1, T, n_heads), v_tab.reshape(-1, n_heads, d_head), kv_row.reshape(-1, T))  # [M, n_heads, d_head]
    resid = resid_tab.reshape(-1, d_model).index_select(0, kv_row[..., -1].flatten()).view(*lead, d_model)
    return z.view(*lead, n_heads * d_head), resid


def mlp_logits(params, z, resid, return_hidden=False):
    """W_O, the MLP and the unembedding at the last position: z [R, B, n_heads*d_head], resid [R, B, d_model] -> logits [R, B, n_out]."""
    R, d_model = resid.shape[0], resid.shape[2]
    resid = torch.baddbmm(resid, z, params["W_O"].reshape(R, -1, d_model))  # [R, B, d_model]
    # The bias enters the matmul (baddbmm) and the ReLU works in place: no extra pass over [R, B, d_mlp].
    hidden = torch.baddbmm(params["b_in"][:, None], resid, params["W_in"]).relu_()  # [R, B, d_mlp]
    # The logits are linear in the MLP's output, so W_out is folded into W_U:
    #   (resid + b_out + hidden @ W_out) @ W_U = (resid + b_out) @ W_U + hidden @ (W_out @ W_U),
    # and per input [d_mlp x n_out] replaces [d_mlp x d_model] then [d_model x n_out] (n_out < d_model).
    direct = torch.bmm(resid + params["b_out"][:, None], params["W_U"])  # [R, B, n_out]
    logits = torch.baddbmm(direct, hidden, params["W_out"] @ params["W_U"])  # [R, B, n_out]
    return (logits, hidden) if return_hidden else logits


def forward_last(params, tokens, return_hidden=False):
    """forward(params, tokens)[:, :, -1] with less work: [R, B, n_out] (and the MLP activations [R, B, d_mlp])."""
    # Why this is exact:
    # 1. The loss reads only the last position's logits, and with one layer nothing else reads
    #    any position's MLP output or logits. So the MLP and W_U are needed at the last position only.
    # 2. Queries, keys and values are rows of small per-(position, token) tables, and the causal
    #    mask hides nothing from the last position (last_position_attention).
    # The sums are the same; only the order of floating-point additions differs.
    resid_tab, key, pattern = last_position_attention(params, tokens)  # [R, n_rows, d_model], [R, B, T], [R, B, T, n_heads]
    run = torch.arange(tokens.shape[0], device=tokens.device).view(-1, 1)  # [R, 1]
    z, resid = attention_output(params, resid_tab, pattern, run, key)  # [R, B, n_heads*d_head], [R, B, d_model]
    return mlp_logits(params, z, resid, return_hidden)


@torch.no_grad()
def forward_last_folded(params, tokens):
    """forward_last for evaluation (no gradients), regrouped: the same logits with less matmul work per input."""
    # After attention, the last position's residual stream is a weighted sum of table rows:
    #   resid = resid_tab[(T-1, last token)] + sum_{j, h} pattern[j, h] * (v_tab[(j, token_j), h] @ W_O[h]).
    # The MLP's pre-activation (resid @ W_in) and the direct path to the logits (resid @ W_U) are
    # linear in resid, so W_in and W_U are applied once to the table's rows (a few hundred)
    # instead of to every input; per input one embedding_bag forms the weighted sum of its
    # 1 + T*n_heads rows. As in forward_last, only hidden @ (W_out @ W_U) is left per input.
    # Training cannot use this: embedding_bag's backward adds in an order that depends on the
    # number of runs, so a batch of runs would drift from the same runs trained alone.
    R, B, T = tokens.shape
    n_heads = params["W_Q"].shape[1]
    resid_tab, key, pattern = last_position_attention(params, tokens)  # [R, n_rows, d_model], [R, B, T], [R, B, T, n_heads]
    n_tab, d_model = resid_tab.shape[1:]
    vo_tab = torch.einsum("rnd,rhde,rhef->rnhf", resid_tab, params["W_V"], params["W_O"])  # [R, n_tab, n_heads, d_model]
    rows = torch.cat([vo_tab.reshape(R, -1, d_model), resid_tab], dim=1)  # [R, n_rows, d_model]
    n_rows = rows.shape[1]  # n_tab*n_heads value rows, then the n_tab rows of the residual table
    # The last token's own row enters every input once with weight 1, so it carries the biases too.
    bias_in = torch.cat([rows.new_zeros(R, n_rows - n_tab, 1), rows.new_ones(R, n_tab, 1)], dim=1)  # [R, n_rows, 1]
    pre_tab = torch.baddbmm(bias_in * params["b_in"][:, None], rows, params["W_in"])  # [R, n_rows, d_mlp]
    direct_tab = (rows + bias_in * params["b_out"][:, None]) @ params["W_U"]  # [R, n_rows, n_out]
    run = torch.arange(R, device=tokens.device).view(R, 1, 1)
    heads = torch.arange(n_heads, device=tokens.device)
    value_rows = (key[..., None] * n_heads + heads).flatten(2)  # [R, B, T*n_heads]
    last_row = n_tab * n_heads + key[..., -1:]  # [R, B, 1]
    bags = (torch.cat([value_rows, last_row], dim=-1) + run * n_rows).reshape(R * B, -1)  # rows per input
    weights = torch.cat([pattern.flatten(2), pattern.new_ones(R, B, 1)], dim=-1).reshape(R * B, -1)
    mix = lambda tab: F.embedding_bag(bags, tab.reshape(R * n_rows, -1), per_sample_weights=weights,
                                      mode="sum").view(R, B, -1)
    hidden = mix(pre_tab).relu_()  # [R, B, d_mlp]
    return torch.baddbmm(mix(direct_tab), hidden, params["W_out"] @ params["W_U"])  # [R, B, n_out]


def group_cost(cfg, device):
    """One group's fixed cost in padded training examples: --group-rows, or the device's default."""
    # Measured on the 2-core CPU (16 runs of one D at p=41, forced into 1 ... 16 groups): each extra
    # group costs about 0.9 ms, and a padded example about 7.2 us, so a group is worth about 125
    # examples. On a GPU each group's kernel launches cost more and examples far less; 15000 is an
    # estimate from launch counts and the matmul rate, not a measurement.
    if cfg.group_rows >= 0:
        return cfg.group_rows
    return 15000 if device.type == "cuda" else 125


def pad_groups(n_train, group_cost):
    """Runs grouped by training-set size at the least cost: lists of run indices, padding against per-group work."""
    # Runs of different D are padded to a common length to step them as one batch. Padding costs as
    # much as real examples, and every group costs a fixed amount more (its own matmul calls and
    # autograd nodes), worth group_cost padded examples. With the runs sorted by D, a grouping is a
    # set of cuts, and the cuts with the least total cost, sum over groups of (runs x largest D) +
    # group_cost, are found exactly by dynamic programming over the first j runs.
    order = sorted(range(len(n_train)), key=lambda r: n_train[r])
    d = [n_train[r] for r in order]
    best, cut = [0] + [math.inf] * len(d), [0] * (len(d) + 1)  # best[j]: least cost of the first j runs
    for j in range(1, len(d) + 1):
        for i in range(j):  # the last group is runs i .. j-1, padded to d[j-1]
            cost = best[i] + (j - i) * d[j - 1] + group_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(d)
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def batch_groups(n_train, lrs, active, group_cost):
    """The active runs as groups of similar D and one learning rate (lists of run indices), in batch order."""
    groups = []
    for lr in sorted(set(lrs[r] for r in active)):  # one lr per stretch of the batch: one fused AdamW call each
        runs = [r for r in active if lrs[r] == lr]
        groups += [[runs[i] for i in g] for g in pad_groups([n_train[r] for r in runs], group_cost)]
    return groups


def make_batch(params, state, runs, tokens, train_idx, train_labels, group_cost, device, active, groups=None):
    """The active runs' training state in batch order (a working copy of their parameters and AdamW moments) and training sets.

    In batch order the runs of each group are neighbours, so each group's parameters are one piece
    of torch.split, whose backward concatenates the pieces' gradients: every parameter's gradient
    comes back once, at the batch's size. (Indexing or slicing the parameters per group would
    instead make a full-size zero gradient for every group and add the group's part into it.)
    write_back puts the working copy back into params and state.
    """
    groups = groups or batch_groups(runs["n_train"], runs["lr"], active, group_cost)
    order = [r for g in groups for r in g]  # the runs in batch order
    pick = torch.as_tensor(order, device=device)
    sizes = [max(runs["n_train"][r] for r in g) for g in groups]  # each group's padded D
    idx = [train_idx[g, :n] for g, n in zip(groups, sizes)]  # [R_g, D_g] each, -1 = padding
    first = np.cumsum([0] + [len(g) for g in groups])  # each group's first row in the batch
    # Every group's inputs, one after another: tokens [N, n_ctx], their table rows, and the batch row of each input [N].
    flat = torch.cat([tokens[torch.as_tensor(np.maximum(i, 0))].flatten(0, 1) for i in idx]).to(device)
    rows = table_rows(flat, params["W_E"].shape[1])
    return dict(
        order=pick, lrs=[runs["lr"][r] for r in order], wd=[runs["wd"][r] for r in order],
        params={n: t.detach().index_select(0, pick).requires_grad_() for n, t in params.items()},  # [A, ...]
        state={k: {n: t.index_select(0, pick) for n, t in s.items()} for k, s in state.items()},
        runs_per_group=[len(g) for g in groups],
        rows=rows, key=table_keys(rows, flat),  # [N, n_ctx]
        run=torch.cat([torch.arange(a, a + len(g)).repeat_interleave(n) for a, g, n in zip(first, groups, sizes)]).to(device),
        labels=[torch.as_tensor(train_labels[g, :n], device=device) for g, n in zip(groups, sizes)],  # [R_g, D_g]
        weight=[torch.as_tensor((i >= 0) / (i >= 0).sum(1, keepdims=True), device=device) for i in idx])  # mean over own D


def write_back(batch, params, state):
    """Copy a batch's working parameters and AdamW moments into the [R, ...] params and state (run order)."""
    with torch.no_grad():
        for n, t in params.items():
            t.index_copy_(0, batch["order"], batch["params"][n])
        for k, s in state.items():
            for n, t in s.items():
                t.index_copy_(0, batch["order"], batch["state"][k][n])


class FlushSubnormalGrad(torch.autograd.Function):
    """The identity, whose backward sets gradient entries below the dtype's smallest normal number to zero."""
    # Once a network fits its training set, the float64 loss's gradient for the wrong classes is
    # tiny (a softmax probability of e^-90 or less), and cast back to float32 some of it lands
    # below 1.2e-38, in the subnormal range, where the CPU's arithmetic takes a slow path: on the
    # standard run's grokked network 4% of the logit gradient was subnormal and a training step
    # took 2-5x longer. Those entries are flushed to zero before any matmul reads them; they are
    # 1e-38 of the largest ones, so nothing that training does with them is changed.

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.masked_fill(grad.abs() < torch.finfo(grad.dtype).tiny, 0.0)


def batch_losses(params, batch):
    """Each run's training loss (its mean over its own D), in batch order: [A]. forward_last, with shared work done once.

    The attention tables, lookups and value mixing do not depend on which runs share a group, so
    they are computed once for all runs and inputs; only W_O, the MLP and the unembedding, whose
    matmuls need one weight matrix per run, go group by group.
    """
    resid_tab, score_tab = attention_tables(params, batch["rows"])  # [A, n_rows, d_model], [A, n_last, n_rows, n_heads]
    pattern = last_position_pattern(score_tab, batch["run"], batch["key"])  # [N, T, n_heads]
    z, resid = attention_output(params, resid_tab, pattern, batch["run"], batch["key"])  # [N, H*E], [N, d_model]
    per_group = [len(w.flatten()) for w in batch["weight"]]  # inputs per group: R_g * D_g
    late = ("W_O", "W_in", "b_in", "W_out", "b_out", "W_U")
    one = len(per_group) == 1  # one group: no split, whose backward would copy every gradient once more
    pieces = {n: (params[n],) if one else params[n].split(batch["runs_per_group"]) for n in late}
    z_parts, resid_parts = ((z,), (resid,)) if one else (z.split(per_group), resid.split(per_group))
    losses = []
    for g, (z_g, resid_g) in enumerate(zip(z_parts, resid_parts)):
        shape = batch["weight"][g].shape  # [R_g, D_g]
        logits = mlp_logits({n: pieces[n][g] for n in late}, z_g.view(*shape, -1), resid_g.view(*shape, -1))
        logits = FlushSubnormalGrad.apply(logits)  # [R_g, D_g, n_out]
        losses.append(cross_entropy(logits, batch["labels"][g], batch["weight"][g]))  # [R_g]
    return torch.cat(losses)


def adamw_step_fused(params, grads, state, step, lrs, wd, beta1, beta2, eps):
    """adamw_step with torch's fused AdamW kernel, one pass over memory per tensor; lrs and wd are lists of floats [R]."""
    # adamw_step makes about ten passes over every tensor, one per elementwise operation; the fused
    # kernel reads p, g, m and v once and writes p, m and v once, with the same arithmetic (eps
    # outside the bias-corrected root). It takes one lr and one weight decay per call, so the
    # decoupled decay p *= 1 - lr*wd is applied first, per run as in adamw_step, and the kernel
    # runs with weight_decay=0 once per stretch of runs that share a learning rate.
    device = next(iter(params.values())).device
    decay = 1 - torch.tensor(lrs, dtype=torch.float32) * torch.tensor(wd, dtype=torch.float32)  # float32, as adamw_step
    decay = decay.to(device)
    cuts = [0] + [r for r in range(1, len(lrs)) if lrs[r] != lrs[r - 1]] + [len(lrs)]
    for n, p in params.items():
        p.mul_(decay.view((-1,) + (1,) * (p.dim() - 1)))
    # The CPU kernel reads every tensor as its flat memory, so a gradient that autograd returns
    # transposed (W_Q's, W_K's and W_V's, from their einsums) is made contiguous first; fed as it
    # is, torch 2.13 would pair the wrong gradient entries with the parameters.
    grads = {n: g.contiguous() for n, g in grads.items()}
    for a, b in zip(cuts[:-1], cuts[1:]):
        pick = lambda tensors: [t[a:b] for t in tensors.values()]
        steps = torch.full((len(params),), float(step - 1), device=device).unbind(0)  # the kernel adds 1 first
        torch_adamw(pick(params), pick(grads), pick(state["m"]), pick(state["v"]), [], list(steps), fused=True,
                    amsgrad=False, beta1=beta1, beta2=beta2, lr=lrs[a], weight_decay=0.0, eps=eps, maximize=False)


def train_step(batch, step, beta1, beta2, eps):
    """One full-batch AdamW step of every run of a batch; returns each run's training loss before it, in batch order: [A]."""
    params = batch["params"]
    losses = batch_losses(params, batch)
    grads = dict(zip(params, torch.autograd.grad(losses.sum(), list(params.values()))))
    with torch.no_grad():
        adamw_step_fused(params, grads, batch["state"], step, batch["lrs"], batch["wd"], beta1, beta2, eps)
    return losses.detach()


def eval_set(tokens, idx, labels, device):
    """Each run's examples (idx [R, M], -1 = padding) as inputs, labels [R, M] and mask, and how many runs to evaluate at once."""
    # Runs are evaluated a few at a time, so that memory stays bounded for many runs: at most
    # 2^24 floats of activations per slice on a CPU (2^27 on a GPU, which prefers big batches).
    limit = 2 ** (27 if device.type == "cuda" else 24)
    per_run = idx.shape[1] * 1024  # d_mlp + n_out activations per input, rounded up
    return dict(tokens=tokens[torch.as_tensor(np.maximum(idx, 0))].to(device), labels=labels.to(device),
                mask=torch.as_tensor(idx >= 0, device=device), runs_at_once=max(1, limit // per_run))


@torch.no_grad()
def evaluate(params, examples):
    """Mean loss and accuracy of each run over its own examples (an eval_set): two [R] float64 tensors."""
    loss, correct = [], []
    R, step = examples["tokens"].shape[0], examples["runs_at_once"]
    for s in range(0, R, step):
        sl = slice(s, s + step)
        logits = forward_last_folded({n: t[sl] for n, t in params.items()}, examples["tokens"][sl])  # [r, M, n_out]
        labels, mask = examples["labels"][sl], examples["mask"][sl]
        loss.append(cross_entropy(logits, labels, mask / mask.sum(-1, keepdim=True)))
        correct.append(((logits.argmax(-1) == labels) & mask).sum(-1) / mask.sum(-1))
    return torch.cat(loss), torch.cat(correct).double()


def keep_freed_memory():
    """Ask glibc to keep freed memory in the process instead of returning it to the OS (Linux only)."""
    # Each epoch allocates and frees the same few large buffers ([R, B, d_mlp] activations).
    # By default glibc serves large blocks with mmap and unmaps them on free, so the next epoch
    # takes a page fault on every 4 KiB of them again; on a small VM that costs as much as the
    # matmul that fills the buffer. With mmap off and trimming off, freed blocks are reused.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX = 0: serve large blocks from the heap
        libc.mallopt(-1, 2 ** 31 - 1)  # M_TRIM_THRESHOLD: never give the heap's top back
    except (OSError, AttributeError):
        pass  # not glibc (macOS, Windows): keep the platform's allocator as it is


# -----------------------------------------------------------------------------
# The sweep loop: many runs in one process, each trained as train_textbook trains one
# (tests/test_grok.py compares them). The setup in small functions (the runs of a sweep, checks,
# records, the convergence test), then train() and the one flat loop over epochs, train_loop.
# Where a run is kept on disk is the next section's job.


def parse_list(text, kind, name):
    """Parse a comma list ("1,2", and for ints ranges like "0-9") into a list of kind."""
    out = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if kind is int and "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else part[1:].split("-", 1)
                if int(hi) < int(lo):
                    raise ValueError(f"--{name} range {part!r} runs downwards; allowed: LO-HI with LO <= HI, e.g. "
                                     f"{hi}-{lo}")
                out += list(range(int(lo), int(hi) + 1))
            else:
                out.append(kind(part))
    except ValueError as e:
        if "runs downwards" in str(e):
            raise
        raise ValueError(f"--{name} {text!r} is not a comma list of {kind.__name__}s") from None
    if not out:
        raise ValueError(f"--{name} is empty")
    return out


def train_size(spec, n_all):
    """Training-set size for one entry of --train: a fraction if it has a '.', else a count D."""
    spec = spec.strip()
    if not spec:
        raise ValueError("--train has an empty entry; allowed: fractions like 0.3 or counts like 3830, comma-separated")
    try:
        value = float(spec)
    except ValueError:
        raise ValueError(f"--train entry {spec!r} is not a number; allowed: a fraction like 0.3 or a count like 3830") from None
    if "." in spec:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"training fraction {spec} is outside (0, 1]")
        return max(1, int(value * n_all))
    if not value.is_integer():  # "1e-1": a fraction needs its '.', so that 1 (one pair) and 1.0 (all) differ
        raise ValueError(f"--train entry {spec!r} is not a whole count; write a fraction with a '.', e.g. 0.1")
    d = int(value)
    if not 0 < d <= n_all:
        raise ValueError(f"training size D={d} is not in 1..{n_all} (the number of pairs of this task)")
    return d


def make_runs(cfg, n_all):
    """The runs of a config: the product of seeds x training sizes x weight decays x lrs."""
    seeds = parse_list(cfg.seeds, int, "seeds")
    sizes = [train_size(s, n_all) for s in cfg.train.split(",")]
    wds, lrs = parse_list(cfg.wd, float, "wd"), parse_list(cfg.lr, float, "lr")
    if any(s < 0 for s in seeds):
        raise ValueError(f"--seeds must be >= 0 (numpy's generators take no negative seeds), got {cfg.seeds!r}")
    if not all(math.isfinite(w) and w >= 0 for w in wds) or not all(math.isfinite(l) and l > 0 for l in lrs):
        raise ValueError(f"weight decays must be finite and >= 0 and learning rates finite and > 0, "
                         f"got --wd {cfg.wd!r} --lr {cfg.lr!r}")
    for flag, values in (("seeds", seeds), ("train", sizes), ("wd", wds), ("lr", lrs)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:  # two identical runs: twice the work, and a source with one seed twice cannot start others
            raise ValueError(f"--{flag} names {', '.join(f'{v:g}' for v in twice)} more than once (as given: "
                             f"{getattr(cfg, 'train' if flag == 'train' else flag)!r}); allowed: distinct values")
    runs = list(itertools.product(seeds, sizes, wds, lrs))
    return {k: [r[i] for r in runs] for i, k in enumerate(("seed", "n_train", "wd", "lr"))}


def parse_shard(text):
    """--shard "K/N" as (K, N) with 0 <= K < N; empty: None (every run)."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) == 0 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"--shard {text!r} is not a shard; allowed: K/N with whole numbers 0 <= K < N, e.g. 0/4 "
                         f"(the first of four)")
    return int(m.group(1)), int(m.group(2))


def shard_runs(runs, shard):
    """The runs of one shard (K, N) of a sweep: those whose index in the sweep is K mod N, in sweep order."""
    # Runs are independent (each has its own seed, subset and state), so any split of the product is
    # exact; taking every N-th run spreads the sizes and seeds evenly over the shards.
    k, n = shard
    return {key: values[k::n] for key, values in runs.items()}


def available_memory():
    """Bytes of memory this machine can still give (MemAvailable on Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return None


def param_count(dims):
    """Parameters of one run of the model with these sizes."""
    return sum(math.prod(dims[a] for a in axes) for axes in PARAM_SHAPES.values())


def check_memory(n_pairs, n_ctx, n_runs, d_max, d_width, n_params=0):
    """Refuse, before anything is allocated or written, a config whose data, activations and parameters do not fit."""
    # The dataset (tokens, labels and numpy's intermediates), each run's index lists, the training
    # step's largest activations ([R, D, max(d_mlp, d_model)] floats, a handful alive at once), and
    # the parameters: with their gradients, AdamW's m and v, the batch's working copy of those three
    # and a checkpoint serialised in memory, about ten float32 copies.
    need = (8 * n_pairs * (n_ctx + 4) + 16 * n_runs * n_pairs + 4 * 8 * n_runs * d_max * d_width
            + 4 * 10 * n_runs * n_params)
    have = available_memory()
    if have is not None and need > 0.8 * have:
        raise ValueError(f"this config needs about {need / 2**30:.1f} GiB ({n_pairs} pairs, {n_runs} runs of D up to "
                         f"{d_max}, {n_params} parameters a run) and this machine has {have / 2**30:.1f} GiB available; "
                         f"use a smaller --p, fewer runs, a smaller --train or a smaller model")


def check_config(cfg):
    """Raise a one-line ValueError for settings outside their allowed range."""
    for name in ("epochs", "log_every", "print_every", "ckpt_every", "d_model", "n_heads", "d_head",
                 "d_mlp", "bench_epochs", "log_points"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.snapshots < 0:
        raise ValueError(f"--snapshots must be >= 0, got {cfg.snapshots}")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1 and cfg.eps > 0):
        raise ValueError("AdamW needs 0 <= beta1, beta2 < 1 and eps > 0")
    if not (cfg.converge_window >= 0 and cfg.converge_acc >= 0 and cfg.converge_loss >= 0 and cfg.converge_norm >= 0):
        raise ValueError("--converge-window must be >= 0 epochs (0: no test), --converge-acc, --converge-loss and "
                         "--converge-norm >= 0")
    if cfg.converge_levels and not all(0 < x < 1 for x in parse_list(cfg.converge_levels, float, "converge-levels")):
        raise ValueError(f"--converge-levels {cfg.converge_levels!r}: each level must lie strictly between 0 and 1")
    if 0 < cfg.converge_window < 4 * cfg.log_every:
        raise ValueError(f"--converge-window {cfg.converge_window} spans fewer than 4 records (--log-every "
                         f"{cfg.log_every}); allowed: 0 or at least {4 * cfg.log_every} epochs")
    if not 0.0 <= cfg.stop_acc <= 1.0:
        raise ValueError(f"--stop-acc must be in [0, 1], got {cfg.stop_acc}")
    if not (math.isfinite(cfg.wd_budget) and cfg.wd_budget >= 0):
        raise ValueError(f"--wd-budget must be a finite number >= 0 (weight-decay time constants lr*wd*epochs; "
                         f"0: every run trains --epochs), got {cfg.wd_budget}")
    if cfg.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: all cores), got {cfg.threads}")
    if cfg.group_rows < -1:
        raise ValueError(f"--group-rows must be >= 0, or -1 for the device's default, got {cfg.group_rows}")
    for name in ("beta1", "beta2", "eps", "stop_acc", "converge_acc", "converge_loss", "converge_norm"):
        if not math.isfinite(getattr(cfg, name)):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(cfg, name)}")
    if cfg.task.startswith("s5_") and cfg.p != Config.p:
        raise ValueError(f"--p does not apply to {cfg.task} (the 120 permutations of S5); leave it out")
    if not cfg.out.strip():
        raise ValueError("--out is empty; give the run directory")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f"--out {cfg.out} is a file, not a directory")
    parse_shard(cfg.shard)
    if cfg.bench_impl not in ("fast", "reference", "serial"):
        raise ValueError(f"--bench-impl {cfg.bench_impl!r} is unknown; allowed: fast, reference, serial")


def resolve_device(name):
    """The torch device for --device (auto: CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def sweep_data(cfg):
    """Dataset, runs (this shard's, with --shard) and model sizes of a config: what every command needs before it starts."""
    n_ctx = {"varma": 4, "nanda": 3}.get(cfg.fmt, 4)
    n_pairs = 120 * 120 if cfg.task.startswith("s5_") else cfg.p * cfg.p
    check_memory(n_pairs, n_ctx, 1, 1, cfg.d_mlp)  # the dataset itself, before it is built
    tokens, labels, d_vocab, n_out = make_dataset(cfg.task, cfg.p, cfg.fmt)
    runs = make_runs(cfg, len(labels))
    shard = parse_shard(cfg.shard)
    if shard:
        runs = shard_runs(runs, shard)
    dims = dict(d_vocab=d_vocab, n_ctx=tokens.shape[1], n_out=n_out, d_model=cfg.d_model,
                n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp)
    if runs["seed"]:  # a shard past the sweep's last run holds none (train() says so and writes nothing)
        check_memory(len(labels), n_ctx, len(runs["seed"]), max(runs["n_train"]), max(cfg.d_mlp, cfg.d_model),
                     param_count(dims))
    return tokens, labels, runs, dims


def record_epochs(epochs, log_every, log_points):
    """Epochs at which metrics are recorded: every log_every, log-spaced points, the first and last."""
    logs = np.round(np.logspace(0, np.log10(epochs), log_points)).astype(int)
    return set(range(0, epochs + 1, log_every)) | set(logs.tolist()) | {0, epochs}


def snapshot_epochs(epochs, snapshots):
    """Epochs at which the parameters are saved for analysis.py (log-spaced, plus 0 and the end)."""
    if snapshots == 0:
        return set()
    logs = np.round(np.logspace(0, np.log10(epochs), snapshots)).astype(int)
    return set(logs.tolist()) | {0, epochs}


def new_history():
    """Empty metric lists: epoch and wall_s per record, and [R] tensors of each metric."""
    # move_*: the convergence test's movements over its window at each record (nan: no test, or too early)
    return {k: [] for k in ("epoch", "wall_s", "train_loss", "train_acc", "test_loss", "test_acc", "param_norm",
                            *CONVERGE_KEYS)}


def record(hist, epoch, wall_s, metrics):
    """Append one row of metrics ({name: [R] tensor}) to the history."""
    hist["epoch"].append(epoch)
    hist["wall_s"].append(wall_s)  # training time so far, evaluations included
    for k, v in metrics.items():
        hist[k].append(v.detach().double().cpu())


def history_arrays(hist, stops):
    """The recorded metrics as arrays: epoch and wall_s [T], each metric [R, T], and when and why runs stopped [R]."""
    out = {"epoch": np.array(hist["epoch"], dtype=np.int64), "wall_s": np.array(hist["wall_s"])}
    for k, v in hist.items():
        if k not in out:
            out[k] = torch.stack(v, dim=1).numpy() if v else np.zeros((0, 0))
    # stop_epoch: the epoch whose state a run kept when it stopped early (-1: it trained to the end).
    out["stop_epoch"] = np.array(stops["epoch"], dtype=np.int64)
    out["stop_reason"] = np.array(stops["reason"], dtype=str)
    # converged_epoch: the first record at which a run passed the convergence test (-1: never).
    out["converged_epoch"] = np.array(stops["first_pass"], dtype=np.int64)
    return out


def progress_line(hist, epoch, epochs, rate):
    """One fixed-format progress line from the last record."""
    eta = (epochs - epoch) / rate if rate > 0 else float("nan")
    acc = hist["test_acc"][-1].numpy()
    return (f"epoch {epoch:8d}/{epochs} | {hist['wall_s'][-1]:7.1f} s | {rate:6.1f} ep/s | eta {eta / 60:6.1f} min | "
            f"train_loss {hist['train_loss'][-1].median():.3e} | test_acc median {np.median(acc):.4f} "
            f"[{acc.min():.4f}, {acc.max():.4f}]")


def quarter_medians(epochs, x, now, window):
    """The medians of x [R, T] over the four quarters (by epoch) of the trailing window (now - window, now]: [R, 4], None if the records do not span it."""
    epochs, x = np.asarray(epochs), np.asarray(x)
    if len(epochs) == 0 or epochs[0] > now - window:
        return None
    quarter = np.floor((epochs - (now - window)) / (window / 4) - 1e-9).astype(int)  # (now-W, now-3W/4] -> 0, ...
    medians = []
    for q in range(4):
        sel = quarter == q
        if not sel.any():
            return None
        medians.append(np.median(x[:, sel], axis=1))
    return np.stack(medians, axis=1)  # [R, 4]


def window_movement(epochs, x, now, window):
    """How far x [R, T] moved over the trailing window (now - window, now]: [R], nan if the records do not span it.

    The window's records are cut into four quarters by epoch, and the movement is the range (max
    minus min) of the four quarters' medians. A median ignores one spike; a steady drift d over the
    window shows as about 3/4 d; and a quantity that turns (down, then up) shows its swing, where
    last minus first would pass through zero at the turn.
    """
    m = quarter_medians(epochs, x, now, window)
    return np.full(len(x), np.nan) if m is None else m.max(axis=1) - m.min(axis=1)


def window_drift(epochs, x, now, window):
    """The steady drift of x [R, T] per window at the end of the trailing window: [R] >= 0, nan if the records do not span it."""
    # From the first quarter's median to the last's, 3/4 of a window apart: a steady drift d per
    # window gives d; a swing that is back where it was by the last quarter gives none, since it
    # does not carry the run on, and the window's records already show its extremes. A slower
    # swing shows as drift, so its reach is larger: the side is settled later, never sooner.
    m = quarter_medians(epochs, x, now, window)
    return np.full(len(x), np.nan) if m is None else np.abs(m[:, 3] - m[:, 0]) * 4 / 3


def window_straddles(epochs, x, now, window, levels, margin=0.0):
    """How many of the levels the records of x [R, T] in the trailing window straddle or come within margin (one, or [R]) of: [R], nan if they do not span it."""
    # The brackets of P2, P3 and D_crit read only on which side of their levels a run's final
    # accuracy lies ("the test accuracy at convergence", Sec. 5.2), so a run that moves within one
    # side changes no verdict, and one record across a level does: every record counts, not medians.
    # A side is only settled if the level is out of reach: a record within `margin` of a level
    # counts as on it (convergence_movements sets the margin).
    epochs, x = np.asarray(epochs), np.asarray(x)
    if len(epochs) == 0 or epochs[0] > now - window:
        return np.full(len(x), np.nan)
    inside = x[:, (epochs > now - window) & (epochs <= now)]  # [R, records in the window]
    margin = np.reshape(margin, (-1, 1)) if np.ndim(margin) else margin  # one per run: [R, 1]
    return sum((((inside < lv).any(axis=1) & (inside >= lv).any(axis=1)) | (np.abs(inside - lv) <= margin).any(axis=1))
               .astype(float) for lv in levels)


# The test reads functions of the network, not its coordinates: with AdamW each coordinate keeps
# moving by about lr a step even once the loss has settled (a network of the test suite that fits
# every pair, loss 4e-8, still moved 8-15% of its norm per 100 epochs at lr 3e-3), while its
# accuracy, loss and norm stay put. The loss is the circuit mix's gauge: while one circuit replaces
# the other at a flat accuracy (C_mem taking over as an ungrokking run nears its level, Fig. 7),
# the loss keeps moving.
CONVERGE_KEYS = ("move_acc", "move_loss", "move_norm", "move_levels")


def convergence_movements(cfg, hist, epoch):
    """The convergence test's movements over the window ending at epoch: {move_acc, move_loss, move_norm, move_levels: [R]}."""
    stack = lambda k: torch.stack(hist[k], dim=1).numpy()  # [R, T]
    which = "train" if cfg.random_labels else "test"  # random labels: test accuracy is chance, the claims read the fit
    R = len(hist[f"{which}_acc"][0])
    if cfg.converge_window <= 0:
        return {k: torch.full((R,), float("nan"), dtype=torch.float64) for k in CONVERGE_KEYS}
    move = lambda x: torch.from_numpy(window_movement(hist["epoch"], x, epoch, cfg.converge_window))
    with np.errstate(divide="ignore", invalid="ignore"):
        # The loss enters as log(loss + 0.01): relative changes above 0.01 nats, and below it, where each
        # example's right class has probability > 0.99 and no claim reads the difference, almost none.
        acc = stack(f"{which}_acc")
        sides = np.full(R, np.nan)  # [R]: levels straddled or within reach (--converge-levels only)
        if cfg.converge_levels:
            W = cfg.converge_window
            reach = level_reach(cfg.converge_acc, window_drift(hist["epoch"], acc, epoch, W), epoch, W)  # [R]
            levels = parse_list(cfg.converge_levels, float, "converge-levels")
            sides = window_straddles(hist["epoch"], acc, epoch, W, levels, reach)
        return dict(move_acc=move(acc), move_loss=move(np.log(stack(f"{which}_loss") + 0.01)),
                    move_norm=move(np.log(stack("param_norm"))), move_levels=torch.from_numpy(sides))


def level_reach(limit, drift, epoch, window):
    """How far each run's accuracy may still go if trained on for as long again as it has: [R] (drift: per window, [R])."""
    # A level nearer than this is not a settled side. The horizon is the false-convergence check's:
    # a run settled at epoch e is trained on to 2e, e / window windows more. The rate is the run's
    # own drift (window_drift), and at least the plain test's limit. The reach first assumed that
    # limit for every run; but with --converge-levels a run passes at any rate within a side, so the
    # limit is no forecast for a run that drifts 0.03 per window (the reason for the change: what
    # the reach forecasts, not a verdict). A window not yet spanned (nan) counts at the limit; its
    # sides fail anyway, as the window does not span.
    return np.fmax(limit, np.asarray(drift, float)) * epoch / window


def passes_convergence(moves, cfg):
    """Which runs pass the convergence test: each movement within its tolerance ([R] bools; nan fails)."""
    # With --converge-levels the accuracy passes when its window straddles none of the levels, in
    # place of moving at most --converge-acc; the loss and norm conditions stay.
    acc = ("move_levels", 0.0) if cfg.converge_levels else ("move_acc", cfg.converge_acc)
    limits = dict([acc], move_loss=cfg.converge_loss, move_norm=cfg.converge_norm)
    ok = torch.ones(len(moves["move_acc"]), dtype=torch.bool)
    for k, limit in limits.items():
        ok &= moves[k] <= limit
    return ok


def last_trained_record(h):
    """Per run of a saved history, the index of its last record while it trained: where it stopped, else the last. [R] ints."""
    # A stopped run is frozen, and evaluated as such at every later record: those records measure a
    # network that no longer moves, so a test read there would pass by construction.
    R = len(h["stop_reason"])
    if "stop_epoch" not in h or "epoch" not in h:  # no stops recorded: every run trained to the last record
        return np.full(R, -1)
    epoch, stop = np.asarray(h["epoch"]), np.asarray(h["stop_epoch"])
    T = len(epoch)
    return np.where(stop >= 0, np.minimum(np.searchsorted(epoch, stop), T - 1), T - 1)


def converged_at_end(h, cfg):
    """Per run of a saved history (history.npz's arrays, config.json's settings): did it end converged? [R] bools.

    Stopped by the test, or (--converge-train-on, which never stops a run on the test) passing it at
    its last record while it trained (the end, or where its --wd-budget stopped it).
    """
    stopped = np.array([str(w).startswith("converged") for w in h["stop_reason"]], bool)
    if "move_acc" not in h or not cfg.get("converge_train_on", False):
        return stopped
    R, at = len(stopped), last_trained_record(h)
    last = {k: torch.as_tensor(np.asarray(h[k])[np.arange(R), at] if k in h else np.full(R, np.nan))
            for k in CONVERGE_KEYS}
    test = Config(**{k: cfg[k] for k in ("converge_acc", "converge_loss", "converge_norm")},
                  converge_levels=cfg.get("converge_levels", ""))
    return stopped | passes_convergence(last, test).numpy()


def loss_toward(epochs, loss, now, window):
    """How far log(loss + 0.01) [R, T] rose and fell over the trailing window (now - window, now]: ([R], [R]), nan if the records do not span it."""
    # The rise is the largest increase from one quarter's median to a later quarter's, the fall the
    # largest decrease; the larger of the two is window_movement's range, the loop's move_loss.
    m = quarter_medians(epochs, np.log(np.asarray(loss, float) + 0.01), now, window)
    if m is None:
        return np.full(len(loss), np.nan), np.full(len(loss), np.nan)
    later = np.triu(np.ones((4, 4), bool), 1)  # [4, 4]: quarter j after quarter i
    d = m[:, None, :] - m[:, :, None]  # [R, 4, 4]: d[r, i, j] = m[r, j] - m[r, i]
    return np.where(later, d, -np.inf).max(axis=(1, 2)), np.where(later, -d, -np.inf).max(axis=(1, 2))


def level_conditions(h, cfg, levels, at=None):
    """The two conditions of a settled side, per run of a saved history and per level, at record `at` (default: its
    last while it trained): {side: [R, L], loss: [R, L]} bools (a window not spanned fails)."""
    # side: the window's records lie on one side of the level and out of reach of it (level_reach).
    # loss: log(loss + 0.01) moved at most converge_loss TOWARD the level over the window: a rise
    # for a run above it, a fall for one below it. The loss moves against the accuracy as the circuit
    # mix shifts (C_mem replacing C_gen raises the test loss while accuracy falls, Fig. 7), so only
    # movement toward a level can carry a run across it.
    # A side first also asked the loss to stay within the limit moving away from the level, and the
    # norm to stay within converge_norm. Neither says which side a run ends on, which is all that a
    # bracket reads ("test accuracy at convergence", Sec. 5.2): a run below 0.5 that is still
    # ungrokking moves its loss up and its norm down, and ends further below 0.5. The reason for the
    # change: what a side is, not a verdict; the loss limit, the levels and the reach stay, and the
    # whole-run test (passes_convergence: accuracy, loss either way, norm) stays for the claims that
    # read more than a side (Fig. 10's logit ratios). The false-convergence check follows every
    # (run, level) pair this settles to twice its epoch and counts crossings (report.py).
    R, L = len(h["stop_reason"]), len(levels)
    at = last_trained_record(h) if at is None else np.broadcast_to(np.asarray(at), (R,))
    epoch, W = np.asarray(h["epoch"]), cfg["converge_window"]
    which = "train" if cfg.get("random_labels") else "test"
    acc, loss = np.asarray(h[f"{which}_acc"]), np.asarray(h[f"{which}_loss"])  # [R, T]
    side, loss_ok = np.zeros((R, L), bool), np.zeros((R, L), bool)
    for a in np.unique(at):  # the runs read at one record share its window: [n, T] at a time
        sel = at == a
        now = epoch[a]
        reach = level_reach(cfg["converge_acc"], window_drift(epoch, acc[sel], now, W), now, W)  # [n], as the loop's
        rise, fall = loss_toward(epoch, loss[sel], now, W)  # [n]
        for k, level in enumerate(levels):
            side[sel, k] = window_straddles(epoch, acc[sel], now, W, [level], reach) == 0
            with np.errstate(invalid="ignore"):  # nan fails
                loss_ok[sel, k] = np.where(acc[sel, a] >= level, rise, fall) <= cfg["converge_loss"]
    return dict(side=side, loss=loss_ok)


def settled_at_levels(h, cfg, levels, at=None):
    """Per run of a saved history and per level: does it pass the test at record `at` (default: its last while it
    trained) with the accuracy and loss conditions read at that level alone? [R, len(levels)] bools."""
    # A bracket at level L reads only which side of L a run's accuracy at convergence lies on (Sec.
    # 5.2: "test accuracy at convergence"), so for that bracket a run is settled when its window's
    # records lie on one side of L and out of reach of it and its loss does not move toward L
    # (level_conditions). A run that sits at 0.69 and wanders across 0.7 has no settled
    # side of 0.7 (D_crit at 0.7 cannot use it), but it is settled above 0.5 (P3 can). Without
    # --converge-levels, or for runs the test stopped, this is converged_at_end at every level.
    if not (cfg.get("converge_train_on") and cfg.get("converge_levels")) or "move_loss" not in h:
        return np.repeat(converged_at_end(h, cfg)[:, None], len(levels), axis=1)
    c = level_conditions(h, cfg, levels, at)
    return c["side"] & c["loss"]


def still_training(stops):
    """Per run, whether it still trains: not stopped (converged, --stop-acc, --wd-budget) nor frozen (diverged). [R] bools."""
    return [e < 0 for e in stops["epoch"]]


def note_converged(hist, stops, cfg, epoch):
    """Record each run's first passing epoch; stop the newly passing ones unless --converge-train-on. Returns the runs stopped now."""
    last, on = {k: hist[k][-1] for k in CONVERGE_KEYS}, still_training(stops)
    stopped = []
    for r, good in enumerate(passes_convergence(last, cfg).tolist()):
        if good and on[r] and stops["first_pass"][r] < 0:  # a stopped run is frozen: it would pass by construction
            stops["first_pass"][r] = epoch
        if good and on[r] and not cfg.converge_train_on:
            stops["epoch"][r] = epoch
            side = f" (on one side of each of {cfg.converge_levels}, out of reach)" if cfg.converge_levels else ""
            stops["reason"][r] = (f"converged: over epochs {epoch - cfg.converge_window}-{epoch} accuracy moved "
                                  f"{last['move_acc'][r]:.4f}{side}, log loss {last['move_loss'][r]:.4f}, log norm "
                                  f"{last['move_norm'][r]:.5f} (limits {cfg.converge_acc:g}, {cfg.converge_loss:g}, "
                                  f"{cfg.converge_norm:g})")
            stopped.append(r)
    return stopped


def budget_epochs(runs, cfg):
    """Each run's last epoch: --epochs, or with --wd-budget T the first epoch at which lr*wd*epoch >= T (at most --epochs)."""
    # The time constant of decoupled weight decay is 1/(lr*wd) epochs (AdamW shrinks each weight by
    # a factor 1 - lr*wd a step), and ungrokking moves in units of lr*wd*epochs: runs at two weight
    # decays given the same T have had the same time to reallocate their norm (Sec. 5.2, Fig. 4).
    if cfg.wd_budget <= 0:
        return [cfg.epochs] * len(runs["wd"])
    return [min(cfg.epochs, math.ceil(cfg.wd_budget / (lr * wd) - 1e-9)) if lr * wd > 0 else cfg.epochs
            for lr, wd in zip(runs["lr"], runs["wd"])]


def note_budget(stops, budgets, epoch, epochs):
    """Stop each still-training run whose --wd-budget ends before --epochs, by this record (the first at or after it). Returns the runs stopped now."""
    on = still_training(stops)
    stopped = [r for r, b in enumerate(budgets) if epoch >= b and b < epochs and on[r]]
    for r in stopped:
        stops["epoch"][r] = epoch
        stops["reason"][r] = f"budget: trained to epoch {epoch}, its --wd-budget's end ({budgets[r]}: lr*wd*epochs)"
    return stopped


def note_reached(stops, test_acc, level, epoch):
    """Stop each still-training run whose test accuracy reached level at this record. Returns the runs stopped now."""
    # The time-to-grok sweep reads only the first epoch at which a run generalises, so a run stops there.
    on = still_training(stops)
    stopped = [r for r, a in enumerate(test_acc.tolist()) if a >= level and on[r]]
    for r in stopped:
        stops["epoch"][r] = epoch
        stops["reason"][r] = f"reached test accuracy {level:g} at epoch {epoch}"
    return stopped


class RunsDiverged(Exception):
    """Some runs went non-finite: they were frozen at their last finite state and the others finished."""


def train(cfg):
    """Train the runs of cfg, or resume them from their checkpoint; returns the run directory."""
    check_config(cfg)
    if cfg.bench:  # one job a function: main() sends --bench to bench()
        raise ValueError("this config asks for --bench; call bench(cfg) to time it, or unset bench to train")
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # Everything is validated, and the --init-from source read, before the first byte is written.
    tokens, labels, runs, dims = sweep_data(cfg)
    R, out = len(runs["seed"]), cfg.out
    if R == 0:  # a job array with more tasks than this sweep has runs: nothing to train, nothing written
        print(f"grok.py: shard {cfg.shard} of this sweep holds no runs (the sweep has {len(make_runs(cfg, len(labels))['seed'])}); "
              f"nothing to do", flush=True)
        return out
    source = read_source(cfg.init_from)
    meta = run_meta(cfg, runs, dims, len(labels), device, source)
    init = initial_params(cfg, runs, dims, source)
    print(f"grok.py: {R} run(s) of {cfg.task} ({TASKS[cfg.task]}), p={cfg.p}, {cfg.fmt} format, "
          f"{len(labels)} pairs, on {device} ({torch.get_num_threads()} CPU threads)", flush=True)
    rd = lock_run_dir(out)
    try:
        if open_run_dir(rd, meta):
            print(f"{out} is already finished (params.pt exists); nothing to do", flush=True)
            report_stops(out, stops_of_finished(rd))
            return out
        train_loop(cfg, rd, meta, tokens, labels, runs, dims, init, device)
    finally:
        unlock_run_dir(rd)
    return out


def report_stops(out, stops):
    """Raise RunsDiverged (one line) if any run of out diverged."""
    bad = [r for r, why in enumerate(stops["reason"]) if why.startswith("diverged")]
    if bad:
        which = "; ".join(f"run {r}: {stops['reason'][r]}" for r in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise RunsDiverged(f"{len(bad)} of {len(stops['reason'])} run(s) of {out} diverged ({which}); each is frozen "
                           f"at its last finite state and the others finished; history.npz has stop_epoch and stop_reason")


def train_loop(cfg, rd, meta, tokens, labels, runs, dims, init, device):
    """The training loop over epochs: checkpoint, record, step; a run that stops (diverged, converged, --stop-acc) leaves the batch."""
    R, settings = len(runs["seed"]), run_settings(meta)
    # Data: each run's training subset (and labels) and test set, on the device.
    train_idx, test_idx, train_labels = run_splits(runs, labels, dims["n_out"], cfg.random_labels)
    save_in(rd, "train_idx.npz", dict(train_idx=train_idx, n_train=np.array(runs["n_train"]),
                                      train_labels=train_labels, test_idx=test_idx), "npz")
    train_set = eval_set(tokens, train_idx, torch.as_tensor(train_labels), device)
    test_set = eval_set(tokens, test_idx, labels[torch.as_tensor(np.maximum(test_idx, 0))], device)

    params, state, hist, stops, start, wall0 = start_or_resume(rd, settings, init, device)
    records = record_epochs(cfg.epochs, cfg.log_every, cfg.log_points)
    snaps = snapshot_epochs(cfg.epochs, cfg.snapshots)
    budgets = budget_epochs(runs, cfg)  # [R]: each run's last epoch (--epochs, or its --wd-budget's end)
    first_bad = torch.full((R,), -1, dtype=torch.long, device=device)  # each run's first non-finite loss, on the device
    t0 = time.perf_counter()
    wall = lambda: wall0 + time.perf_counter() - t0
    # The training runs step in a batch (make_batch): a working copy of their state in batch order,
    # written back into params and state wherever those are read, and rebuilt whenever a run stops.
    batch = None
    for epoch in range(start, cfg.epochs + 1):
        checkpoint = epoch == cfg.epochs or (epoch % cfg.ckpt_every == 0 and epoch > start)
        if batch is not None and (checkpoint or epoch in snaps or epoch in records):
            write_back(batch, params, state)
        if checkpoint:
            if freeze_diverged(rd, params, state, hist, stops, first_bad, init):
                batch = None
            if epoch < cfg.epochs:  # the end is saved after the loop
                save_checkpoint(rd, params, state, hist, stops, epoch, wall(), settings)
        if epoch in snaps:
            save_snapshot(rd, params, epoch)
        if epoch in records and not (hist["epoch"] and hist["epoch"][-1] >= epoch):  # a resumed end is recorded once
            (train_loss, train_acc), (test_loss, test_acc) = evaluate(params, train_set), evaluate(params, test_set)
            with torch.no_grad():  # the last epoch's loss is computed only here: it feeds the running flag too
                training = torch.tensor(still_training(stops), device=device)
                first_bad = torch.where(~torch.isfinite(train_loss) & (first_bad < 0) & training, epoch, first_bad)
            metrics = dict(train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc,
                           param_norm=param_norm(params))
            record(hist, epoch, wall(), metrics)
            for k, v in convergence_movements(cfg, hist, epoch).items():  # the movements read this record too
                hist[k].append(v)
            if cfg.converge_window > 0 and note_converged(hist, stops, cfg, epoch):
                batch = None
            if cfg.stop_acc > 0 and note_reached(stops, test_acc, cfg.stop_acc, epoch):
                batch = None
            if cfg.wd_budget > 0 and note_budget(stops, budgets, epoch, cfg.epochs):
                batch = None
            if epoch % cfg.print_every == 0 or epoch == cfg.epochs or not any(still_training(stops)):
                print(progress_line(hist, epoch, cfg.epochs, (epoch - start) / max(wall() - wall0, 1e-9)), flush=True)
        active = [r for r, on in enumerate(still_training(stops)) if on]
        if epoch == cfg.epochs or not active:
            break
        if batch is None:
            batch = make_batch(params, state, runs, tokens, train_idx, train_labels, group_cost(cfg, device), device,
                               active)
        loss = train_step(batch, epoch + 1, cfg.beta1, cfg.beta2, cfg.eps)  # [A]: each run's mean loss over its own D
        with torch.no_grad():  # a running flag on the device: read only at checkpoints and at the end
            idx = batch["order"]
            first_bad[idx] = torch.where(~torch.isfinite(loss) & (first_bad[idx] < 0), epoch, first_bad[idx])
    if not any(still_training(stops)):
        print(f"every run has stopped (converged, reached --stop-acc or its --wd-budget, or diverged); stopping at "
              f"epoch {epoch}", flush=True)

    freeze_diverged(rd, params, state, hist, stops, first_bad, init)
    save_checkpoint(rd, params, state, hist, stops, epoch, wall(), settings)
    save_in(rd, "params.pt", {n: t.detach().cpu() for n, t in params.items()}, "torch")  # last: "finished"
    print(f"done: {rd.path} (epoch {epoch}, {time.perf_counter() - t0:.1f} s)", flush=True)
    report_stops(rd.path, stops)


# -----------------------------------------------------------------------------
# Run directories: what a run keeps on disk, and what it guarantees
#
# - One writer per directory: a lock file names the process; a second writer is refused.
# - Every write is atomic: a temporary file, then a rename, so a kill leaves the old file or the new.
# - A run resumes from its last checkpoint bit-identically, and only with the settings it was
#   started with (config.json; RESUME_FREE lists what may change).
# - A damaged, foreign or missing file is refused in one line that names it and says what to do;
#   nothing on disk is changed by a refused command.
# - A run whose loss goes non-finite is frozen at its last finite state; the others go on.


# Settings that may change when a run resumes; every other setting must match the saved run.
# ("out": a moved directory resumes; "group_rows" only regroups the same arithmetic, as did "pad_ratio",
# the grouping setting that older config.json files hold. The run lists
# are compared by their values, and --init-from by the content of the source's params.pt, so
# "--wd 1" resumes "--wd 1.0" and a moved source still matches.)
RESUME_FREE = ("device", "threads", "print_every", "bench", "bench_impl", "bench_epochs", "out", "group_rows", "pad_ratio",
               "seeds", "train", "wd", "lr", "init_from")


def atomic_write(path, write, dir_fd=None, shown=None):
    """Call write(f) on a temporary file, flush it to disk, then rename it to path: path is never half-written.

    With dir_fd, path is relative to that open directory: the file lands in the directory that was
    opened, even if its path has since been deleted or reused by another run. On any failure the
    temporary file is removed and an OSError names the file (shown, else path) and the cause (one line).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb", opener=lambda p, flags: os.open(p, flags, 0o644, dir_fd=dir_fd)) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as e:
        try:
            os.remove(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        if isinstance(e, OSError):
            cause = e.strerror or str(e)
            raise OSError(e.errno, f"could not write {shown or path}: {cause}" + (
                "; free some space and run the same command again" if e.errno == errno.ENOSPC else "")) from None
        raise


def load_checked(path, load, what_to_do):
    """load(path), or a one-line ValueError that names the file, what is wrong with it and what to do."""
    try:
        return load(path)
    except Exception as e:
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{path} is damaged or was not written by grok.py ({type(e).__name__}: {cause}); "
                         f"{what_to_do}") from None


def load_json(path, what_to_do):
    """A JSON file, checked (one-line error if it is damaged)."""
    def load(p):
        with open(p) as f:
            return json.load(f)
    return load_checked(path, load, what_to_do)


def save_json(obj, path, dir_fd=None, shown=None):
    """Write obj as indented JSON, atomically."""
    text = (json.dumps(obj, indent=1) + "\n").encode()
    atomic_write(path, lambda f: f.write(text), dir_fd, shown)


def save_torch(obj, path, dir_fd=None, shown=None):
    """torch.save obj, atomically."""
    # Serialised in memory first: a full disk inside torch's zip writer is a RuntimeError that names
    # no file, while a full disk in f.write is an OSError that atomic_write reports in one line.
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), dir_fd, shown)


def save_npz(arrays, path, dir_fd=None, shown=None):
    """np.savez arrays (a dict), atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays), dir_fd, shown)


def read_source(init_from):
    """The bytes of an --init-from source's params.pt, read once (None without --init-from)."""
    # Read once, then hashed and loaded from these bytes: a source replaced while a run starts can
    # never be recorded under one identity and loaded as another.
    if not init_from:
        return None
    path = os.path.join(init_from, "params.pt")
    if not os.path.isfile(path):
        raise ValueError(f"--init-from {init_from}: no params.pt there (is the run finished?)")
    with open(path, "rb") as f:
        return f.read()


def run_meta(cfg, runs, dims, n_pairs, device, source=None):
    """What config.json records: every setting, the runs, the model's sizes, versions and the init source."""
    meta = dict(config=dataclasses.asdict(cfg), runs=runs, dims=dims, n_pairs=n_pairs,
                torch=torch.__version__, device=str(device))
    shard = parse_shard(cfg.shard)
    if shard:  # the whole sweep beside this shard's runs: the shards of one sweep are pooled by it (analysis.py)
        meta["shard"] = dict(k=shard[0], n=shard[1], sweep=make_runs(cfg, n_pairs))
    if source is not None:  # the source is identified by its content, so a moved source still matches
        meta["init_sha256"] = hashlib.sha256(source).hexdigest()
    return meta


def run_settings(meta):
    """What must match for a run directory to be resumed: settings by value, the source by content."""
    # An empty --shard or a zero --wd-budget is left out, so that directories written before the flag existed still resume.
    config = {k: v for k, v in meta["config"].items()
              if k not in RESUME_FREE and not (k in ("shard", "wd_budget") and not v)}
    settings = dict(config, runs=meta["runs"], init_sha256=meta.get("init_sha256", ""))
    if "shard" in meta:  # a shard's runs can be equal in two sweeps: the shard resumes only in its own sweep
        settings["sweep"] = meta["shard"]["sweep"]
    return settings


def check_meta(meta, path, what_to_do):
    """Raise (one line) unless meta has the shape of a config.json that grok.py wrote."""
    get = lambda k: meta.get(k) if isinstance(meta, dict) else None
    runs, config = get("runs"), get("config")
    ok = (isinstance(config, dict) and all(k in config for k in ("task", "p", "fmt", "epochs"))
          and isinstance(get("dims"), dict) and isinstance(get("n_pairs"), int) and isinstance(runs, dict)
          and all(isinstance(runs.get(k), list) for k in ("seed", "n_train", "wd", "lr"))
          and len({len(runs[k]) for k in ("seed", "n_train", "wd", "lr")}) == 1)
    if not ok:
        raise ValueError(f"{path} is not a grok.py config.json (it needs 'config' with task, p, fmt and epochs, "
                         f"'dims', 'n_pairs', and 'runs' with equal lists 'seed', 'n_train', 'wd', 'lr'); {what_to_do}")
    return meta


# What a run directory may hold: grok.py's files, its snapshots, temporary files of its writes,
# and analysis/, where analysis.py writes by default.
RUN_DIR_NAMES = ("config.json", "checkpoint.pt", "params.pt", "history.npz", "train_idx.npz", "snapshots", ".lock",
                 "analysis")


TMP_NAME = re.compile(r".+\.tmp\d+$")  # atomic_write's temporary files: NAME.tmpPID


SNAPSHOT_NAME = re.compile(r"epoch_\d{8}\.pt$")


HAVE_DIR_FD = hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd


@dataclass
class RunDir:
    """A run directory held by this process: the path it was given, its lock, and the directory opened once.

    Every read and write of the run goes through dir_fd, so it reaches the directory that was
    locked: if that directory is deleted or moved while this process runs and another run takes
    its path, the two never mix (and check_held stops this one at its next write).
    """
    path: str
    lock_fd: int
    dir_fd: int = -1  # -1 where the system has no openat: then files are named by path

    def shown(self, name):
        """name as a message shows it: under the path given."""
        return os.path.join(self.path, name)

    def at(self, name):
        """(name, dir_fd) as os.open and atomic_write take them."""
        return (name, self.dir_fd) if self.dir_fd >= 0 else (self.shown(name), None)

    def exists(self, name):
        """Whether name exists in the held directory."""
        try:
            os.stat(self.at(name)[0], dir_fd=self.at(name)[1])
            return True
        except FileNotFoundError:
            return False

    def read(self, name):
        """The bytes of name in the held directory."""
        with open(self.at(name)[0], "rb", opener=lambda p, fl: os.open(p, fl, dir_fd=self.at(name)[1])) as f:
            return f.read()


def path_error(out, shown, e):
    """An OSError met while making --out or its lock file, as one line: a full disk stays an OSError (exit 1), the rest bad input."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(e.errno, f"could not write {shown}: {e.strerror}; free some space and run the same command again")
    return ValueError(f"--out {out} cannot be used as a run directory ({e.strerror}: {shown}); allowed: a directory "
                      f"this user can create and write, each name in its path at most 255 bytes")


def check_run_dir_contents(out):
    """Refuse an --out that holds anything but a grok.py run directory, before anything is written there."""
    # A directory with someone else's files (or `--out /`) would be trained into and overwritten;
    # run files without config.json or checkpoint.pt (the files that say whose run it is) would be
    # mixed into a new run, old snapshots beside new ones.
    if not os.path.isdir(out):
        return
    names = os.listdir(out)
    snaps = os.path.join(out, "snapshots")
    inner = os.listdir(snaps) if os.path.isdir(snaps) else []
    foreign = sorted(n for n in names if n not in RUN_DIR_NAMES and not TMP_NAME.match(n))
    foreign += sorted(f"snapshots/{n}" for n in inner if not (SNAPSHOT_NAME.match(n) or TMP_NAME.match(n)))
    if foreign:
        raise ValueError(f"--out {out} holds files that are not a grok.py run's ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); allowed: a new or empty directory, or a run directory")
    run_files = sorted(n for n in names if n in ("params.pt", "history.npz", "train_idx.npz", "snapshots"))
    if run_files and not {"config.json", "checkpoint.pt"} & set(names):
        raise ValueError(f"--out {out} holds run files ({', '.join(run_files)}) but no config.json or checkpoint.pt, "
                         f"so nothing says whose run they are; delete them or use another --out")


def lock_run_dir(out):
    """Make out, open it, and take its lock, so that one process at a time writes there: a RunDir.

    The lock is the kernel's (flock): it goes away with the process that holds it, however that
    process ends, so a writer that was killed leaves no lock behind (its temporary files, which
    no other writer can own, are removed here).
    """
    try:
        check_run_dir_contents(out)
        os.makedirs(out, exist_ok=True)
        rd = RunDir(out, -1, os.open(out, os.O_RDONLY | os.O_DIRECTORY) if HAVE_DIR_FD else -1)
    except OSError as e:
        raise path_error(out, out, e) from None
    try:
        name, at = rd.at(".lock")
        rd.lock_fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644, dir_fd=at)
    except OSError as e:
        close_run_dir(rd)
        raise path_error(out, rd.shown(".lock"), e) from None
    fd = rd.lock_fd
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            close_run_dir(rd)
            raise ValueError(f"{out} is being written by {holder}; wait for it to end, or use another --out") from None
    before = os.pread(fd, 200, 0).decode(errors="replace").strip()
    if before:  # the previous writer ended without taking its name out: it was killed, or still is resumable
        print(f"note: the last writer of {out} ({before}) ended without finishing; resuming", flush=True)
    for sub in ("", "snapshots"):
        folder = rd.shown(sub) if sub else out
        for n in (os.listdir(folder) if os.path.isdir(folder) else []):
            if TMP_NAME.match(n):
                name, at = rd.at(os.path.join(sub, n) if sub else n)
                os.remove(name, dir_fd=at)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
    return rd


def close_run_dir(rd):
    """Close a RunDir's descriptors."""
    for fd in (rd.lock_fd, rd.dir_fd):
        if fd >= 0:
            os.close(fd)


def unlock_run_dir(rd):
    """Release the lock of lock_run_dir, marking that this writer ended cleanly."""
    os.ftruncate(rd.lock_fd, 0)
    close_run_dir(rd)


def check_held(rd):
    """Raise (one line) if rd's path no longer names the directory this process locked: deleted, moved or replaced."""
    if rd.dir_fd < 0:
        return
    held = os.fstat(rd.dir_fd)
    try:
        now = os.stat(rd.path)
        same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
    except OSError:
        same = False
    if not same:
        raise ValueError(f"{rd.path} was deleted or replaced while this process was writing it; this process stops "
                         f"and writes nothing more (whatever is at {rd.path} now is left alone)")


def save_in(rd, name, obj, kind):
    """Save obj as name inside the held run directory rd, atomically (kind: "json", "torch" or "npz")."""
    check_held(rd)
    path, at = rd.at(name)
    dict(json=save_json, torch=save_torch, npz=save_npz)[kind](obj, path, at, rd.shown(name))


def load_params_file(data, path, shapes, what_to_do):
    """Stacked parameters (name -> [R, ...]) from the bytes of a params.pt, checked against the model's shapes."""
    params = load_checked(path, lambda p: torch.load(io.BytesIO(data), map_location="cpu"), what_to_do)
    if not isinstance(params, dict) or not all(torch.is_tensor(params.get(n)) for n in shapes):
        raise ValueError(f"{path} holds no grok.py parameters; {what_to_do}")
    for name, shape in shapes.items():
        if tuple(params[name].shape[1:]) != shape:
            raise ValueError(f"{path} holds parameters of another shape ({name} is {tuple(params[name].shape[1:])} "
                             f"per run, this model needs {shape}); {what_to_do}")
    return params


def open_run_dir(rd, meta):
    """Check that the held directory holds this config (or nothing yet) and write config.json; True if it is already finished."""
    out = rd.path
    fix = f"delete {out} to start again, or use another --out"
    if rd.exists("config.json"):
        path = rd.shown("config.json")
        old = run_settings(check_meta(load_checked(path, lambda p: json.loads(rd.read("config.json")), fix), path, fix))
    elif rd.exists("checkpoint.pt") or rd.exists("params.pt"):
        # No config.json, but files of a run: only a checkpoint that records these very settings may go on.
        old = (load_checkpoint_bytes(rd.read("checkpoint.pt"), rd.shown("checkpoint.pt"), fix).get("settings", {})
               if rd.exists("checkpoint.pt") else {})
        if old != run_settings(meta):
            raise ValueError(f"{out} holds run files of unknown or other settings and no config.json; {fix}")
        print(f"note: {rd.shown('config.json')} was missing; written again from the checkpoint's matching settings",
              flush=True)
    else:
        old = run_settings(meta)
    new = run_settings(meta)
    differ = sorted(k for k in new if old.get(k) != new[k])
    if differ:
        raise ValueError(f"{out} holds a run with other settings ({', '.join(differ)} differ); "
                         f"use another --out or the same settings")
    if not rd.exists("config.json"):
        save_in(rd, "config.json", meta, "json")
    if not rd.exists("params.pt"):
        return False
    # Finished: but only if params.pt is whole. A damaged one is named, and the run can finish again
    # from its final checkpoint.
    shapes = {n: tuple(meta["dims"][a] for a in axes) for n, axes in PARAM_SHAPES.items()}
    again = (f"delete it and run the same command again (the run finishes again from its checkpoint)"
             if rd.exists("checkpoint.pt") else fix)
    params = load_params_file(rd.read("params.pt"), rd.shown("params.pt"), shapes, again)
    if params["W_E"].shape[0] != len(meta["runs"]["seed"]):
        raise ValueError(f"{rd.shown('params.pt')} holds {params['W_E'].shape[0]} runs, config.json "
                         f"{len(meta['runs']['seed'])}; {again}")
    return True


def load_checkpoint_bytes(data, path, what_to_do):
    """A checkpoint written by save_checkpoint, from its bytes, checked (one-line error naming path if it is damaged)."""
    ck = load_checked(path, lambda p: torch.load(io.BytesIO(data), map_location="cpu"), what_to_do)
    if not isinstance(ck, dict) or not {"params", "state", "hist", "epoch"} <= set(ck):
        raise ValueError(f"{path} is not a grok.py checkpoint; {what_to_do}")
    return ck


def load_checkpoint(path, what_to_do):
    """A checkpoint file written by save_checkpoint, checked (one-line error if it is damaged)."""
    data = load_checked(path, lambda p: open(p, "rb").read(), what_to_do)
    return load_checkpoint_bytes(data, path, what_to_do)


def load_init(run_dir, source, cfg, seeds, shapes):
    """Final parameters of a finished run (source: its params.pt's bytes) for each of cfg's runs; checks they fit.

    A source with one run starts every run; a source with several runs (seeds) starts each run
    from the source run of the same seed, so an ungrokking sweep keeps each network's own seed.
    The source must be a network for the same task, modulus and input format.
    """
    path = os.path.join(run_dir, "params.pt")
    fix = f"train the source again (rerun its grok.py command after deleting {path})"
    cfg_path = os.path.join(run_dir, "config.json")
    src_meta = check_meta(load_json(cfg_path, fix), cfg_path, fix)
    theirs = {k: src_meta["config"].get(k) for k in ("task", "p", "fmt")}
    ours = dict(task=cfg.task, p=cfg.p, fmt=cfg.fmt)
    if theirs != ours:
        raise ValueError(f"--init-from {run_dir} is a network for {theirs['task']}, p={theirs['p']}, {theirs['fmt']} "
                         f"format; this run is {cfg.task}, p={cfg.p}, {cfg.fmt} format: allowed, a source of the same "
                         f"task, modulus and format")
    src = load_params_file(source, path, {}, fix)
    if not torch.is_tensor(src.get("W_E")):
        raise ValueError(f"{path} holds no grok.py parameters; {fix}")
    n_src = src["W_E"].shape[0]
    if n_src == 1:
        pick = [0] * len(seeds)
    else:
        src_seeds = src_meta["runs"]["seed"]
        missing = sorted(set(seeds) - set(src_seeds))
        if missing or len(set(src_seeds)) != n_src:
            raise ValueError(f"--init-from {run_dir} holds {n_src} runs with seeds {sorted(src_seeds)}; each run "
                             f"starts from the source run of its seed, so --seeds must be among them (one run "
                             f"per seed there), got {sorted(set(seeds))}")
        pick = [src_seeds.index(s) for s in seeds]
    out = {}
    for name, shape in shapes.items():
        t = src.get(name)
        if t is None or tuple(t.shape[1:]) != shape:
            got = None if t is None else tuple(t.shape[1:])
            raise ValueError(f"--init-from {run_dir} is a run of another shape: {name} is {got} per run, "
                             f"this run needs {shape}")
        if not torch.isfinite(t[pick]).all():
            raise ValueError(f"--init-from {run_dir}: {name} has non-finite values; a diverged run cannot start others")
        out[name] = t[pick].clone()  # [R, *shape]
    return out


def initial_params(cfg, runs, dims, source):
    """Every run's starting parameters, stacked on the run axis: fresh (by seed) or from --init-from's bytes."""
    if cfg.init_from:
        shapes = {n: tuple(dims[a] for a in axes) for n, axes in PARAM_SHAPES.items()}
        return load_init(cfg.init_from, source, cfg, runs["seed"], shapes)
    per_run = [init_params(dims, s) for s in runs["seed"]]
    return {n: torch.stack([p[n] for p in per_run]) for n in PARAM_SHAPES}


def start_or_resume(rd, settings, init, device):
    """Parameters, AdamW moments, history, stopped runs, first epoch and seconds trained so far.

    Fresh from init (the stacked starting parameters), or from the held directory's checkpoint,
    which is used only if it records the same settings (config.json alone could have been replaced).
    """
    out = rd.path
    params = {n: t.clone() for n, t in init.items()}
    state = {k: {n: torch.zeros_like(t) for n, t in params.items()} for k in ("m", "v")}  # AdamW's m and v
    R = params["W_E"].shape[0]
    hist, stops, start, wall0 = new_history(), dict(epoch=[-1] * R, reason=[""] * R, first_pass=[-1] * R), 0, 0.0
    ckpt_path = rd.shown("checkpoint.pt")
    if rd.exists("checkpoint.pt"):
        ck = load_checkpoint_bytes(rd.read("checkpoint.pt"), ckpt_path,
                                   f"delete it to train {out} again from the start, or use another --out")
        if ck.get("settings", settings) != settings:
            raise ValueError(f"{ckpt_path} was written with other settings than {out}/config.json says; "
                             f"delete the directory or use another --out")
        params, state, hist, start, wall0 = ck["params"], ck["state"], ck["hist"], ck["epoch"], ck["wall_s"]
        stops = ck.get("stops", stops)
        stops.setdefault("first_pass", [-1] * R)  # a checkpoint from before the convergence test was recorded
        for k in CONVERGE_KEYS:
            hist.setdefault(k, [torch.full((R,), float("nan"), dtype=torch.float64) for _ in hist["epoch"]])
        print(f"resuming {out} from epoch {start}", flush=True)
    params = {n: t.to(device) for n, t in params.items()}
    state = {k: {n: t.to(device) for n, t in s.items()} for k, s in state.items()}
    return params, state, hist, stops, start, wall0


def save_checkpoint(rd, params, state, hist, stops, epoch, wall_s, settings):
    """Everything needed to resume bit-identically (with the settings it belongs to), and the history so far."""
    save_in(rd, "checkpoint.pt", dict(params={n: t.detach() for n, t in params.items()}, state=state, hist=hist,
                                      stops=stops, epoch=epoch, wall_s=wall_s, settings=settings), "torch")
    save_in(rd, "history.npz", history_arrays(hist, stops), "npz")


def save_snapshot(rd, params, epoch):
    """The parameters at one epoch, for analysis.py's curves over training."""
    if not rd.exists("snapshots"):
        name, at = rd.at("snapshots")
        try:
            os.mkdir(name, dir_fd=at)
        except OSError as e:
            raise OSError(e.errno, f"could not write {rd.shown('snapshots')}: {e.strerror}") from None
    save_in(rd, os.path.join("snapshots", f"epoch_{epoch:08d}.pt"),
            {n: t.detach().cpu() for n, t in params.items()}, "torch")


def stops_of_finished(rd):
    """The stopped runs recorded in a finished directory's history.npz."""
    path = rd.shown("history.npz")
    h = load_checked(path, lambda p: dict(np.load(io.BytesIO(rd.read("history.npz")))),
                     f"delete {rd.path} and train it again")
    return dict(epoch=np.asarray(h.get("stop_epoch", [])).tolist(), reason=np.asarray(h.get("stop_reason", [])).tolist())


def freeze_diverged(rd, params, state, hist, stops, first_bad, init):
    """Freeze each still-training run whose loss or parameters went non-finite; returns the runs frozen now.

    A frozen run keeps its last state known to be finite: the last checkpoint's, if its loss was
    still finite there, else its starting state. Its records after that epoch are set to NaN (they
    belong to the abandoned trajectory), and stops records the epoch and the reason.
    """
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(t).flatten(1).all(1) for t in params.values()]).all(0)  # [R]
    first_bad, finite = first_bad.tolist(), finite.tolist()  # the one read of the running flag
    on = still_training(stops)
    bad = [r for r in range(len(finite)) if on[r] and (first_bad[r] >= 0 or not finite[r])]
    if not bad:
        return []
    ck = (load_checkpoint_bytes(rd.read("checkpoint.pt"), rd.shown("checkpoint.pt"), "delete it and run again")
          if rd.exists("checkpoint.pt") else None)
    for r in bad:
        use_ck = ck is not None and (first_bad[r] < 0 or ck["epoch"] < first_bad[r])
        back = ck["epoch"] if use_ck else 0
        with torch.no_grad():
            for n, t in params.items():
                t[r] = (ck["params"][n][r] if use_ck else init[n][r]).to(t.device)
                for k in ("m", "v"):
                    state[k][n][r] = ck["state"][k][n][r].to(t.device) if use_ck else 0.0
        stops["epoch"][r] = back
        stops["reason"][r] = (f"diverged: non-finite loss at epoch {first_bad[r]}" if first_bad[r] >= 0
                              else "diverged: non-finite parameters")
        for i, e in enumerate(hist["epoch"]):
            if e > back:
                for k in hist:
                    if k not in ("epoch", "wall_s"):
                        hist[k][i][r] = float("nan")
        print(f"run {r} {stops['reason'][r]}; frozen at its state of epoch {back}", flush=True)
    return bad


# -----------------------------------------------------------------------------
# Benchmark: --bench times the epochs a sweep trains, this file's way or the straightforward way
# (forward + torch.optim.AdamW, or the runs one by one), for the README's speed tables.


def sync(device):
    """Wait for queued GPU work, so that timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device, n=4096, k=512, m=512, repeats=20):
    """This machine's float32 matmul rate in GFLOP/s, on a shape like the MLP's ([n, k] @ [k, m])."""
    a, b = torch.randn(n, k, device=device), torch.randn(k, m, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n * k * m * repeats / (time.perf_counter() - t0) / 1e9


def reference_steps(params, cfg, train_tokens, train_labels, train_weight, test):
    """The straightforward way, for --bench-impl reference: forward at every position, torch.optim.AdamW.

    Returns two functions: one training step, and one forward over every test pair (loss and accuracy).
    """
    lrs, wds = set(parse_list(cfg.lr, float, "lr")), set(parse_list(cfg.wd, float, "wd"))
    if len(lrs) > 1 or len(wds) > 1:
        raise ValueError("--bench-impl reference takes one --lr and one --wd (torch.optim.AdamW has one per tensor)")
    opt = torch.optim.AdamW(list(params.values()), lr=lrs.pop(), weight_decay=wds.pop(),
                            betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    test_weight = test["mask"] / test["mask"].sum(-1, keepdim=True)

    def train_step():
        loss = cross_entropy(forward(params, train_tokens)[:, :, -1], train_labels, train_weight).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def eval_step():
        logits = forward(params, test["tokens"])[:, :, -1]
        return cross_entropy(logits, test["labels"], test_weight), (logits.argmax(-1) == test["labels"]).sum(-1)
    return train_step, eval_step


def fast_steps(params, cfg, runs, tokens, train_idx, train_labels, test, device):
    """This file's way, for --bench-impl fast: train_step on a batch of every run, then write_back and evaluate."""
    state = {k: {n: torch.zeros_like(t) for n, t in params.items()} for k in ("m", "v")}
    batch = make_batch(params, state, runs, tokens, train_idx, train_labels, group_cost(cfg, device), device,
                       list(range(len(runs["seed"]))))
    step = [0]

    def one_step():
        step[0] += 1
        train_step(batch, step[0], cfg.beta1, cfg.beta2, cfg.eps)

    def one_eval():  # as at a record: the working copy goes back into params, which are evaluated
        write_back(batch, params, state)
        return evaluate(params, test)
    return one_step, one_eval


def serial_steps(params, cfg, runs, tokens, train_idx, train_labels, test_idx, labels, device):
    """The runs one by one, for --bench-impl serial: fast_steps for each run alone, in turn."""
    parts = []
    for r in range(len(runs["seed"])):
        one = {k: v[r:r + 1] for k, v in runs.items()}
        test = eval_set(tokens, test_idx[r:r + 1], labels[torch.as_tensor(np.maximum(test_idx[r:r + 1], 0))], device)
        parts.append(fast_steps({n: t[r:r + 1].clone() for n, t in params.items()}, cfg, one, tokens,
                                train_idx[r:r + 1], train_labels[r:r + 1], test, device))
    return lambda: [s() for s, _ in parts], lambda: [e() for _, e in parts]


def bench(cfg):
    """Time the workload of one epoch (an AdamW step, then a forward over every test pair); prints one line."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    tokens, labels, runs, dims = sweep_data(cfg)
    R = len(runs["seed"])
    if R == 0:
        raise ValueError(f"--bench --shard {cfg.shard}: this shard holds no runs of the sweep; bench a shard that has some")
    train_idx, test_idx, train_labels = run_splits(runs, labels, dims["n_out"], cfg.random_labels)
    test = eval_set(tokens, test_idx, labels[torch.as_tensor(np.maximum(test_idx, 0))], device)
    params = {n: t.to(device) for n, t in initial_params(cfg, runs, dims, read_source(cfg.init_from)).items()}  # --init-from: trained networks
    if cfg.bench_impl == "reference":
        idx = torch.as_tensor(np.maximum(train_idx, 0))
        weight = torch.as_tensor((train_idx >= 0) / (train_idx >= 0).sum(1, keepdims=True), device=device)
        params = {n: t.requires_grad_() for n, t in params.items()}
        steps = reference_steps(params, cfg, tokens[idx].to(device), torch.as_tensor(train_labels, device=device),
                                weight, test)
    elif cfg.bench_impl == "serial":
        steps = serial_steps(params, cfg, runs, tokens, train_idx, train_labels, test_idx, labels, device)
    else:
        steps = fast_steps(params, cfg, runs, tokens, train_idx, train_labels, test, device)
    gflop = []  # the matmul GFLOP of a training step and of an evaluation (counted on the first warm-up epoch)
    for part in steps:
        with FlopCounterMode(display=False) as flops:
            part()
        gflop.append(flops.get_total_flops() / 1e9)
    spent = [0.0, 0.0]  # seconds in training steps and in evaluations
    for e in range(cfg.bench_epochs + 2):  # 3 warm-up epochs in all: allocator, thread pool and caches settle
        for i, part in enumerate(steps):
            t0 = time.perf_counter()
            part()
            sync(device)
            spent[i] += (time.perf_counter() - t0) if e >= 2 else 0.0
    train_s, eval_s = (s / cfg.bench_epochs for s in spent)
    # The floor: the matmul FLOPs at the machine's own matmul rate, with nothing else costing time.
    rate = matmul_rate(device)
    print(f"bench={cfg.bench_impl} runs={R} device={device} ms_per_epoch={1000 * (train_s + eval_s):.2f} "
          f"(train_step={1000 * train_s:.2f} eval={1000 * eval_s:.2f}) "
          f"train_run_epochs_per_s={R / train_s:.1f} train_example_epochs_per_s={sum(runs['n_train']) / train_s:.0f} "
          f"matmul_gflop=(train_step={gflop[0]:.2f} eval={gflop[1]:.2f}) machine_matmul_gflop_per_s={rate:.0f} "
          f"floor_ms=(train_step={1000 * gflop[0] / rate:.1f} eval={1000 * gflop[1] / rate:.1f})", flush=True)
    return None


# -----------------------------------------------------------------------------
# Command line: one flag per Config field, its help the field's comment


def field_help(cls):
    """Each dataclass field's trailing comment in the source (its reason and source), by name."""
    helps = {}
    for line in inspect.getsource(cls).splitlines():
        head, _, comment = line.partition("  # ")
        if ":" in head and "=" in head and comment:
            helps[head.split(":")[0].strip()] = comment.strip()
    return helps


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a bad flag raises ValueError (main prints it as one line) instead of usage text."""

    def error(self, message):
        raise ValueError(f"{message} (python {self.prog} --help lists the flags)")


def add_field_flags(parser, cls, skip=()):
    """One flag per field of a Config dataclass: --name-with-hyphens (also --name_with_underscores)."""
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flags = ["--" + f.name.replace("_", "-")] + (["--" + f.name] if "_" in f.name else [])
        h = f"{helps.get(f.name, '')} (default: {f.default!r})".replace("%", "%%")  # argparse formats help with %
        kind = {"int": int, "float": float, "str": str, "bool": bool}.get(f.type, f.type)
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", help=h)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=f.default, metavar=f.name.upper(), help=h)
    return parser


def config_from_args(argv):
    """Build a Config from command-line flags; a bad flag or value raises a one-line ValueError."""
    parser = OneLineParser(prog="grok.py", description=__doc__.split("\n")[1].strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    return Config(**vars(add_field_flags(parser, Config).parse_args(argv)))


def main(argv=None):
    """Entry point. Exit codes: 0 done, 1 a file could not be written, 2 bad input (or a directory
    that cannot be used as asked), 3 some runs diverged (frozen; the others finished), 130 interrupted (Ctrl-C;
    the same command resumes). Each error is one line."""
    keep_freed_memory()
    cfg = None
    try:
        cfg = config_from_args(argv)
        bench(cfg) if cfg.bench else train(cfg)
    except KeyboardInterrupt:  # Ctrl-C: the last checkpoint is whole (every write is atomic)
        where = f" in {cfg.out}" if cfg is not None else ""
        print(f"error: interrupted; run the same command again to resume from the last checkpoint{where}",
              file=sys.stderr)
        sys.exit(130)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunsDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except OSError as e:
        print(f"error: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""
grok.py: a hand-written 1-layer transformer and a batched full-batch AdamW trainer
for the grokking tasks of Varma et al. (2023), "Explaining grokking through circuit
efficiency", with the architecture of Nanda et al. (2023).

One process trains R runs at once (each with its own seed, training subset, weight
decay and learning rate): every parameter is one stacked tensor with a leading run
axis, and every matmul is a batched matmul over that axis.

Launch commands:
    python grok.py                                   # the standard run: a+b mod 113, 30% of pairs, wd=1; groks
    python grok.py --task sub --train 0.5 --epochs 30000 --out runs/sub
    python grok.py --seeds 0-9 --train 1500,1600,1700 --wd 0.5,1.0 --out runs/sweep   # 60 runs, one process
    python grok.py --train 1.0 --stop-acc 1.0 --out runs/full                       # train on every pair
    python grok.py --init-from runs/full --train 800 --out runs/ungrok             # ungrokking (Sec. 5.2)
    python grok.py --random-labels --train 2000 --out runs/mem                     # C_mem-only (Sec. 5.1)
    python grok.py --bench --fmt nanda --train 3830                                # ms per epoch
Running the same command again resumes from the last checkpoint (or says it is done).
"""
import argparse
import ctypes
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
    epochs: int = 12000  # full-batch steps; the standard run passes 99% test accuracy near epoch 7800
    beta1: float = 0.9  # App. A: beta_1 = 0.9
    beta2: float = 0.98  # App. A: beta_2 = 0.98
    eps: float = 1e-8  # torch's AdamW default, which Nanda et al. use (the paper does not say)
    d_model: int = 128  # App. A: residual stream width
    n_heads: int = 4  # App. A: d_model / d_head = 4 heads
    d_head: int = 32  # App. A: size of query, key and value vectors
    d_mlp: int = 512  # App. A: neurons in the MLP's hidden layer
    init_from: str = ""  # run directory whose final parameters start this run (ungrokking, Sec. 5.2)
    log_every: int = 100  # record metrics every k epochs (plus log_points log-spaced epochs)
    log_points: int = 200  # log-spaced epochs recorded as well, for the log-axis plots of 1e3..1e7 epochs
    print_every: int = 1000  # progress line every k epochs
    ckpt_every: int = 1000  # checkpoint every k epochs: a kill loses at most this many
    snapshots: int = 0  # parameter snapshots at this many log-spaced epochs (0 = none); analysis.py reads them
    stop_acc: float = 0.0  # stop once every run's test accuracy reaches this (0 = run all epochs)
    out: str = "runs/default"  # run directory
    device: str = "auto"  # "auto" (CUDA when available, else CPU), "cpu", "cuda"
    threads: int = 0  # CPU threads for torch (0 = torch's default)
    pad_ratio: float = 1.25  # runs whose D lie within this factor share one padded batch; the rest train apart
    bench: bool = False  # time bench_epochs epochs (train step + test forward) instead of training
    bench_epochs: int = 50  # epochs timed by --bench, after 3 warm-up epochs


# Settings that may change when a run resumes; every other key must match the saved run.
# ("out": a moved directory resumes; "pad_ratio" only regroups the same arithmetic.)
RESUME_FREE = ("device", "threads", "print_every", "bench", "bench_epochs", "out", "pad_ratio")

# -----------------------------------------------------------------------------
# Tasks and data
# Power et al. (2021), as in the paper's Fig. 8. Modular tasks: x, y in 0..p-1 (y != 0
# where the task divides). S5 tasks: x, y are the 120 permutations of 5 elements.

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
    """All (x, y, label) triples of a task as int64 arrays, and the number of elements n."""
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


def parse_list(text, kind, name):
    """Parse a comma list ("1,2", and for ints ranges like "0-9") into a list of kind."""
    out = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if kind is int and "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else part[1:].split("-", 1)
                out += list(range(int(lo), int(hi) + 1))
            else:
                out.append(kind(part))
    except ValueError:
        raise ValueError(f"--{name} {text!r} is not a comma list of {kind.__name__}s") from None
    if not out:
        raise ValueError(f"--{name} is empty")
    return out


def train_size(spec, n_all):
    """Training-set size for one entry of --train: a fraction (with a '.') or a count."""
    if "." in spec or "e" in spec.lower():
        frac = float(spec)
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"training fraction {spec} is outside (0, 1]")
        return max(1, int(frac * n_all))
    d = int(spec)
    if not 0 < d <= n_all:
        raise ValueError(f"training size D={d} is not in 1..{n_all} (the number of pairs of this task)")
    return d


def split_indices(n_all, d, seed):
    """Training and test indices of one run: the first d of a seeded permutation, and the rest."""
    # A run's subset depends on its own seed alone, so one seed gives nested subsets over D.
    perm = np.random.default_rng([seed, 1]).permutation(n_all)
    train, test = np.sort(perm[:d]), np.sort(perm[d:])
    # A run trained on every pair has no test set; its "test" metrics are then over all pairs.
    return train, (test if len(test) else np.arange(n_all))


def pad_stack(rows, fill):
    """Stack 1-D arrays of different lengths into [R, max_len], padded with fill."""
    out = np.full((len(rows), max(len(r) for r in rows)), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


# -----------------------------------------------------------------------------
# Model: 1-layer decoder-only transformer, no LayerNorm (App. A; Nanda et al.)

PARAM_SHAPES = {  # TransformerLens names; a leading run axis R is added to each
    "W_E": ("d_vocab", "d_model"), "W_pos": ("n_ctx", "d_model"),
    "W_Q": ("n_heads", "d_model", "d_head"), "W_K": ("n_heads", "d_model", "d_head"),
    "W_V": ("n_heads", "d_model", "d_head"), "W_O": ("n_heads", "d_head", "d_model"),
    "W_in": ("d_model", "d_mlp"), "b_in": ("d_mlp",), "W_out": ("d_mlp", "d_model"),
    "b_out": ("d_model",), "W_U": ("d_model", "n_out"),
}


def init_params(dims, seed):
    """One run's parameters: weights ~ N(0, 1/d_model), biases zero (Nanda et al.'s scheme)."""
    # Nanda et al. draw every weight as randn / sqrt(d_model) (their W_U uses sqrt(d_vocab),
    # nearly the same at p=113); we use 1/sqrt(d_model) throughout, as the issue asks.
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, axes in PARAM_SHAPES.items():
        shape = tuple(dims[a] for a in axes)
        if name.startswith("b_"):
            out[name] = torch.zeros(shape)
        else:
            out[name] = torch.randn(shape, generator=g) / math.sqrt(dims["d_model"])
    return out


def attention_pattern(params, tokens):
    """Per-(position, token) residual table [R, n_ctx*d_vocab, d_model], its row for each input
    [R, B, n_ctx] (offset by run), and the last position's attention pattern [R, B, n_ctx, n_heads]."""
    W_E, W_pos = params["W_E"], params["W_pos"]
    R, B, n_ctx = tokens.shape
    d_vocab, d_model = W_E.shape[1:]
    n_heads, d_head = params["W_Q"].shape[1], params["W_Q"].shape[3]
    # The residual stream at position j entering the layer is W_E[token_j] + W_pos[j], a function
    # of that one token: tabulate it for every (position, token): [R, n_ctx*d_vocab, d_model]
    resid = (W_E[:, None] + W_pos[:, :, None]).reshape(R, n_ctx * d_vocab, d_model)
    q = torch.einsum("rvd,rhde->rvhe", resid[:, -d_vocab:], params["W_Q"])  # [R, d_vocab, n_heads, d_head]
    k = torch.einsum("rvd,rhde->rvhe", resid, params["W_K"])  # [R, n_ctx*d_vocab, n_heads, d_head]
    # Score of every possible last-position query against every (position, token) key:
    scores = torch.einsum("rqhe,rkhe->rqkh", q, k) / math.sqrt(d_head)  # [R, d_vocab, n_ctx*d_vocab, n_heads]
    run = torch.arange(R, device=tokens.device).view(R, 1, 1)
    rows = tokens + torch.arange(n_ctx, device=tokens.device) * d_vocab  # [R, B, n_ctx]
    q_rows = ((run * d_vocab + tokens[..., -1:]) * (n_ctx * d_vocab) + rows).reshape(-1)
    attn = scores.reshape(-1, n_heads).index_select(0, q_rows).view(R, B, n_ctx, n_heads)
    # The causal mask lets the last position see every position, so no mask is needed here.
    return resid, rows + run * (n_ctx * d_vocab), attn.softmax(dim=2)


def forward_last(params, tokens):
    """Logits at the final position for every input of every run: tokens [R, B, n_ctx] -> [R, B, n_out].

    Only the final position's logits are ever read. With one layer, keys and values at every
    position come from small per-(position, token) tables, and the query, attention output,
    MLP and unembedding are needed only at the last position: no later layer could read the
    other positions. This is exact, not an approximation (tests/test_grok.py checks it
    against an all-positions forward).
    """
    R, B, n_ctx = tokens.shape
    n_heads, d_head = params["W_Q"].shape[1], params["W_Q"].shape[3]
    resid_tab, rows, attn = attention_pattern(params, tokens)
    d_model = resid_tab.shape[-1]
    v_tab = torch.einsum("rvd,rhde->rvhe", resid_tab, params["W_V"]).reshape(-1, n_heads * d_head)
    z = None  # attention's mixed values at the last position: [R, B, n_heads, d_head]
    for j in range(n_ctx):  # one gather per position keeps the largest intermediate at [R, B, n_heads*d_head]
        v_j = v_tab.index_select(0, rows[..., j].reshape(-1)).view(R, B, n_heads, d_head)
        term = attn[:, :, j, :, None] * v_j
        z = term if z is None else z + term
    # Residual at the last position, plus the attention output through W_O (one batched matmul).
    resid = resid_tab.reshape(-1, d_model).index_select(0, rows[..., -1].reshape(-1)).view(R, B, d_model)
    resid = torch.baddbmm(resid, z.reshape(R, B, -1), params["W_O"].reshape(R, -1, d_model))
    # ReLU MLP with biases; the in-place ops reuse the fresh [R, B, d_mlp] buffer.
    hidden = torch.bmm(resid, params["W_in"]).add_(params["b_in"][:, None]).relu_()  # [R, B, d_mlp]
    resid = torch.baddbmm(resid + params["b_out"][:, None], hidden, params["W_out"])  # [R, B, d_model]
    return resid @ params["W_U"]  # [R, B, n_out]


def forward_last_folded(params, tokens, return_hidden=False):
    """forward_last regrouped for inference (no gradients): the same logits, less work; optionally
    also the MLP activations [R, B, d_mlp] (analysis.py reads the neurons).

    With one layer and no LayerNorm, the residual stream at the last position after attention
    is a weighted sum of table rows: attn[j, h] times the value of token_j seen through head
    h's W_V and W_O, over positions j and heads h, plus the last token's own embedding.
    embedding_bag forms each input's weighted sum in one pass, without the per-position
    gathers. The direct path to the logits (W_U applied to that sum) is folded into the
    rows too, and W_out into W_U, so the only wide matmuls left are W_in and W_out @ W_U.
    Training uses forward_last instead: embedding_bag's backward pass sums in an order that
    depends on the number of runs, so batched runs would drift from the same runs alone.
    """
    R, B, n_ctx = tokens.shape
    n_heads = params["W_Q"].shape[1]
    resid_tab, rows, attn = attention_pattern(params, tokens)
    n_pos_tok = resid_tab.shape[1]
    # Each (position, token)'s value through each head's W_V and W_O: [R, n_ctx*d_vocab*n_heads, d_model]
    vo = torch.einsum("rvd,rhde,rhef->rvhf", resid_tab, params["W_V"], params["W_O"]).flatten(1, 2)
    d_vocab = n_pos_tok // n_ctx
    table = torch.cat([vo, resid_tab[:, -d_vocab:]], dim=1)  # plus the last token's own residual
    n_rows = table.shape[1]
    # Bags: the n_ctx*n_heads attention-weighted rows and the last token's row (weight 1).
    local = rows % n_pos_tok  # (position, token) rows without the run offset: [R, B, n_ctx]
    heads = torch.arange(n_heads, device=tokens.device)
    bag = (local[..., None] * n_heads + heads).flatten(2)  # [R, B, n_ctx*n_heads]
    last = n_ctx * d_vocab * n_heads + tokens[..., -1:]  # [R, B, 1]
    run = torch.arange(R, device=tokens.device).view(R, 1, 1) * n_rows
    bag = (torch.cat([bag, last], dim=-1) + run).reshape(R * B, -1)
    weights = torch.cat([attn.flatten(2), attn.new_ones(R, B, 1)], dim=-1).reshape(R * B, -1)
    mix = lambda t: F.embedding_bag(bag, t.reshape(R * n_rows, -1), per_sample_weights=weights,
                                    mode="sum").view(R, B, -1)
    resid = mix(table)  # residual stream at the last position after attention: [R, B, d_model]
    hidden = torch.bmm(resid, params["W_in"]).add_(params["b_in"][:, None]).relu_()  # [R, B, d_mlp]
    direct = mix(table @ params["W_U"]).add_(params["b_out"][:, None] @ params["W_U"])  # [R, B, n_out]
    logits = torch.baddbmm(direct, hidden, params["W_out"] @ params["W_U"])  # [R, B, n_out]
    return (logits, hidden) if return_hidden else logits


# -----------------------------------------------------------------------------
# Loss and metrics


def cross_entropy(logits, labels, weights):
    """Per-run weighted cross-entropy of the logits, with log-softmax in float64: [R]."""
    # In float32 the log-softmax of a confident prediction rounds to exactly 0 loss, which
    # stalls and distorts late training; float64 keeps the gradient alive (Nanda et al.).
    logp = logits.double().log_softmax(dim=-1)
    nll = -logp.gather(-1, labels[..., None]).squeeze(-1)  # [R, B]
    return (nll * weights).sum(-1)


def param_norm(params):
    """Total L2 norm of each run's parameters: [R]."""
    return torch.sqrt(sum(p.detach().double().pow(2).flatten(1).sum(1) for p in params.values()))


def evaluate(params, tokens, labels, idx, mask, chunk):
    """Mean loss and accuracy of each run over its examples idx [R, M] (mask marks real ones)."""
    R = idx.shape[0]
    loss = torch.zeros(R, dtype=torch.float64, device=idx.device)
    correct = torch.zeros(R, dtype=torch.float64, device=idx.device)
    with torch.no_grad():
        for s in range(0, idx.shape[1], chunk):
            i, m = idx[:, s:s + chunk], mask[:, s:s + chunk]
            logits = forward_last_folded(params, tokens[i])  # [R, chunk, n_out]
            loss += cross_entropy(logits, labels[i], m.double())
            correct += ((logits.argmax(-1) == labels[i]) & m).sum(-1)
    n = mask.sum(-1).double()
    return loss / n, correct / n


# -----------------------------------------------------------------------------
# AdamW, written out (Loshchilov and Hutter, 2019), with a per-run lr and weight decay


def adamw_step(params, grads, state, step, lr, wd, beta1, beta2, eps):
    """One in-place AdamW update; lr and wd are [R] tensors, step counts from 1."""
    # Decoupled weight decay: the parameter shrinks by lr*wd before the Adam step, and the
    # decay never enters the moment estimates (this is what torch.optim.AdamW does).
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    for name, p in params.items():
        g, m, v = grads[name], state["m"][name], state["v"][name]
        shape = (-1,) + (1,) * (p.dim() - 1)
        p.mul_(1 - (lr * wd).view(shape))
        m.lerp_(g, 1 - beta1)  # m = beta1 m + (1 - beta1) g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v = beta2 v + (1 - beta2) g^2
        denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
        p.sub_(m.div(denom).mul_((lr / bc1).view(shape)))  # p -= lr/bc1 * m / denom


# -----------------------------------------------------------------------------
# Files: every write goes to a temporary file first and is renamed into place


def atomic_write(path, write):
    """Call write(tmp_path), then rename tmp_path to path, so path is never half-written."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def save_json(obj, path):
    """Write obj as indented JSON, atomically."""
    atomic_write(path, lambda t: open(t, "w").write(json.dumps(obj, indent=1) + "\n"))


def save_torch(obj, path):
    """torch.save obj, atomically."""
    atomic_write(path, lambda t: torch.save(obj, t))


def save_npz(arrays, path):
    """np.savez arrays (a dict), atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    atomic_write(path, write)


# -----------------------------------------------------------------------------
# Setting up the runs


def resolve_device(name):
    """The torch device for --device (auto: CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


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
    if not 0.0 <= cfg.stop_acc <= 1.0:
        raise ValueError(f"--stop-acc must be in [0, 1], got {cfg.stop_acc}")
    if not cfg.pad_ratio >= 1.0:
        raise ValueError(f"--pad-ratio must be >= 1 (1 = only equal D share a batch), got {cfg.pad_ratio}")


def make_runs(cfg, n_all):
    """The runs of a config: the product of seeds x training sizes x weight decays x lrs."""
    seeds = parse_list(cfg.seeds, int, "seeds")
    sizes = [train_size(s.strip(), n_all) for s in cfg.train.split(",")]
    wds, lrs = parse_list(cfg.wd, float, "wd"), parse_list(cfg.lr, float, "lr")
    if any(w < 0 for w in wds) or any(l <= 0 for l in lrs):
        raise ValueError("weight decays must be >= 0 and learning rates > 0")
    runs = list(itertools.product(seeds, sizes, wds, lrs))
    return {k: [r[i] for r in runs] for i, k in enumerate(("seed", "n_train", "wd", "lr"))}


def build_data(cfg, runs, labels_all, n_out):
    """Per-run training and test indices, labels and loss weights, padded to [R, max]."""
    n_all = len(labels_all)
    splits = [split_indices(n_all, d, s) for s, d in zip(runs["seed"], runs["n_train"])]
    train_idx = pad_stack([tr for tr, _ in splits], -1)
    test_idx = pad_stack([te for _, te in splits], -1)
    train_labels = labels_all.numpy()[np.maximum(train_idx, 0)]
    if cfg.random_labels:  # Sec. 5.1: "completely random labels for the training data"
        for r, seed in enumerate(runs["seed"]):
            train_labels[r] = np.random.default_rng([seed, 2]).integers(0, n_out, train_idx.shape[1])
    return train_idx, test_idx, np.where(train_idx >= 0, train_labels, 0)


def pad_groups(n_train, ratio):
    """Runs grouped by training-set size: lists of run indices whose D lie within `ratio` of each other."""
    # Runs of different D are padded to a common length to step them as one batch; padding costs
    # as much as real examples, and a geometric grid of D (150 ... 1400) would waste over half the
    # compute. Runs are therefore stepped in groups of similar D, each padded to its own largest D.
    order = sorted(range(len(n_train)), key=lambda r: n_train[r])
    groups = [[order[0]]]
    for r in order[1:]:
        if n_train[r] > ratio * n_train[groups[-1][0]]:
            groups.append([])
        groups[-1].append(r)
    return groups


def load_init(run_dir, seeds, shapes):
    """Final parameters of a finished run for each of this config's runs; checks they fit this model.

    A source with one run starts every run; a source with several runs (seeds) starts each run
    from the source run of the same seed, so an ungrokking sweep keeps each network's own seed.
    """
    path = os.path.join(run_dir, "params.pt")
    if not os.path.exists(path):
        raise ValueError(f"--init-from {run_dir}: no params.pt there (is the run finished?)")
    src = torch.load(path, map_location="cpu")
    n_src = src["W_E"].shape[0]
    if n_src == 1:
        pick = [0] * len(seeds)
    else:
        with open(os.path.join(run_dir, "config.json")) as f:
            src_seeds = json.load(f)["runs"]["seed"]
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
        out[name] = t[pick].clone()  # [R, *shape]
    return out


def record_epochs(cfg):
    """Epochs at which metrics are recorded: every log_every, log-spaced points, the first and last."""
    E = cfg.epochs
    logs = np.round(np.logspace(0, np.log10(E), cfg.log_points)).astype(int)
    return set(range(0, E + 1, cfg.log_every)) | set(logs.tolist()) | {0, E}


def snapshot_epochs(cfg):
    """Epochs at which the parameters are saved for analysis.py (log-spaced, plus 0 and the end)."""
    if cfg.snapshots == 0:
        return set()
    logs = np.round(np.logspace(0, np.log10(cfg.epochs), cfg.snapshots)).astype(int)
    return set(logs.tolist()) | {0, cfg.epochs}


# -----------------------------------------------------------------------------
# Training loop


def train(cfg):
    """Train (or resume, or benchmark) the runs of cfg; returns the run directory."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    tokens_all, labels_all, d_vocab, n_out = make_dataset(cfg.task, cfg.p, cfg.fmt)
    runs = make_runs(cfg, len(labels_all))
    R = len(runs["seed"])
    dims = dict(d_vocab=d_vocab, n_ctx=tokens_all.shape[1], n_out=n_out, d_model=cfg.d_model,
                n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp)
    shapes = {n: tuple(dims[a] for a in axes) for n, axes in PARAM_SHAPES.items()}
    saved = dict(config=dataclasses.asdict(cfg), runs=runs, dims=dims, n_pairs=len(labels_all),
                 torch=torch.__version__, device=str(device))
    print(f"grok.py: {R} run(s) of {cfg.task} ({TASKS[cfg.task]}), p={cfg.p}, {cfg.fmt} format, "
          f"{len(labels_all)} pairs, on {device} ({torch.get_num_threads()} CPU threads)", flush=True)

    out = cfg.out
    ckpt_path, params_path = os.path.join(out, "checkpoint.pt"), os.path.join(out, "params.pt")
    if not cfg.bench:
        if os.path.exists(os.path.join(out, "config.json")):
            with open(os.path.join(out, "config.json")) as f:
                old = json.load(f)
            differ = sorted(k for k in saved["config"] if k not in RESUME_FREE
                            and old["config"].get(k) != saved["config"][k])
            if differ:
                raise ValueError(f"{out} holds a run with other settings ({', '.join(differ)} differ); "
                                 f"use another --out or the same settings")
            if os.path.exists(params_path):
                print(f"{out} is already finished (params.pt exists); nothing to do", flush=True)
                return out
        os.makedirs(out, exist_ok=True)
        save_json(saved, os.path.join(out, "config.json"))

    train_idx, test_idx, train_labels = build_data(cfg, runs, labels_all, n_out)
    if not cfg.bench:
        save_npz(dict(train_idx=train_idx, n_train=np.array(runs["n_train"]), train_labels=train_labels,
                      test_idx=test_idx), os.path.join(out, "train_idx.npz"))
    to = lambda a: torch.as_tensor(a, device=device)
    tokens_all, labels_all = tokens_all.to(device), labels_all.to(device)
    tr_mask, te_mask = to(train_idx >= 0), to(test_idx >= 0)
    tr_tokens = tokens_all[to(np.maximum(train_idx, 0))]  # [R, D_max, n_ctx]
    tr_labels = to(train_labels)
    tr_weight = tr_mask.double() / tr_mask.sum(-1, keepdim=True)  # mean over each run's own D
    te_idx = to(np.maximum(test_idx, 0))
    lr = to(np.array(runs["lr"], dtype=np.float32))
    wd = to(np.array(runs["wd"], dtype=np.float32))
    # Evaluate in equal chunks of at most 2^24 floats of activations (2^27 on a GPU), so memory
    # stays bounded for many runs and no chunk is a small remainder that recomputes the tables.
    n_test = test_idx.shape[1]
    n_chunks = -(-n_test * R * cfg.d_mlp // 2 ** (27 if device.type == "cuda" else 24))
    chunk = -(-n_test // n_chunks)

    if cfg.init_from:
        params = load_init(cfg.init_from, runs["seed"], shapes)
    else:
        per_run = [init_params(dims, s) for s in runs["seed"]]
        params = {n: torch.stack([p[n] for p in per_run]) for n in PARAM_SHAPES}
    params = {n: t.to(device).requires_grad_() for n, t in params.items()}
    state = {"m": {n: torch.zeros_like(t) for n, t in params.items()},
             "v": {n: torch.zeros_like(t) for n, t in params.items()}}
    hist = {k: [] for k in ("epoch", "wall_s", "train_loss", "train_acc", "test_loss", "test_acc", "param_norm")}
    start, wall0 = 0, 0.0  # wall0: seconds of training before this process (for a resumed run)
    if not cfg.bench and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device)
        with torch.no_grad():
            for n in params:
                params[n].copy_(ck["params"][n])
        state, hist, start, wall0 = ck["state"], ck["hist"], ck["epoch"], ck["wall_s"]
        print(f"resuming {out} from epoch {start}", flush=True)

    # Groups of runs with similar D, each padded only to its own largest D (see pad_groups). A
    # group of consecutive runs takes views of the parameters; any other group indexes them.
    groups, batches = pad_groups(runs["n_train"], cfg.pad_ratio), []
    for g in groups:
        sel = slice(g[0], g[-1] + 1) if g == list(range(g[0], g[-1] + 1)) else to(np.array(g))
        n = max(runs["n_train"][r] for r in g)
        batches.append((sel, tr_tokens[sel, :n], tr_labels[sel, :n], tr_weight[sel, :n]))
    unsort = to(np.argsort(np.concatenate(groups)))  # position of each run in the groups' concatenation

    def train_forward():
        """Training logits per group (a list of [R_g, D_g, n_out]) and each run's training loss [R]."""
        logits, losses = [], []
        for sel, tokens, labels, weight in batches:
            every = isinstance(sel, slice) and sel == slice(0, R)  # one group of all runs: no views needed
            logits.append(forward_last(params if every else {n: t[sel] for n, t in params.items()}, tokens))
            losses.append(cross_entropy(logits[-1], labels, weight))
        return logits, torch.cat(losses).index_select(0, unsort)

    def train_accuracy(logits):
        """Each run's training accuracy [R] from train_forward's logits."""
        acc = [((lg.argmax(-1) == labels) & (weight > 0)).sum(-1) / (weight > 0).sum(-1)
               for lg, (_, _, labels, weight) in zip(logits, batches)]
        return torch.cat(acc).index_select(0, unsort)

    def step(epoch, loss):
        grads = dict(zip(params, torch.autograd.grad(loss.sum(), list(params.values()))))
        with torch.no_grad():
            adamw_step(params, grads, state, epoch + 1, lr, wd, cfg.beta1, cfg.beta2, cfg.eps)

    if cfg.bench:  # exactly one AdamW step plus a forward over every test pair per epoch
        for e in range(cfg.bench_epochs + 3):
            if e == 3:
                sync(device)
                t0 = time.perf_counter()
            _, loss = train_forward()
            step(e, loss)
            evaluate(params, tokens_all, labels_all, te_idx, te_mask, chunk)
        sync(device)
        ms = 1000 * (time.perf_counter() - t0) / cfg.bench_epochs
        print(f"ms_per_epoch={ms:.2f} epochs_per_s={1000 / ms:.2f} runs={R}", flush=True)
        return None

    records, snaps = record_epochs(cfg), snapshot_epochs(cfg)
    if snaps:
        os.makedirs(os.path.join(out, "snapshots"), exist_ok=True)
    first_bad = torch.full((R,), -1, dtype=torch.long, device=device)  # epoch of a non-finite loss
    t0, e0 = time.perf_counter(), start

    def save_checkpoint(epoch):
        # A non-finite loss since the last checkpoint stops here, before the good one is replaced.
        check_finite(first_bad, runs, out)
        save_torch(dict(params={n: t.detach() for n, t in params.items()}, state=state, hist=hist,
                        epoch=epoch, wall_s=wall0 + time.perf_counter() - t0), ckpt_path)
        save_npz(history_arrays(hist), os.path.join(out, "history.npz"))

    epoch = start
    while True:
        if epoch % cfg.ckpt_every == 0 and start < epoch < cfg.epochs:  # the end is saved after the loop
            save_checkpoint(epoch)
        if epoch in snaps:
            save_torch({n: t.detach().cpu() for n, t in params.items()},
                       os.path.join(out, "snapshots", f"epoch_{epoch:08d}.pt"))
        done = epoch == cfg.epochs
        if epoch < cfg.epochs or epoch in records:
            logits, loss = train_forward()
        if epoch in records:
            with torch.no_grad():
                tr_acc = train_accuracy(logits)
            te_loss, te_acc = evaluate(params, tokens_all, labels_all, te_idx, te_mask, chunk)
            row = dict(train_loss=loss.detach(), train_acc=tr_acc, test_loss=te_loss,
                       test_acc=te_acc, param_norm=param_norm(params))
            hist["epoch"].append(epoch)
            hist["wall_s"].append(wall0 + time.perf_counter() - t0)  # training time so far, evals included
            for k, v in row.items():
                hist[k].append(v.detach().double().cpu())
            stop = cfg.stop_acc > 0 and bool((te_acc >= cfg.stop_acc).all())
            if epoch % cfg.print_every == 0 or done or stop:
                rate = (epoch - e0) / max(time.perf_counter() - t0, 1e-9)
                eta = (cfg.epochs - epoch) / rate if rate > 0 else float("nan")
                acc = hist["test_acc"][-1].numpy()
                print(f"epoch {epoch:8d}/{cfg.epochs} | {hist['wall_s'][-1]:7.1f} s | {rate:6.1f} ep/s | "
                      f"eta {eta / 60:6.1f} min | "
                      f"train_loss {hist['train_loss'][-1].median():.3e} | test_acc median "
                      f"{np.median(acc):.4f} [{acc.min():.4f}, {acc.max():.4f}]", flush=True)
            if stop and not done:
                print(f"every run reached test accuracy {cfg.stop_acc}; stopping at epoch {epoch}", flush=True)
                done = True
        if done:
            break
        with torch.no_grad():
            bad = ~torch.isfinite(loss)
            first_bad = torch.where(bad & (first_bad < 0), epoch, first_bad)
        step(epoch, loss)
        epoch += 1

    save_checkpoint(epoch)
    save_torch({n: t.detach().cpu() for n, t in params.items()}, params_path)  # written last: "finished"
    print(f"done: {out} (epoch {epoch}, {time.perf_counter() - t0:.1f} s)", flush=True)
    return out


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


def sync(device):
    """Wait for queued GPU work, so that timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_finite(first_bad, runs, out):
    """Stop with a clear error if any run's loss went non-finite; the last checkpoint is kept."""
    bad = (first_bad >= 0).nonzero().flatten().tolist()
    if bad:
        r = bad[0]
        raise FloatingPointError(
            f"non-finite loss at epoch {int(first_bad[r])} in run {r} (seed={runs['seed'][r]}, "
            f"D={runs['n_train'][r]}, wd={runs['wd'][r]}, lr={runs['lr'][r]}); "
            f"stopped, last good checkpoint kept in {out}")


def history_arrays(hist):
    """The recorded metrics as arrays: epoch and wall_s [T], and each metric [R, T]."""
    out = {"epoch": np.array(hist["epoch"], dtype=np.int64), "wall_s": np.array(hist["wall_s"])}
    for k, v in hist.items():
        if k not in out:
            out[k] = torch.stack(v, dim=1).numpy() if v else np.zeros((0, 0))
    return out


# -----------------------------------------------------------------------------
# Command line


def config_from_args(argv):
    """Build a Config from command-line flags, one flag per dataclass field."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            ap.add_argument(flag, action="store_true", help=f"(default: {f.default})")
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            ap.add_argument(flag, type=kind, default=f.default, help=f"(default: {f.default})")
    return Config(**vars(ap.parse_args(argv)))


def main(argv=None):
    """Entry point: one-line errors for bad input, a non-zero exit code."""
    keep_freed_memory()
    try:
        train(config_from_args(argv))
    except (ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

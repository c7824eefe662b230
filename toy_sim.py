"""
The two-circuit toy model of grokking from "Explaining grokking through circuit
efficiency" (Varma et al. 2023): Sec. 3, App. C (Table 1, Fig. 2) and Theorem D.4.

Two hard-coded lookup-table circuits on q labels, C_gen (right on train and test)
and C_mem (right on train, confidently wrong on test), are scaled by learned
weights w_G = w_G1*w_G2 and w_M = w_M1*w_M2. Plain gradient descent on the four
subweights, with a weight-decay term that charges each circuit for its parameter
norm, reproduces grokking when C_gen is more efficient but learned more slowly.
This file stands alone (numpy + matplotlib only) so it can be read and copied.

Launch commands:
    python toy_sim.py                      # Fig. 2 (a)(b)(c) -> figures/toy_fig2.png
    python toy_sim.py --csv                # ... and the curves as numbers (.csv)
    python toy_sim.py --preset b           # one preset: a, b, c, ungrok, semi
    python toy_sim.py --preset a --P-g 1.5 # any Table 1 parameter is a flag
    python toy_sim.py --preset ungrok      # beyond the paper: ungrokking (Sec. 4.2)
    python toy_sim.py --preset semi        # beyond the paper: semi-grokking (Sec. 4.2)
    python toy_sim.py --phase              # final test loss over P_g/P_m and kappa
    python toy_sim.py --theorem            # Theorem D.4 checked numerically
    python toy_sim.py --help               # every flag, with its reason
Tests: python -m pytest -q tests/test_toy_sim.py
"""

import argparse
import dataclasses
import inspect
import os
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import matplotlib

matplotlib.use("Agg")  # render to files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402  (must come after use("Agg"))

# -----------------------------------------------------------------------------
# Configuration. Defaults are Table 1, column (a) of the paper.


@dataclass
class Config:
    # --- the simulation (Table 1) ---
    P_g: float = 1.0  # parameter norm of C_gen at unit weight (Table 1a); P_g < P_m = more efficient
    P_m: float = 2.0  # parameter norm of C_mem at unit weight (Table 1)
    kappa: float = 1.2  # output scales as (param scale)^kappa, "kappa-layer MLP" (Sec. 3, Table 1)
    alpha: float = 0.005  # weight-decay strength (Table 1); App. C's L_wd without the 1/2, see loss_terms
    w_g1_0: float = 0.0  # w_G1(0): 0 so the logits start at zero (Sec. 3, Table 1)
    w_g2_0: float = 0.005  # w_G2(0) << w_M2(0): C_gen is learned slowly (Table 1a; 1 in Table 1c)
    w_m1_0: float = 0.0  # w_M1(0): 0 so the logits start at zero (Sec. 3, Table 1)
    w_m2_0: float = 1.0  # w_M2(0): C_mem is learned fast (Table 1)
    q: int = 113  # number of labels (Table 1; modular arithmetic mod 113)
    lr: float = 0.01  # gradient-descent learning rate lambda (Table 1)
    steps: int = 10000  # not in Table 1: long enough for (a) to finish grokking (~step 5000)
    # --- ungrokking (Sec. 4.2, beyond the paper's figure) ---
    switch_step: int = 0  # at this step P_m becomes P_m_after (a smaller dataset); 0 = never
    P_m_after: float = 0.5  # C_mem's norm after the switch; < P_g makes C_mem the efficient one
    # --- Theorem D.4 (App. D.1, Eq. 6) ---
    norm_q: float = 2.0  # the L_q norm exponent of Eq. 6 (2 = weight decay); NOT the label count q
    thm_P: tuple = (1.0, 1.25, 1.5, 1.75, 2.0)  # norms P_i of I circuits with identical train logits
    thm_kappas: tuple = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0)  # kappas to solve; < norm_q and >= norm_q
    thm_alpha: float = 0.005  # alpha of Eq. 6 (same as Table 1)
    thm_lr: float = 1.0  # step size of the projected gradient descent that minimises Eq. 6
    thm_steps: int = 20000  # iterations of that projected gradient descent
    # --- phase picture (beyond the paper) ---
    phase_n: int = 50  # grid points per axis (phase_n x phase_n runs, vectorised)
    phase_steps: int = 20000  # gradient steps per grid point
    phase_ratio_min: float = 0.25  # smallest P_g/P_m on the x axis (P_m stays at --P-m)
    phase_ratio_max: float = 2.0  # largest P_g/P_m
    phase_kappa_min: float = 0.5  # smallest kappa on the y axis
    phase_kappa_max: float = 3.0  # largest kappa (above 2 = norm_q weight decay is sublinear)
    # --- what to run and where to write ---
    preset: str = "fig2"  # fig2 (= a, b, c), a, b, c, ungrok or semi; explicit flags override it
    phase: bool = False  # draw the phase picture instead of Fig. 2
    theorem: bool = False  # check Theorem D.4 numerically instead of Fig. 2
    out: str = ""  # output picture; "" = figures/toy_<what>.png
    csv: bool = False  # preset runs: also write the curves as numbers next to the picture (.csv)


def preset_overrides(name):
    """Return the Config fields that a named preset changes from Table 1 (a)."""
    # Fresh dicts on every call: no module-level mutable state.
    presets = {
        "a": {},  # Table 1a: all three ingredients -> grokking
        "b": {"P_g": 4.0},  # Table 1b: "We set P_G > P_M" -> test loss stays high
        "c": {"w_g2_0": 1.0},  # Table 1c: w_G2(0) = 1, learned at equal speed -> no delay
        # Sec. 4.2: "continue to train it on a smaller dataset with size D' < D_crit. In this
        # new training setting, C_mem is now more efficient than C_gen". A smaller dataset
        # makes C_mem cheaper (Sec. 4.1), so after grokking (a) we drop P_m from 2 to 0.5,
        # below P_g = 1: the weight should flow back to C_mem and test loss rise.
        "ungrok": {"steps": 20000, "switch_step": 10000, "P_m_after": 0.5},
        # Sec. 4.2: "Suppose we train a network on a dataset with D ~ D_crit. C_gen and C_mem
        # would be similarly efficient". P_g/P_m = 0.9 with kappa = 1.2 < 2 (Theorem D.4
        # case 2): both keep weight, w_M/w_G -> 0.9^3 = 0.73, test loss settles in between.
        "semi": {"P_g": 1.8, "steps": 30000},
    }
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; allowed: fig2, {', '.join(presets)}")
    return presets[name]


def preset_names(preset):
    """Return the list of preset names that a --preset value stands for."""
    return ["a", "b", "c"] if preset == "fig2" else [preset]


# -----------------------------------------------------------------------------
# Input checks: one clear line saying what was wrong and what is allowed.


def check_sim_args(P_g, P_m, kappa, alpha, q, lr, steps, switch_step=0, P_m_after=1.0):
    """Raise ValueError (one line) if a simulation argument is out of its allowed range."""
    rules = [
        ("P_g", P_g, lambda v: v > 0, "> 0 (a parameter norm)"),
        ("P_m", P_m, lambda v: v > 0, "> 0 (a parameter norm)"),
        ("P_m_after", P_m_after, lambda v: v > 0, "> 0 (a parameter norm)"),
        ("kappa", kappa, lambda v: v > 0, "> 0 (Sec. 3: 'for some kappa > 0')"),
        ("alpha", alpha, lambda v: v >= 0, ">= 0 (weight-decay strength)"),
        ("q", q, lambda v: (v >= 3) & (v == np.round(v)), "an integer >= 3 (test loss has q-2 wrong labels)"),
        ("lr", lr, lambda v: v > 0, "> 0 (learning rate)"),
        ("steps", steps, lambda v: (v >= 1) & (v == np.round(v)), "an integer >= 1"),
        ("switch_step", switch_step, lambda v: (v >= 0) & (v == np.round(v)), "an integer >= 0 (0 = never)"),
    ]
    for name, value, ok, allowed in rules:
        v = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(v)) or not np.all(ok(v)):
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if np.any((np.asarray(switch_step) > 0) & (np.asarray(switch_step) >= steps)):
        raise ValueError(f"switch_step must be < steps ({steps}) or 0 for never, got {switch_step!r}")


def check_config(cfg):
    """Raise ValueError (one line) if any Config field is out of its allowed range."""
    check_sim_args(cfg.P_g, cfg.P_m, cfg.kappa, cfg.alpha, cfg.q, cfg.lr, cfg.steps,
                   cfg.switch_step, cfg.P_m_after)
    for name in ("w_g1_0", "w_g2_0", "w_m1_0", "w_m2_0"):
        if not np.isfinite(getattr(cfg, name)):
            raise ValueError(f"{name} must be a finite number, got {getattr(cfg, name)!r}")
    check_theorem_args(cfg.thm_P, cfg.thm_kappas, cfg.norm_q, cfg.thm_alpha, cfg.q, cfg.thm_lr, cfg.thm_steps)
    if cfg.phase_n < 2 or cfg.phase_steps < 1:
        raise ValueError(f"phase_n must be >= 2 and phase_steps >= 1, got {cfg.phase_n}, {cfg.phase_steps}")
    if not 0 < cfg.phase_ratio_min < cfg.phase_ratio_max:
        raise ValueError("phase ratios must satisfy 0 < phase_ratio_min < phase_ratio_max, "
                         f"got {cfg.phase_ratio_min}, {cfg.phase_ratio_max}")
    if not 0 < cfg.phase_kappa_min < cfg.phase_kappa_max:
        raise ValueError("phase kappas must satisfy 0 < phase_kappa_min < phase_kappa_max, "
                         f"got {cfg.phase_kappa_min}, {cfg.phase_kappa_max}")
    if cfg.preset != "fig2":
        preset_overrides(cfg.preset)  # raises on an unknown preset name
    if cfg.phase and cfg.theorem:
        raise ValueError("choose one of --phase and --theorem, not both")


# -----------------------------------------------------------------------------
# Losses and hand-written gradients (App. C).
#
# App. C: "L_train = -log exp(w_g1 w_g2 + w_m1 w_m2) / ((q-1) + exp(w_g1 w_g2 + w_m1 w_m2)) + L_wd,
#          L_test  = -log exp(w_g1 w_g2) / ((q-2) + exp(w_g1 w_g2) + exp(w_m1 w_m2)) + L_wd"
# On a train input both circuits put logit 1 on the right label (the other q-1 logits are 0);
# on a test input C_gen backs the right label and C_mem a different, wrong one (q-2 left at 0).
#
# App. C: "P'_c = (w_c1 w_c2)^(1/kappa) P_c" and "L_wd = P'_g^2 + P'_m^2".
# Which weight-decay factor: App. C's L_wd has no alpha and no 1/2, Sec. 2 / App. D.1 use
# (alpha/2) * sum P'^2. We read App. C's L_wd as alpha * (P'_g^2 + P'_m^2), the factor of Table 1,
# because it matches the paper's description of Fig. 2a: "C_gen only starts to grow
# significantly by step 2500". With it, w_G goes 0.014 -> 0.15 -> 1.1 at steps 2000/3000/4000;
# with alpha/2 the same happens only around steps 6000-8000 (checked with this code).
#
# Fractional powers at and below zero: a weight can become slightly negative during
# discrete gradient descent, and w^(1/kappa) of a negative number is NaN. We use |w|:
# P'_c = |w_c|^(1/kappa) P_c. This is the natural extension, because negating the last
# layer of a bias-free ReLU MLP negates its output without changing its norm. Its
# derivative (2/kappa) sign(w) |w|^(2/kappa - 1) is continuous at 0 for kappa <= 2; for
# kappa > 2 it diverges at 0, and at exactly w = 0 we use the subgradient 0 (the base of
# the power is replaced by 1 there, then multiplied by sign(0) = 0), so no inf or NaN appears.


def sigmoid(x):
    """Return the logistic function 1/(1+exp(-x)), without overflow for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def loss_terms(w, P_g, P_m, kappa, alpha, q):
    """Return (train cross-entropy, test cross-entropy, alpha*L_wd, parameter norm) for subweights w."""
    w_G, w_M = w[0] * w[1], w[2] * w[3]
    s = w_G + w_M
    log_wrong = np.log(q - 1.0)
    train_ce = np.logaddexp(log_wrong, s) - s  # -log e^s / ((q-1) + e^s), stable for any s
    test_ce = np.logaddexp(np.logaddexp(np.log(q - 2.0), w_G), w_M) - w_G
    Pp_g = np.abs(w_G) ** (1.0 / kappa) * P_g  # P'_g, App. C (|.|: see comment above)
    Pp_m = np.abs(w_M) ** (1.0 / kappa) * P_m
    wd = alpha * (Pp_g ** 2 + Pp_m ** 2)
    # Total parameter norm: the two circuits use disjoint parameters, so the L2 norm of all
    # of them is sqrt(P'_g^2 + P'_m^2) (and L_wd is alpha times its square).
    norm = np.sqrt(Pp_g ** 2 + Pp_m ** 2)
    return train_ce, test_ce, wd, norm


def train_loss(w, P_g, P_m, kappa, alpha, q):
    """Return App. C's L_train (cross-entropy + alpha*L_wd), the objective of gradient descent."""
    train_ce, _, wd, _ = loss_terms(w, P_g, P_m, kappa, alpha, q)
    return train_ce + wd


def wd_slope(w_c, P_c, kappa, alpha):
    """Return d(alpha * |w_c|^(2/kappa) * P_c^2)/dw_c, using 0 at w_c == 0 (never inf or NaN)."""
    p = 2.0 / kappa
    base = np.where(w_c == 0, 1.0, np.abs(w_c))  # base 1 at zero; sign(0) = 0 zeroes it below
    return alpha * p * P_c ** 2 * np.sign(w_c) * base ** (p - 1.0)


def grad_train(w, P_g, P_m, kappa, alpha, q):
    """Return dL_train/dw for the four subweights w = (w_G1, w_G2, w_M1, w_M2), by hand."""
    w_G, w_M = w[0] * w[1], w[2] * w[3]
    # d/ds [log((q-1) + e^s) - s] = e^s/((q-1)+e^s) - 1 = -sigmoid(log(q-1) - s)
    dce = -sigmoid(np.log(q - 1.0) - (w_G + w_M))
    g_G = dce + wd_slope(w_G, P_g, kappa, alpha)  # dL/dw_G
    g_M = dce + wd_slope(w_M, P_m, kappa, alpha)  # dL/dw_M
    # Chain rule through w_G = w_G1 w_G2: each subweight's gradient is scaled by the other one,
    # which is why a small w_G2(0) makes C_gen slow to learn (Sec. 3, "Slow vs fast learning").
    return np.stack([g_G * w[1], g_G * w[0], g_M * w[3], g_M * w[2]])


# -----------------------------------------------------------------------------
# The simulation: plain gradient descent on the subweights, vectorised over runs.
# App. C: "w_ci(tau) <- w_ci(tau-1) - lambda dL_train/dw_ci".


def simulate(P_g, P_m, kappa, alpha, w0, q, lr, steps, switch_step=0, P_m_after=1.0, record=True):
    """Run gradient descent for n runs at once (args broadcast to shape (n,)); return curves or finals."""
    check_sim_args(P_g, P_m, kappa, alpha, q, lr, steps, switch_step, P_m_after)
    w = np.array(w0, dtype=float)  # (4, n): w_G1, w_G2, w_M1, w_M2 for every run
    n = w.shape[1]
    args = [np.broadcast_to(np.asarray(a, dtype=float), (n,)) for a in (P_g, P_m, kappa, alpha, q, lr)]
    P_g, P_m, kappa, alpha, q, lr = args
    switch_step = np.broadcast_to(np.asarray(switch_step), (n,))
    has_switch = bool(np.any(switch_step > 0))
    rows = []
    for t in range(steps + 1):
        # Ungrokking: from switch_step on, C_mem costs P_m_after (a smaller training set, Sec. 4.1).
        P_m_t = np.where((switch_step > 0) & (t >= switch_step), P_m_after, P_m) if has_switch else P_m
        if record:
            train_ce, test_ce, wd, norm = loss_terms(w, P_g, P_m_t, kappa, alpha, q)
            rows.append(np.stack([train_ce + wd, test_ce + wd, w[0] * w[1], w[2] * w[3], norm]))
        if t < steps:
            w = w - lr * grad_train(w, P_g, P_m_t, kappa, alpha, q)
    if record:
        curves = np.stack(rows)  # (steps+1, 5, n)
        keys = ("train", "test", "w_G", "w_M", "norm")
        return {"step": np.arange(steps + 1), **{k: curves[:, i] for i, k in enumerate(keys)}, "w": w}
    train_ce, test_ce, wd, norm = loss_terms(w, P_g, P_m_t, kappa, alpha, q)
    return {"train": train_ce + wd, "test": test_ce + wd, "w_G": w[0] * w[1], "w_M": w[2] * w[3],
            "norm": norm, "w": w}


def run_configs(cfgs):
    """Simulate a list of Configs together (they must share `steps`); return the curves dict."""
    steps = {c.steps for c in cfgs}
    if len(steps) != 1:
        raise ValueError(f"presets run together must share steps, got {sorted(steps)}")
    col = lambda name: np.array([getattr(c, name) for c in cfgs], dtype=float)  # noqa: E731
    w0 = np.stack([col("w_g1_0"), col("w_g2_0"), col("w_m1_0"), col("w_m2_0")])
    with np.errstate(over="ignore", invalid="ignore"):  # a blow-up is reported below, in one line
        curves = simulate(col("P_g"), col("P_m"), col("kappa"), col("alpha"), w0, col("q"), col("lr"),
                          cfgs[0].steps, col("switch_step").astype(int), col("P_m_after"), record=True)
    check_finite_curves(curves, [f"lr={c.lr:g}, alpha={c.alpha:g}, kappa={c.kappa:g}" for c in cfgs])
    return curves


def check_finite_curves(curves, labels):
    """Raise a one-line ValueError naming the first simulation (by label) and step that went non-finite."""
    for i, label in enumerate(labels):
        bad = ~np.isfinite(np.stack([curves[k][:, i] for k in ("train", "test", "w_G", "w_M")]))
        if bad.any():
            step = int(np.nonzero(bad.any(axis=0))[0][0])
            raise ValueError(f"the simulation ({label}) went non-finite at step {step}: gradient descent diverged; "
                             f"use a smaller --lr (or --alpha)")


def half_peak_step(curve):
    """Return the first step after the peak where curve < peak/2, or -1 if it never gets there."""
    peak = int(np.argmax(curve))
    below = np.nonzero(curve[peak:] < 0.5 * curve[peak])[0]
    return peak + int(below[0]) if below.size else -1


def preset_summary(names, curves):
    """Return one summary line per preset: grokking step, final losses and weights."""
    lines = []
    for i, name in enumerate(names):
        t_test = half_peak_step(curves["test"][:, i])
        t_train = half_peak_step(curves["train"][:, i])
        fmt = lambda t: "never" if t < 0 else str(t)  # noqa: E731
        lines.append(f"preset {name:6s}: test loss < half its peak at step {fmt(t_test):>5s} "
                     f"(train: {fmt(t_train)}) | final train {curves['train'][-1, i]:.3f} "
                     f"test {curves['test'][-1, i]:.3f} | w_G {curves['w_G'][-1, i]:.3f} "
                     f"w_M {curves['w_M'][-1, i]:.3f}")
    return lines


# -----------------------------------------------------------------------------
# Phase picture: final test loss over P_g/P_m and kappa (beyond the paper).
#
# How to read it (Table 1 (a) everywhere except the two axes). Below kappa ~ 1.7:
# P_g/P_m well below 1 groks (low test loss), P_g/P_m near 1 semi-groks (both circuits
# keep weight, Theorem D.4 case 2, middling test loss), P_g/P_m > 1 stays memorised.
# Near kappa = 2 the weight-decay pull on C_mem is weak, w_M grows large and the
# cross-entropy pull on C_gen becomes tiny, so C_gen is still growing after 20k steps
# (at kappa = 1.8 and 2.0 with P_g/P_m = 0.5 it groks by step 100k; checked with this
# code). Above kappa = 2 the slope of |w|^(2/kappa) is infinite at 0, so w_G = 0 is a
# local minimum: C_gen never starts, even where it would hold all the weight at the
# global minimum (Theorem D.4 case 1 is about global minima, not about what GD reaches).


def phase_grid(P_m, ratios, kappas, alpha, w0, q, lr, steps):
    """Return final test loss, w_G, w_M on a (len(kappas), len(ratios)) grid, all runs vectorised."""
    R, K = np.meshgrid(ratios, kappas)  # rows: kappa, columns: P_g/P_m
    n = R.size
    w0 = np.repeat(np.asarray(w0, dtype=float)[:, None], n, axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        fin = simulate(R.ravel() * P_m, P_m, K.ravel(), alpha, w0, q, lr, steps, record=False)
    bad = ~np.isfinite(fin["test"])
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ValueError(f"the phase picture's simulation at P_g/P_m={R.ravel()[i]:g}, kappa={K.ravel()[i]:g} went "
                         f"non-finite (lr={lr:g}, alpha={alpha:g}): gradient descent diverged; use a smaller --lr")
    shape = R.shape
    return {"ratio": np.asarray(ratios), "kappa": np.asarray(kappas), "test": fin["test"].reshape(shape),
            "w_G": fin["w_G"].reshape(shape), "w_M": fin["w_M"].reshape(shape), "steps": steps}


# -----------------------------------------------------------------------------
# Theorem D.4, numerically.
#
# App. D.1, Eq. 6: "L(w) = L_train(sum_i w_i C_i) + alpha/q sum_i (w_i^(1/kappa) P_i)^q"
# Theorem D.4: "1. If kappa >= q, then w_i* = 0 for all i such that P_i > min_j P_j.
#               2. If 0 < kappa < q, then w_i* is proportional to P_i^(-q kappa/(q - kappa))."
# Here the paper's q is the exponent of the L_q norm (2 = weight decay), which we call norm_q
# to keep it apart from q, the number of labels. For L_train we take the toy's train
# cross-entropy on q labels: every circuit puts logit 1 on the right label, so the logit is
# S = sum_i w_i and L_train = log((q-1) + e^S) - S ("identical training logits").
# We minimise Eq. 6 with projected gradient descent, w <- max(0, w - eta grad), which knows
# nothing about the theorem. Where w_i = 0 and norm_q/kappa < 1 the weight-decay slope is
# +infinite (w^(q/kappa) is vertical at 0), so the projection keeps w_i at exactly 0.
# In case 1 weight drains from a runner-up only as fast as the difference of the two
# weight-decay slopes, which is small for kappa >> q: hence the default of 20k iterations.


def check_theorem_args(P, kappas, norm_q, alpha, q, lr, steps):
    """Raise ValueError (one line) if a Theorem D.4 argument is out of its allowed range."""
    P, kappas = np.asarray(P, dtype=float), np.asarray(kappas, dtype=float)
    if P.ndim != 1 or P.size < 2 or not np.all(np.isfinite(P)) or np.any(P <= 0):
        raise ValueError(f"thm_P must be >= 2 parameter norms, each > 0, got {P.tolist()}")
    if kappas.size < 1 or not np.all(np.isfinite(kappas)) or np.any(kappas <= 0):
        raise ValueError(f"thm_kappas must be one or more kappas, each > 0, got {kappas.tolist()}")
    for name, v in (("norm_q", norm_q), ("thm_alpha", alpha), ("thm_lr", lr)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be > 0, got {v!r}")
    if not (q >= 3 and q == int(q)):
        raise ValueError(f"q must be an integer >= 3, got {q!r}")
    if not (steps >= 1 and steps == int(steps)):
        raise ValueError(f"thm_steps must be an integer >= 1, got {steps!r}")


def minimise_eq6(P, kappas, norm_q, alpha, q, lr, steps):
    """Return the (len(kappas), I) weights minimising Eq. 6 over w >= 0, by projected gradient descent,
    and how far (relative) its last step moved them."""
    check_theorem_args(P, kappas, norm_q, alpha, q, lr, steps)
    P = np.asarray(P, dtype=float)[None, :]
    kap = np.asarray(kappas, dtype=float)[:, None]
    e = norm_q / kap - 1.0  # d/dw (alpha/q) P^q w^(q/kappa) = (alpha/kappa) P^q w^(q/kappa - 1)
    w = np.ones((kap.shape[0], P.shape[1]))  # start from equal weights: no circuit favoured
    for _ in range(steps):
        S = w.sum(axis=1, keepdims=True)
        dce = -sigmoid(np.log(q - 1.0) - S)  # dL_train/dS, the same for every circuit
        pos = w > 0
        slope = alpha / kap * P ** norm_q * np.where(pos, w, 1.0) ** e  # base 1 where w = 0 ...
        # ... then the true slope at w = 0: 0 if q/kappa > 1, alpha P^q/kappa if q/kappa == 1
        # (the value just computed, since 1^0 = 1), +inf if q/kappa < 1.
        slope = np.where(pos, slope, np.where(e > 0, 0.0, np.where(e == 0, slope, np.inf)))
        # An infinite slope sends w - lr*inf to -inf, which the projection max(0, .) maps to 0.
        w, before = np.maximum(0.0, w - lr * (dce + slope)), w
    # How far the last step moved the weights, relative to their size: ~0 once converged.
    last_move = float(np.max(np.abs(w - before)) / max(np.max(np.abs(w)), 1e-300)) if steps else np.inf
    return w, last_move


def fit_exponent(P, w):
    """Return the least-squares slope of log w against log P (nan if any weight is 0)."""
    if np.any(w <= 0):
        return float("nan")
    return float(np.polyfit(np.log(P), np.log(w), 1)[0])


def theorem_d4(P, kappas, norm_q, alpha, q, lr, steps):
    """Return the numerical Eq. 6 minimisers with fitted and predicted exponents and best-circuit shares."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        w, last_move = minimise_eq6(P, kappas, norm_q, alpha, q, lr, steps)
    # A minimiser that has not settled (or has blown up) would be reported as the theorem's answer.
    # Settled runs here move by at most ~1e-5 of their size per step (a slow creep of the best
    # circuit's weight); one that oscillates or blows up moves by O(1).
    if not np.all(np.isfinite(w)) or not last_move <= 1e-4:
        raise ValueError(f"the minimisation of Eq. 6 did not converge (thm_lr={lr:g}, thm_steps={steps}: the last "
                         f"step moved the weights by {last_move:.2g} of their size, finite: {bool(np.all(np.isfinite(w)))}); "
                         f"use a smaller --thm-lr or more --thm-steps")
    kappas = np.asarray(kappas, dtype=float)
    P = np.asarray(P, dtype=float)
    fitted = np.array([fit_exponent(P, wi) if k < norm_q else np.nan for k, wi in zip(kappas, w)])
    case2 = kappas < norm_q
    predicted = np.where(case2, -norm_q * kappas / np.where(case2, norm_q - kappas, 1.0), np.nan)
    share_best = w[:, np.argmin(P)] / w.sum(axis=1)
    return {"P": P, "kappa": kappas, "w": w, "fitted": fitted, "predicted": predicted,
            "share_best": share_best, "norm_q": norm_q}


def theorem_lines(res):
    """Return the printed table: fitted vs predicted exponent (kappa < q), best-circuit share (kappa >= q)."""
    lines = [f"Theorem D.4 (L_q norm q = {res['norm_q']:g}, P_i = {', '.join(f'{p:g}' for p in res['P'])})",
             "kappa  case        fitted exponent  predicted -q*kappa/(q-kappa)  share of best circuit"]
    for k, f, p, s in zip(res["kappa"], res["fitted"], res["predicted"], res["share_best"]):
        if k < res["norm_q"]:
            lines.append(f"{k:5.2f}  kappa <  q   {f:15.4f}  {p:30.4f}  {s:21.4f}")
        else:
            lines.append(f"{k:5.2f}  kappa >= q   {'-':>15s}  {'all weight on best (share 1)':>30s}  {s:21.4f}")
    return lines


# -----------------------------------------------------------------------------
# Plots: one function per figure, drawing only from computed arrays.


def atomic_savefig(fig, path):
    """Save a figure to path via a temp file in the same directory and os.replace (one-line OSError naming path)."""
    ext = os.path.splitext(path)[1] or ".png"
    try:
        atomic_write_bytes(lambda f: fig.savefig(f, format=ext[1:], dpi=120), path)
    finally:
        plt.close(fig)


def atomic_write_text(text, path):
    """Write text to path via a temp file in the same directory and os.replace (one-line OSError naming path)."""
    atomic_write_bytes(lambda f: f.write(text.encode()), path)


def atomic_write_bytes(write, path):
    """Call write(f) on a temporary file beside path, then rename it to path; on any failure remove it.

    An OSError (a full disk, a read-only or missing directory, an --out that is a directory)
    comes out as one line that names path and the cause.
    """
    tmp = None
    try:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; give the output normal permissions
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, f"could not write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def curves_csv(data):
    """Return the curves as CSV text: one row per step, five columns per preset."""
    keys = ("train", "test", "w_G", "w_M", "norm")
    header = ["step"] + [f"{n}_{k}" for n in data["names"] for k in keys]
    cols = [data["step"]] + [data[k][:, i] for i in range(len(data["names"])) for k in keys]
    body = np.column_stack(cols)
    rows = [",".join(header)] + [f"{int(r[0])}," + ",".join(f"{v:.6g}" for v in r[1:]) for r in body]
    # The last line says how many rows there are, so that a reader can tell a whole file from a cut one.
    return "\n".join(rows) + f"\n# end: {len(body)} rows\n"


def plot_fig2(data, path):
    """Draw Fig. 2: per preset, train/test loss, w_G, w_M and parameter norm over steps."""
    names, n = data["names"], len(data["names"])
    titles = {"a": "(a) all three ingredients", "b": "(b) C_gen less efficient (P_g = 4)",
              "c": "(c) equal learning speed (w_G2(0) = 1)", "ungrok": "ungrokking: P_m drops mid-run",
              "semi": "semi-grokking: P_g close to P_m"}
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), squeeze=False)
    step = data["step"]
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        for key, label, style in (("train", "train loss", "C0-"), ("test", "test loss", "C3-"),
                                  ("w_G", "w_G", "C2--"), ("w_M", "w_M", "C1--"),
                                  ("norm", "parameter norm", "k:")):
            ax.plot(step[1:], data[key][1:, i], style, label=label)
        if data["switch_step"][i] > 0:
            # The ungrokking switch happens late: a linear step axis shows it best.
            ax.axvline(data["switch_step"][i], color="gray", lw=0.8)
        else:
            # Train loss falls within ~200 steps, C_gen grows only after ~2500: a log step
            # axis gives both transitions room, so the delay in (a) and its absence in (c) show.
            ax.set_xscale("log")
        ax.set_title(titles.get(name, name), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Two-circuit toy model (Varma et al. 2023, App. C)\nlosses include alpha*L_wd", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)


def plot_phase(data, path):
    """Draw final test loss over P_g/P_m (x) and kappa (y), with the theory's boundaries."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    m = ax.pcolormesh(data["ratio"], data["kappa"], data["test"], shading="auto", cmap="viridis")
    fig.colorbar(m, ax=ax, label=f"final test loss after {data['steps']} steps")
    ax.axvline(1.0, color="w", lw=0.8, ls="--")  # equal efficiency, P_g = P_m (D = D_crit)
    ax.axhline(2.0, color="w", lw=0.8, ls=":")  # kappa = 2: Theorem D.4's case boundary for q = 2
    for name, x, y, dx in (("a", 0.5, 1.2, 4), ("b", 2.0, 1.2, -12), ("semi", 0.9, 1.2, 4)):
        ax.plot(x, y, "wo", ms=4)  # where the presets sit (Table 1 (a), (b) and semi)
        ax.annotate(name, (x, y), color="w", xytext=(dx, 4), textcoords="offset points")
    ax.set_xlabel("P_g / P_m  (< 1: C_gen more efficient)")
    ax.set_ylabel("kappa")
    ax.set_title("Two-circuit toy model: final test loss (Table 1a otherwise)", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)


def plot_theorem_d4(data, path):
    """Draw Theorem D.4: allocations for kappa < q and kappa >= q, and fitted vs predicted exponent."""
    P, k, w, nq = data["P"], data["kappa"], data["w"], data["norm_q"]
    share = w / w.sum(axis=1, keepdims=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, case, sel in ((axes[0], f"case 2: kappa < q = {nq:g}", k < nq),
                          (axes[1], f"case 1: kappa >= q = {nq:g}", k >= nq)):
        for j in np.nonzero(sel)[0]:
            line, = ax.plot(P, share[j], "o", label=f"kappa = {k[j]:g}")
            # Dashed: what the theorem says, P^(-q kappa/(q-kappa)) normalised, or all on the best.
            pred = P ** data["predicted"][j] if k[j] < nq else (P == P.min()).astype(float)
            ax.plot(P, pred / pred.sum(), "--", color=line.get_color(), lw=1)
        ax.set_title(case + "\ndots: numerical minimum, dashed: theorem", fontsize=10)
        ax.set_xlabel("circuit norm P_i (lower = more efficient)")
        ax.set_ylabel("share of total weight w_i / sum w")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ks = k[k < nq]
    kk = np.linspace(0.05, min(ks.max(), nq) if ks.size else 1.0, 200)
    axes[2].plot(kk, -nq * kk / (nq - kk), "k-", label="predicted -q kappa/(q - kappa)")
    axes[2].plot(ks, data["fitted"][k < nq], "ro", label="fitted from numerical minimum")
    axes[2].set_xlabel("kappa")
    axes[2].set_ylabel("exponent of w_i in P_i")
    axes[2].set_title("case 2: w_i proportional to P_i^exponent", fontsize=10)
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path)


# -----------------------------------------------------------------------------
# Command line: flags generated from the Config fields.


def field_help(cls):
    """Return {field name: trailing comment} read from the dataclass source, for --help."""
    helps = {}
    try:
        src = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return helps
    for line in src:
        head, _, comment = line.partition("  # ")
        if ":" in head and "=" in head and comment:
            helps[head.split(":")[0].strip()] = comment.strip()
    return helps


def parse_tuple(text):
    """Parse '1,1.5,2' into a tuple of floats (for tuple-valued Config fields)."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a bad flag raises ValueError (printed as one line) instead of usage text."""

    def error(self, message):
        raise ValueError(f"{message} (python toy_sim.py --help lists the flags)")


def build_parser():
    """Return an argparse parser with one flag per Config field (defaults suppressed)."""
    # Spelled as in grok.py and analysis.py: --name-with-hyphens, and --name_with_underscores too.
    # (grok.py has the same helper; this file stays standalone, numpy and matplotlib only.)
    helps = field_help(Config)
    parser = OneLineParser(prog="toy_sim.py", description="Two-circuit toy model of grokking (Varma et al. 2023).",
                           argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(Config):
        flags = ["--" + f.name.replace("_", "-")] + (["--" + f.name] if "_" in f.name else [])
        h = f"{helps.get(f.name, '')} (default: {f.default})".replace("%", "%%")
        if f.type is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", help=h)
        elif f.type is tuple:
            parser.add_argument(*flags, dest=f.name, type=parse_tuple, metavar="X,Y,...", help=h)
        else:
            parser.add_argument(*flags, dest=f.name, type=f.type, metavar=f.name.upper(), help=h)
    return parser


def main(argv=None):
    """Parse flags, run Fig. 2 / a preset / the phase picture / Theorem D.4, write outputs."""
    given = vars(build_parser().parse_args(argv))  # only the flags the user typed (defaults are suppressed)
    base = dataclasses.replace(Config(), **given)
    check_config(base)
    if base.theorem:
        res = theorem_d4(base.thm_P, base.thm_kappas, base.norm_q, base.thm_alpha, base.q,
                         base.thm_lr, base.thm_steps)
        print("\n".join(theorem_lines(res)))
        path = base.out or os.path.join("figures", "toy_theorem_d4.png")
        plot_theorem_d4(res, path)
        print(f"wrote {path}")
        return
    if base.phase:
        ratios = np.linspace(base.phase_ratio_min, base.phase_ratio_max, base.phase_n)
        kappas = np.linspace(base.phase_kappa_min, base.phase_kappa_max, base.phase_n)
        w0 = (base.w_g1_0, base.w_g2_0, base.w_m1_0, base.w_m2_0)
        data = phase_grid(base.P_m, ratios, kappas, base.alpha, w0, base.q, base.lr, base.phase_steps)
        print(f"phase: {base.phase_n}x{base.phase_n} runs, {base.phase_steps} steps each; final test loss "
              f"min {data['test'].min():.3f} max {data['test'].max():.3f}; NaNs: {int(np.isnan(data['test']).sum())}")
        path = base.out or os.path.join("figures", "toy_phase.png")
        plot_phase(data, path)
        print(f"wrote {path}")
        return
    # Presets: Table 1 (a) defaults, then the preset's changes, then any flag the user typed.
    names = preset_names(base.preset)
    cfgs = [dataclasses.replace(Config(), **{**preset_overrides(n), **given}) for n in names]
    for c in cfgs:
        check_config(c)
    curves = run_configs(cfgs)
    data = {"names": names, "switch_step": [c.switch_step for c in cfgs], **curves}
    print("\n".join(preset_summary(names, curves)))
    what = "fig2" if base.preset == "fig2" else base.preset
    path = base.out or os.path.join("figures", f"toy_{what}.png")
    plot_fig2(data, path)
    print(f"wrote {path}")
    if base.csv:
        csv_path = os.path.splitext(path)[0] + ".csv"
        atomic_write_text(curves_csv(data), csv_path)
        print(f"wrote {csv_path}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:  # bad input: one line, no traceback, non-zero exit
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # an output that cannot be written: one line naming it
        print(f"error: {err.strerror or err}", file=sys.stderr)
        sys.exit(1)

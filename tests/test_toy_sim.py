"""
Tests for toy_sim.py (the two-circuit toy model, Sec. 3 / App. C / Theorem D.4).
Each test builds one quantity two ways and compares them.

Run from the repository root:
    python -m pytest -q tests/test_toy_sim.py
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import toy_sim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
# helpers


def table1(**changes):
    """Return the simulate() keyword arguments of Table 1 (a) with some fields changed."""
    c = toy_sim.Config(**changes)
    w0 = np.array([[c.w_g1_0], [c.w_g2_0], [c.w_m1_0], [c.w_m2_0]])
    return dict(P_g=c.P_g, P_m=c.P_m, kappa=c.kappa, alpha=c.alpha, w0=w0, q=c.q, lr=c.lr,
                steps=c.steps, switch_step=c.switch_step, P_m_after=c.P_m_after)


def run_preset(name, **changes):
    """Run one named preset alone; return its curves dict (arrays of shape (steps+1,))."""
    cfg = toy_sim.Config(**{**toy_sim.preset_overrides(name), **changes})
    curves = toy_sim.run_configs([cfg])
    return {k: (v[:, 0] if k not in ("step", "w") else v) for k, v in curves.items()}


def finite_diff(f, w, h=1e-6):
    """Return the central finite-difference gradient of a per-run loss f over the 4 subweights."""
    g = np.zeros_like(w)
    for i in range(w.shape[0]):
        e = np.zeros_like(w)
        e[i] = h
        g[i] = (f(w + e) - f(w - e)) / (2 * h)
    return g


# -----------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("kappa", [0.6, 1.2, 2.0, 3.0])
def test_gradient_matches_finite_differences(kappa):
    rng = np.random.default_rng(0)
    # Subweights of both signs, away from 0 so that |w|^(2/kappa) is smooth (kappa > 2 is not at 0).
    w = rng.uniform(0.3, 2.5, size=(4, 64)) * rng.choice([-1.0, 1.0], size=(4, 64))
    P_g, P_m, alpha, q = rng.uniform(0.5, 3, 64), rng.uniform(0.5, 3, 64), 0.05, 113
    analytic = toy_sim.grad_train(w, P_g, P_m, kappa, alpha, q)
    numeric = finite_diff(lambda x: toy_sim.train_loss(x, P_g, P_m, kappa, alpha, q), w)
    err = np.max(np.abs(analytic - numeric) / (1.0 + np.abs(numeric)))
    assert err < 1e-6, f"kappa={kappa}: max |analytic - finite difference| (relative) = {err:.3g}"


@pytest.mark.parametrize("kappa", [0.6, 1.2, 2.0, 3.0])
def test_gradient_at_zero_is_finite_and_matches_one_sided_limit(kappa):
    # w_G = 0 exactly (w_G1 = 0) and w_M < 0: no NaN/inf; the w_G2 entry is 0 because it
    # is multiplied by w_G1 = 0; the w_G1 entry is the cross-entropy slope times w_G2 plus
    # the weight-decay slope at 0 (which we define as 0).
    w = np.array([[0.0], [0.7], [-0.4], [1.3]])
    g = toy_sim.grad_train(w, 1.0, 2.0, kappa, 0.005, 113)
    assert np.all(np.isfinite(g)), f"non-finite gradient at w_G = 0: {g.ravel()}"
    dce = -toy_sim.sigmoid(np.log(112.0) - (-0.4 * 1.3))
    expected_g1 = dce * 0.7
    assert abs(g[0, 0] - expected_g1) < 1e-12, f"d/dw_G1 at 0: {g[0, 0]} vs {expected_g1}"
    assert g[1, 0] == 0.0, f"d/dw_G2 must be 0 when w_G1 = 0, got {g[1, 0]}"
    # Negative weights: the norm uses |w|, so the loss is the same for w_M and -w_M apart from
    # the cross-entropy; compare the weight-decay term directly both ways.
    wd_pos = toy_sim.loss_terms(np.abs(w), 1.0, 2.0, kappa, 0.005, 113)[2]
    wd_neg = toy_sim.loss_terms(w, 1.0, 2.0, kappa, 0.005, 113)[2]
    assert np.allclose(wd_pos, wd_neg), f"|w| symmetry of L_wd: {wd_pos} vs {wd_neg}"


def test_simulation_stays_finite_for_large_kappa():
    # kappa > 2: the weight-decay slope diverges at 0 and w_G chatters around 0 in discrete GD.
    args = table1(kappa=3.0, steps=5000)
    out = toy_sim.simulate(**args, record=True)
    bad = sum(int(np.sum(~np.isfinite(out[k]))) for k in ("train", "test", "w_G", "w_M", "norm"))
    assert bad == 0, f"{bad} non-finite values in a kappa=3 run"


# -----------------------------------------------------------------------------
# Fig. 2 presets


@pytest.fixture(scope="module")
def preset_a():
    """Preset (a) curves, computed once for the tests that compare against it."""
    return run_preset("a")


def test_preset_a_groks_with_visible_delay(preset_a):
    c = preset_a
    t_train = toy_sim.half_peak_step(c["train"])
    t_test = toy_sim.half_peak_step(c["test"])
    # Paper, Fig. 2a: "C_gen only starts to grow significantly by step 2500".
    assert c["w_G"][2000] < 0.05 < 1.0 < c["w_G"][4000], \
        f"w_G at steps 2000/4000 = {c['w_G'][2000]:.3g}/{c['w_G'][4000]:.3g}"
    assert t_test > 10 * t_train and t_test > 2500, f"train halves at {t_train}, test at {t_test}"
    assert c["test"][-1] < 0.5 and c["w_G"][-1] > c["w_M"][-1], \
        f"final test {c['test'][-1]:.3g}, w_G {c['w_G'][-1]:.3g}, w_M {c['w_M'][-1]:.3g}"
    # "Total parameter norm falls due to C_gen's higher efficiency."
    assert c["norm"][-1] < 0.7 * c["norm"].max(), f"norm max {c['norm'].max():.3g} end {c['norm'][-1]:.3g}"


def test_preset_b_never_groks_and_matches_theorem_ratio():
    c = run_preset("b")
    assert toy_sim.half_peak_step(c["test"]) == -1 and c["test"][-1] > 5.0, \
        f"test loss ends at {c['test'][-1]:.3g}, half-peak step {toy_sim.half_peak_step(c['test'])}"
    # Same training logits for both circuits, kappa < 2: Theorem D.4 case 2 predicts
    # w_G/w_M = (P_g/P_m)^(-2 kappa/(2 - kappa)) = 2^-3 at convergence.
    ratio = c["w_G"][-1] / c["w_M"][-1]
    pred = (4.0 / 2.0) ** (-2 * 1.2 / (2 - 1.2))
    assert abs(ratio / pred - 1) < 0.01, f"w_G/w_M = {ratio:.5f} vs Theorem D.4 {pred:.5f}"


def test_preset_c_has_no_delay(preset_a):
    c, a = run_preset("c"), preset_a
    t_train, t_test = toy_sim.half_peak_step(c["train"]), toy_sim.half_peak_step(c["test"])
    t_test_a = toy_sim.half_peak_step(a["test"])
    assert 0 <= t_test <= 2 * t_train, f"(c): train halves at {t_train}, test at {t_test}"
    assert t_test < t_test_a / 10, f"(c) test halves at {t_test}, (a) at {t_test_a}"
    # "C_gen is prioritised at least as much as C_mem throughout training"
    gap = np.min(c["w_G"] - c["w_M"])
    assert gap >= -1e-12, f"min(w_G - w_M) over training = {gap:.3g}"


def test_presets_run_together_equal_presets_run_alone():
    cfgs = [toy_sim.Config(**toy_sim.preset_overrides(n), steps=3000) for n in ("a", "b", "c")]
    together = toy_sim.run_configs(cfgs)
    for i, cfg in enumerate(cfgs):
        alone = toy_sim.run_configs([cfg])
        diff = max(np.max(np.abs(together[k][:, i] - alone[k][:, 0])) for k in ("train", "test", "w_G", "w_M"))
        assert diff < 1e-12, f"preset {i}: vectorised vs alone max diff {diff:.3g}"


def brute_half_peak(curve):
    """First step after the peak where the curve is below half the peak, by a plain loop (-1: never)."""
    peak = max(range(len(curve)), key=lambda t: curve[t])
    return next((t for t in range(peak, len(curve)) if curve[t] < curve[peak] / 2), -1)


def test_preset_summary_states_the_known_outcomes(tmp_path):
    names = ["a", "b", "c"]
    curves = toy_sim.run_configs([toy_sim.Config(**toy_sim.preset_overrides(n)) for n in names])
    lines = toy_sim.preset_summary(names, curves)
    steps = [brute_half_peak(list(curves["test"][:, i])) for i in range(3)]
    # Fig. 2: (a) groks late, (b) never groks, (c) generalises at once.
    assert steps[0] > 2500 and steps[1] == -1 and 0 <= steps[2] < steps[0] / 10, steps
    assert "at step never" in lines[1], lines[1]
    for i in (0, 2):
        assert f"at step {steps[i]:>5d} " in lines[i], (lines[i], steps[i])
    data = {"names": names, "switch_step": [0, 0, 0], **curves}
    path = tmp_path / "curves.csv"
    toy_sim.atomic_write_text(toy_sim.curves_csv(data), str(path))
    back = np.loadtxt(path, delimiter=",", skiprows=1)
    diff = np.max(np.abs(back[:, 2::5] - curves["test"]) / (1e-9 + np.abs(curves["test"])))
    assert diff < 1e-5, f"CSV test-loss columns vs arrays: max relative diff {diff:.3g}"


# -----------------------------------------------------------------------------
# beyond the paper: ungrokking, semi-grokking, phase picture


def test_ungrok_moves_weight_back_to_memorisation():
    c = run_preset("ungrok")
    s = 10000
    assert c["test"][s] < 0.5, f"not grokked before the switch: test {c['test'][s]:.3g}"
    assert c["test"][-1] > 10 * c["test"][s], f"test loss {c['test'][s]:.3g} -> {c['test'][-1]:.3g}"
    assert c["w_M"][-1] > c["w_G"][-1] and c["w_M"][-1] > 3 * c["w_M"][s], \
        f"w_M {c['w_M'][s]:.3g} -> {c['w_M'][-1]:.3g}, w_G -> {c['w_G'][-1]:.3g}"


def test_semi_grokking_settles_in_between_at_theorem_ratio(preset_a):
    c = run_preset("semi")
    a_final = preset_a["test"][-1]
    assert a_final < c["test"][-1] < 0.5 * c["test"].max(), \
        f"semi final test {c['test'][-1]:.3g}, (a) final {a_final:.3g}, semi peak {c['test'].max():.3g}"
    ratio, pred = c["w_M"][-1] / c["w_G"][-1], 0.9 ** 3  # Theorem D.4 case 2, kappa=1.2, q=2
    assert abs(ratio / pred - 1) < 0.01, f"w_M/w_G = {ratio:.4f} vs Theorem D.4 {pred:.4f}"


def test_phase_grid_equals_single_runs():
    args = table1(steps=1500)
    ratios, kappas = np.array([0.5, 1.0, 1.5]), np.array([0.8, 1.2, 2.5])
    w0 = args["w0"][:, 0]
    grid = toy_sim.phase_grid(2.0, ratios, kappas, args["alpha"], w0, args["q"], args["lr"], 1500)
    diff = 0.0
    for i, k in enumerate(kappas):
        for j, r in enumerate(ratios):
            one = toy_sim.simulate(r * 2.0, 2.0, k, args["alpha"], args["w0"], args["q"], args["lr"],
                                   1500, record=False)
            diff = max(diff, abs(one["test"][0] - grid["test"][i, j]))
    assert diff < 1e-12, f"phase grid vs single runs: max diff {diff:.3g}"


# -----------------------------------------------------------------------------
# Theorem D.4


def test_theorem_d4_case2_fitted_exponent_matches_closed_form():
    P = (1.0, 1.25, 1.5, 1.75, 2.0)
    kappas = (0.5, 0.8, 1.0, 1.2, 1.5)
    res = toy_sim.theorem_d4(P, kappas, 2.0, 0.005, 113, 1.0, 20000)
    diff = np.max(np.abs(res["fitted"] - res["predicted"]))
    assert diff < 1e-3, f"fitted {res['fitted']} vs predicted {res['predicted']}: max diff {diff:.3g}"
    assert np.all(res["w"] > 0), "case 2 must give every circuit some weight"


@pytest.mark.parametrize("norm_q", [2.0, 1.5])
def test_theorem_d4_case1_all_weight_on_most_efficient(norm_q):
    P = np.array([1.5, 1.0, 2.0, 1.25])  # the best circuit is not first
    kappas = (norm_q, norm_q + 0.5, 2 * norm_q)
    # 20k steps: the weight drains from the runner-up (P = 1.25) only as fast as the
    # difference of the weight-decay slopes, which is small at kappa = 2q (5k steps is not enough).
    res = toy_sim.theorem_d4(P, kappas, norm_q, 0.005, 113, 1.0, 20000)
    expected = np.tile((P == P.min()).astype(float), (len(kappas), 1))
    share = res["w"] / res["w"].sum(axis=1, keepdims=True)
    diff = np.max(np.abs(share - expected))
    assert diff == 0.0, f"q={norm_q}: shares {share} vs all-on-best; max diff {diff:.3g}"


# -----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("field,value", [
    ("P_g", 0.0), ("P_m", -1.0), ("P_m_after", 0.0), ("lr", 0.0), ("lr", -0.01), ("steps", 0),
    ("steps", -5), ("kappa", 0.0), ("kappa", -1.2), ("q", 2), ("q", 0), ("alpha", -0.1),
    ("thm_P", (1.0, -2.0)), ("thm_kappas", (1.0, 0.0)), ("norm_q", 0.0), ("thm_steps", 0),
    ("phase_n", 1), ("preset", "z"),
])
def test_bad_config_gives_one_line_error_naming_the_field(field, value):
    cfg = toy_sim.Config(**{field: value})
    with pytest.raises(ValueError) as info:
        toy_sim.check_config(cfg)
    msg = str(info.value)
    name = "preset" if field == "preset" else field
    assert name in msg and "\n" not in msg, f"{field}={value!r}: message {msg!r}"


def test_bad_simulate_args_raise():
    args = table1(steps=10)
    for field, value in (("P_g", -1.0), ("kappa", 0.0), ("q", 2), ("lr", 0.0), ("steps", 0)):
        with pytest.raises(ValueError, match=field):
            toy_sim.simulate(**{**args, field: value})


@pytest.mark.parametrize("flags,word", [(["--kappa", "0"], "kappa"), (["--q", "2"], "q"),
                                         (["--P-g", "-1"], "P_g"), (["--P_g", "-1"], "P_g"),
                                         (["--lr", "abc"], "lr"), (["--no-such-flag"], "unrecognized"),
                                         (["--lr", "10"], "went non-finite at step"),
                                         (["--phase", "--lr", "10", "--phase-n", "4"], "went non-finite"),
                                         (["--theorem", "--thm-lr", "1e9"], "did not converge")])
def test_command_line_bad_input_prints_error_and_exits_nonzero(flags, word):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "toy_sim.py"), *flags],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    err = p.stderr.strip()
    assert p.returncode == 2 and err.startswith("error:") and word in err and "Traceback" not in err \
        and len(err.splitlines()) == 1, f"rc={p.returncode} stderr={err!r}"

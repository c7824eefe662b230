"""Tests for report.py's checks: each one on synthetic data that holds, that fails, and that is
unconverged or has too few seeds (inconclusive), against closed forms where there is one.

Run: python -m pytest -q tests/test_report.py
"""
import os

import numpy as np
import pytest

import report
import toy_sim

SIZES = np.array([50, 70, 100, 130, 170, 230, 300])
SHARP = np.array([0.02, 0.03, 0.05, 0.6, 0.97, 1.0, 1.0])  # jumps between 100 and 170
DRIFT = np.linspace(0.25, 0.85, len(SIZES))  # never near zero, never near one: no transition


def ungrok_table(curves, seeds=(0, 1, 2), converged=True):
    """A run_table-like dict from {wd: (D values, test accuracies)}, one curve per seed (small per-seed noise)."""
    cols = {k: [] for k in ("D", "wd", "seed", "test_acc", "converged")}
    for s in seeds:
        for w, (xs, ys) in curves.items():
            for i, (x, y) in enumerate(zip(xs, ys)):
                cols["D"].append(x), cols["wd"].append(w), cols["seed"].append(s)
                cols["test_acc"].append(min(1.0, max(0.0, y + 0.005 * (s - 1))))
                # converged=False: the middle run of every curve has not converged
                cols["converged"].append(converged or i != len(xs) // 2)
    return {k: np.array(v) for k, v in cols.items()}


def test_crossing_matches_closed_form():
    # accuracy linear in log D from 0 at D=100 to 1 at D=10000 crosses 0.5 at D=1000 exactly
    D = np.array([100.0, 300.0, 3000.0, 10000.0])
    acc = np.log(D / 100) / np.log(100)
    got = report.crossing(D, acc, 0.5)
    assert abs(got - 1000) < 1e-6, f"crossing {got}, closed form 1000"
    assert np.isnan(report.crossing(D, np.zeros(4), 0.5))


def test_p2_held_not_held_inconclusive():
    held = report.check_p2(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}))
    drift = report.check_p2(ungrok_table({1.0: (SIZES, DRIFT), 3.0: (SIZES, DRIFT)}))
    unconverged = report.check_p2(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}, converged=False))
    two_seeds = report.check_p2(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}, seeds=(0, 1)))
    assert held["outcome"] == "held", held
    assert drift["outcome"] == "not held", drift
    assert unconverged["outcome"] == "inconclusive", unconverged
    assert two_seeds["outcome"] == "inconclusive", two_seeds
    # the width of SHARP: smallest D' above 0.9 (170) over largest below 0.2 (100)
    assert all(abs(r["width"] - 1.7) < 1e-12 for r in held["rows"]), held["rows"]


def test_p3_held_not_held_inconclusive():
    same = report.check_p3(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}))
    shifted = report.check_p3(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES * 3, SHARP)}))
    unconverged = report.check_p3(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}, converged=False))
    one_wd = report.check_p3(ungrok_table({1.0: (SIZES, SHARP)}))
    assert same["outcome"] == "held" and max(abs(x - 1) for x in same["spreads"].values()) < 1e-9, same
    # shifting every D' by 3x shifts the interpolated crossing by exactly 3x
    assert shifted["outcome"] == "not held" and all(abs(x - 3) < 1e-9 for x in shifted["spreads"].values()), shifted
    assert unconverged["outcome"] == "inconclusive" and not unconverged["spreads"], unconverged
    assert one_wd["outcome"] == "inconclusive", one_wd


def test_dcrit_estimates_per_seed_and_unconverged_curves_give_none():
    D = np.array([100, 200, 400, 800] * 2)
    acc = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    t = dict(D=D, test_acc=acc, seed=np.repeat([0, 1], 4), wd=np.ones(8), converged=np.ones(8, bool))
    (w, level, n, xs, ends), = report.dcrit_estimates(t, levels=(0.5,))
    want = [np.sqrt(200 * 400), np.sqrt(400 * 800)]  # half-way on log D'
    assert n == 2 and np.allclose(xs, want) and np.allclose(ends, want), (xs, want)
    t["converged"][5] = False  # seed 1 has an unconverged run: no converged estimate from it
    (_, _, n, xs, ends), = report.dcrit_estimates(t, levels=(0.5,))
    assert n == 2 and np.allclose(xs, want[:1]) and np.allclose(ends, want), (xs, ends)


def grokking_curves(t_train, t_test, n):
    """n runs whose train accuracy reaches 1 at t_train and test accuracy at t_test."""
    epoch = np.arange(0, 6001, 50)
    train = np.where(epoch >= t_train, 1.0, 0.3)[None].repeat(n, 0)
    test = np.where(epoch >= t_test, 1.0, 0.05)[None].repeat(n, 0)
    return epoch, train, test


def test_grokking_held_not_held_inconclusive():
    e, tr, te = grokking_curves(100, 2000, 4)
    held = report.check_grokking(e, tr, te, np.arange(4))
    assert held["outcome"] == "held" and np.allclose(held["ratio"], 20.0), held
    e, tr, te = grokking_curves(100, 150, 4)
    assert report.check_grokking(e, tr, te, np.arange(4))["outcome"] == "not held"
    e, tr, te = grokking_curves(100, 2000, 4)
    two_seeds = report.check_grokking(e, tr, te, np.array([0, 0, 1, 1]))
    assert two_seeds["outcome"] == "inconclusive", two_seeds
    never = report.check_grokking(e, tr, np.zeros_like(te), np.arange(4))
    assert never["outcome"] == "inconclusive", never


EPOCH = np.arange(0, 6001, 50)
SEMI = np.where(EPOCH < 1000, 0.05, np.minimum(0.5, 0.05 + 0.45 * (EPOCH - 1000) / 1000))  # delayed, to 0.5
GROK = np.where(EPOCH < 1000, 0.05, np.minimum(1.0, 0.05 + (EPOCH - 1000) / 1000))  # delayed, to 1
NONE = np.full(len(EPOCH), 0.03)
AT_ONCE = np.full(len(EPOCH), 0.5)  # middling from the start: no transition


def semi_rows(tests, converged):
    """semi_outcomes of runs that fit their training set at epoch 100 and follow the given test curves."""
    train = np.where(EPOCH >= 100, 1.0, 0.5)[None].repeat(len(tests), 0)
    return report.semi_outcomes(EPOCH, train, np.stack(tests), np.array(converged))


def test_semi_outcomes_by_hand():
    rows = semi_rows([SEMI, GROK, NONE, AT_ONCE, SEMI, NONE], [True, True, True, True, False, False])
    assert [r["outcome"] for r in rows] == ["semi-grokked", "grokked", "none", "none", "transient", "unsettled"]
    assert rows[0]["t_fit"] == 100 and rows[0]["t_rise"] == 1500, rows[0]  # half-way (0.275) at epoch 1500


def test_p4_held_not_held_inconclusive():
    seeds = np.arange(16)
    held = report.check_p4(semi_rows([SEMI] * 2 + [GROK] * 14, [True] * 16), seeds)
    none = report.check_p4(semi_rows([GROK] * 8 + [NONE] * 8, [True] * 16), seeds)
    one = report.check_p4(semi_rows([SEMI] + [GROK] * 15, [True] * 16), seeds)  # a single network
    unsettled = report.check_p4(semi_rows([SEMI] * 2 + [GROK] * 14, [False] * 2 + [True] * 14), seeds)
    few = report.check_p4(semi_rows([SEMI] * 2 + [GROK] * 6, [True] * 8), seeds[:8])
    assert held["outcome"] == "held", held
    assert none["outcome"] == "not held", none
    assert one["outcome"] == "inconclusive", one
    assert unsettled["outcome"] == "inconclusive" and unsettled["counts"]["transient"] == 2, unsettled
    assert few["outcome"] == "inconclusive", few


def efficiency(c_mem, c_gen, seeds=(0, 1, 2), mem_converged=True, mem_fit=1.0):
    """An efficiency-table-like dict with P = 4 o^0.5 D^c (1% noise): C_mem at D 200..800, C_gen at 800..1600."""
    rng = np.random.default_rng(0)
    cols = {k: [] for k in ("n_train", "seed", "random_labels", "init_from", "converged", "train_acc", "test_acc",
                            "trig_frac", "o_m_train", "o_t", "param_norm")}
    for mem, c, Ds in ((True, c_mem, [200, 400, 800]), (False, c_gen, [800, 1200, 1600])):
        for s in seeds:
            for D in Ds:
                for logit in (5.0, 12.0):  # two weight decays: two logit levels per D
                    o = logit * (1 + 0.05 * s)
                    cols["n_train"].append(D), cols["seed"].append(s), cols["random_labels"].append(mem)
                    cols["init_from"].append(False), cols["converged"].append(mem_converged or not mem)
                    cols["train_acc"].append(mem_fit if mem else 1.0), cols["test_acc"].append(0.02 if mem else 1.0)
                    cols["trig_frac"].append(0.01 if mem else 0.99)
                    cols["o_m_train"].append(o if mem else 0.1), cols["o_t"].append(0.0 if mem else o)
                    cols["param_norm"].append(4.0 * o ** 0.5 * D ** c * np.exp(rng.normal(0, 0.01)))
    return {k: np.array(v) for k, v in cols.items()}


def test_bootstrap_fit_recovers_the_exponent():
    rows = report.p1_rows(efficiency(0.3, 0.0))
    c, lo, hi, n = report.bootstrap_fit(rows["mem"])
    assert n == 18 and abs(c - 0.3) < 0.02 and lo <= 0.3 <= hi + 0.02, (c, lo, hi)


def test_p1_held_not_held_inconclusive():
    assert report.check_p1(report.p1_rows(efficiency(0.3, 0.0)))["outcome"] == "held"
    assert report.check_p1(report.p1_rows(efficiency(0.3, 0.4)))["outcome"] == "not held"  # C_gen's norm grows
    assert report.check_p1(report.p1_rows(efficiency(-0.3, 0.0)))["outcome"] == "not held"  # C_mem's falls
    unconverged = report.check_p1(report.p1_rows(efficiency(0.3, 0.0, mem_converged=False)))
    unfit = report.check_p1(report.p1_rows(efficiency(0.3, 0.0, mem_fit=0.6)))  # random labels not fitted
    two_seeds = report.check_p1(report.p1_rows(efficiency(0.3, 0.0, seeds=(0, 1))))
    assert unconverged["outcome"] == "inconclusive", unconverged
    assert unfit["outcome"] == "inconclusive", unfit
    assert two_seeds["outcome"] == "inconclusive", two_seeds


def test_spearman_matches_closed_form():
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    x, y = np.array([1.0, 2, 3, 4, 5]), np.array([2.0, 1, 4, 3, 5])
    d = np.array([1, -1, 1, -1, 0])
    want = 1 - 6 * (d ** 2).sum() / (5 * 24)
    assert abs(report.spearman(x, y) - want) < 1e-12, (report.spearman(x, y), want)


def fig10_table(slope, converged=True):
    """Ungrokking runs whose ratio o_t/o_m grows with D' as D'^slope, 3 seeds x 2 weight decays."""
    D = np.tile(SIZES, 6).astype(float)
    o_m = np.ones(len(D))
    return dict(n_train=D, seed=np.repeat([0, 1, 2], 14), wd=np.tile(np.repeat([1.0, 3.0], 7), 3),
                o_t=D ** slope, o_m_train=o_m, converged=np.full(len(D), converged))


def test_fig10_held_not_held_inconclusive():
    assert report.check_fig10(fig10_table(1.0))["outcome"] == "held"
    assert report.check_fig10(fig10_table(-1.0))["outcome"] == "not held"
    assert report.check_fig10(fig10_table(1.0, converged=False))["outcome"] == "inconclusive"


def test_toy_held_and_not_held(tmp_path):
    # The toy model is a deterministic simulation: its check can hold or fail, never lack seeds.
    csv = tmp_path / "fig2.csv"
    assert toy_sim.main(["--out", str(tmp_path / "fig2.png"), "--csv"]) in (None, 0)
    assert report.check_toy(str(csv))["outcome"] == "held"
    # The same curves with preset (b) replaced by (a)'s: (b) now groks, so the claim must fail.
    text = csv.read_text().splitlines()
    head = text[0].split(",")
    rows = [line.split(",") for line in text[1:]]
    for k in ("train", "test"):
        a, b = head.index(f"a_{k}"), head.index(f"b_{k}")
        for r in rows:
            r[b] = r[a]
    csv.write_text("\n".join([",".join(head)] + [",".join(r) for r in rows]) + "\n")
    assert report.check_toy(str(csv))["outcome"] == "not held"


@pytest.mark.parametrize("held, enough, converged, failed, want", [
    (True, True, True, False, "held"), (False, True, True, True, "not held"),
    (False, True, True, False, "inconclusive"), (True, False, True, False, "inconclusive"),
    (True, True, False, False, "inconclusive")])
def test_outcome_never_says_held_without_its_requirements(held, enough, converged, failed, want):
    assert report.outcome(enough, converged, held, failed) == want


def test_where_prints_layout_paths_and_refuses_unknown_names(capsys):
    report.main(["--where", "ungrok"])
    assert capsys.readouterr().out.strip() == report.layout()["ungrok"]
    with pytest.raises(SystemExit) as e:
        report.main(["--where", "nowhere"])
    assert e.value.code == 2 and "allowed:" in capsys.readouterr().err


def test_movement_over_the_last_half_matches_closed_form():
    # test accuracy rising linearly 0 -> 1 over epochs 0..1000 moves 0.5 over epochs 500..1000;
    # a norm of 10 - e/200 moves from 7.5 to 5.0: 2.5 / 7.5 of its largest value there
    e = np.arange(0, 1001, 100)
    run = dict(hist=dict(epoch=e, test_acc=(e / 1000)[None], param_norm=(10 - e / 200)[None]),
               cfg=dict(converge_acc=0.005, converge_norm=0.005))
    acc, norm = report.movement(run)
    assert abs(acc[0] - 0.5) < 1e-12 and abs(norm[0] - 2.5 / 7.5) < 1e-12, (acc, norm)
    assert "median 0.500" in report.movement_line(run)


def test_readme_results_table_is_results_md_line_for_line():
    # The README's table of results is copied from the saved results.md of the quick profile: the
    # same lines, so that no number in it is typed by hand.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md")).read()
    saved = open(os.path.join(root, "figures", "results_quick.md")).read()
    verdicts = (" | held |", " | not held |", " | inconclusive |", " | estimate |")
    table = lambda text: [line for line in text.splitlines()
                          if line.startswith("| claim |") or any(v in line for v in verdicts)]
    got = table(readme.split("### Results of the quick profile")[1].split("What the quick profile shows")[0])
    want = table(saved.split("## Summary")[1])
    assert got and got == want, "\n".join(l for l in got if l not in want) or "README table is empty"

"""Tests for report.py's checks: each one on synthetic data that holds, that fails, that is censored,
that does not span the transition, and that is unconverged or has too few seeds (inconclusive),
against closed forms where there is one; and the false-convergence measurement on small real runs.

Run: python -m pytest -q tests/test_report.py
"""
import os

import numpy as np
import pytest

import analysis
import grok
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


def test_bracket_is_bounded_where_one_side_is_unseen():
    D = np.array([100, 200, 400, 800])
    conv = np.ones(4, bool)
    assert report.bracket(D, [0.0, 0.1, 0.9, 1.0], conv, 0.5) == (200, 400)
    assert report.bracket(D, [0.9, 0.9, 0.9, 1.0], conv, 0.5) == (0.0, 100)  # below the grid: "below 100"
    assert report.bracket(D, [0.0, 0.1, 0.2, 0.3], conv, 0.5) == (800, np.inf)  # above it
    # An unconverged run neither narrows nor blocks: the bracket comes from the converged ones.
    assert report.bracket(D, [0.0, 0.1, 0.9, 1.0], np.array([True, False, False, True]), 0.5) == (100, 800)
    assert [report.bracket_text(*b) for b in ((200, 400), (0, 100), (800, np.inf), (0, np.inf))] == \
        ["200-400", "below 100", "above 800", "not seen"]


WIDE = np.array([0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.95])  # falls over 50..300: a factor 6, not a sharp step


def test_p2_held_not_held_inconclusive():
    sharp = {1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}
    held = report.check_p2(ungrok_table(sharp))
    wide = report.check_p2(ungrok_table({1.0: (SIZES, WIDE), 3.0: (SIZES, WIDE)}))
    assert held["outcome"] == "held", held
    # the width of SHARP: smallest D' above 0.9 (170) over largest below 0.2 (100)
    assert all(abs(r["width"] - 1.7) < 1e-12 and r["status"] == "pass" for r in held["rows"]), held["rows"]
    assert wide["outcome"] == "not held" and all(abs(r["width"] - 6) < 1e-12 for r in wide["rows"]), wide
    # A grid that misses the fall (DRIFT never goes below 0.2) decides nothing: inconclusive, not "not held".
    drift = report.check_p2(ungrok_table({1.0: (SIZES, DRIFT), 3.0: (SIZES, DRIFT)}))
    assert drift["outcome"] == "inconclusive" and {r["status"] for r in drift["rows"]} == {"unspanned"}, drift
    # The middle run of every curve (D'=130, inside SHARP's bracket) unconverged: it neither blocks nor narrows.
    middle = report.check_p2(ungrok_table(sharp, converged=False))
    assert middle["outcome"] == "held" and all(abs(r["width"] - 1.7) < 1e-12 for r in middle["rows"]), middle
    # Too wide, but with unconverged runs inside the bracket that could still narrow it: open, inconclusive.
    open_ = report.check_p2(ungrok_table({1.0: (SIZES, WIDE), 3.0: (SIZES, WIDE)}, converged=False))
    assert open_["outcome"] == "inconclusive" and {r["status"] for r in open_["rows"]} == {"open"}, open_
    assert report.check_p2(ungrok_table(sharp, seeds=(0, 1)))["outcome"] == "inconclusive"
    # Seeds are counted over weight decays: three networks decided at wd 1, none at wd 3 (DRIFT
    # misses the fall there), is three independent networks, held; the count per weight decay is shown.
    one_wd = report.check_p2(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, DRIFT)}))
    assert one_wd["outcome"] == "held" and "3 with a decided curve; per weight decay wd 1: 3, wd 3: 0" in \
        one_wd["seeds"], one_wd
    # ... and a decided curve that fails at one weight decay still counts against: 3 of 6 pass,
    # neither every one nor fewer than half.
    mixed = report.check_p2(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, WIDE)}))
    assert mixed["outcome"] == "inconclusive" and "3 of 6 decided curves pass" in mixed["value"], mixed
    assert report.check_p2(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, DRIFT)}, seeds=(0, 1)))["outcome"] == \
        "inconclusive"


def test_p3_held_not_held_censored_inconclusive():
    same = report.check_p3(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}))
    # SHARP crosses 0.5 between 100 and 130: the widest spread two such brackets allow is 1.3.
    assert same["outcome"] == "held" and all(abs(r["wide"] - 1.3) < 1e-12 for r in same["rows"]), same
    shifted = report.check_p3(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES * 3, SHARP)}))
    # brackets 100-130 and 300-390: at least 300 / 130 apart
    assert shifted["outcome"] == "not held" and all(abs(r["narrow"] - 300 / 130) < 1e-12 for r in shifted["rows"])
    # Censored: at wd 3 every converged D' is above 0.5, so its crossing is "below 50"; that still
    # decides (at least 100 / 50 = 2 apart), where an interpolated crossing would drop the network.
    above = np.full(len(SIZES), 0.97)
    censored = report.check_p3(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, above)}))
    assert censored["outcome"] == "not held" and all(r["narrow"] == 2.0 for r in censored["rows"]), censored
    # D'=130 unconverged: brackets 100-170, spread between 1 and 1.7: undecided.
    unconverged = report.check_p3(ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}, converged=False))
    assert unconverged["outcome"] == "inconclusive" and {r["status"] for r in unconverged["rows"]} == {"undecided"}
    assert report.check_p3(ungrok_table({1.0: (SIZES, SHARP)}))["outcome"] == "inconclusive"  # one weight decay


def test_dcrit_brackets_per_seed_with_bounds():
    D = np.array([100, 200, 400, 800] * 2)
    acc = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    t = dict(D=D, test_acc=acc, seed=np.repeat([0, 1], 4), wd=np.ones(8), converged=np.ones(8, bool))
    (w, level, b, end), = report.dcrit_brackets(t, levels=(0.5,))
    assert b == {0: (200, 400), 1: (0.0, 100)} and end == b, b  # seed 1's D_crit lies below the grid: a bound, kept
    t["converged"][2] = False  # seed 0's run at 400 unconverged: its bracket widens to 200-800
    (_, _, b, end), = report.dcrit_brackets(t, levels=(0.5,))
    assert b[0] == (200, 800) and end[0] == (200, 400), (b, end)  # the last state, shown, keeps 400


def test_brackets_read_each_level_where_the_run_is_settled():
    # report.settled: a bracket at level L counts the runs settled at L (grok.settled_at_levels), not
    # the runs that passed at every level at once. SHARP's D'=130 runs sit at 0.6.
    t = ungrok_table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)})
    mid = t["D"] == 130
    t["converged"][mid] = False  # they fail the test read at all four levels ...
    t["settled"] = np.ones((len(t["D"]), 4), bool)
    t["settled"][mid, report.VERDICT_LEVELS.index(0.7)] = False  # ... only for wandering across 0.7
    p3 = report.check_p3(t)  # at 0.5 they count: brackets 100-130 as if converged, widest spread 1.3
    assert p3["outcome"] == "held" and all(abs(r["wide"] - 1.3) < 1e-12 for r in p3["rows"]), p3
    assert p3["n_converged"] == len(t["D"]), p3
    b07 = report.dcrit_brackets(t, levels=(0.7,))  # at 0.7 they do not: 100-170, not 130-170
    assert all(b == (100, 170) for _, _, bb, _ in b07 for b in bb.values()), b07
    t["settled"][mid, report.VERDICT_LEVELS.index(0.5)] = False  # unsettled at 0.5 too: 100-170, spread up to 1.7
    assert report.check_p3(t)["outcome"] == "inconclusive"
    # P2 reads 0.2 for the low side and 0.9 for the high side; settled at both, the 0.6 runs cannot narrow
    # the bracket 100-170, so a curve too wide for max_width is decided (fail) rather than open.
    p2 = report.check_p2(t, max_width=1.5)
    assert {r["status"] for r in p2["rows"]} == {"fail"}, p2["rows"]
    t["settled"][mid, report.VERDICT_LEVELS.index(0.9)] = False  # unsettled at 0.9: it might still end above
    assert {r["status"] for r in report.check_p2(t, max_width=1.5)["rows"]} == {"open"}
    del t["settled"]  # without it, every level reads `converged`
    assert report.check_p3(t)["outcome"] == "inconclusive"


def test_false_convergence_follows_each_run_from_where_it_settled_at_each_level():
    # With --converge-levels and a saved test (move_loss, move_norm), false convergence follows each
    # (run, level) from the first record the run was settled at that level, e, to 2e.
    e = np.arange(0, 4001, 100)
    T = len(e)
    wander = 0.69 + 0.015 * np.sin(e / 150)  # across 0.7 throughout: never settled at 0.7
    fall = np.where(e < 1500, 0.6, 0.4)  # settled at every level by 1000, then falls through 0.5 by 2000
    acc = np.stack([wander, fall])
    zeros = np.where(e >= 1000, 0.0, np.nan)[None].repeat(2, 0)  # the loss and norm conditions pass once spanned
    h = dict(epoch=e, test_acc=acc, test_loss=np.full((2, T), 0.1), param_norm=np.full((2, T), 20.0),
             converged_epoch=np.array([-1, 1000]),
             stop_epoch=np.full(2, -1), stop_reason=np.array(["", ""]), move_loss=zeros, move_norm=zeros,
             move_acc=zeros, move_levels=zeros)
    cfg = dict(converge_train_on=True, converge_window=1000, converge_acc=0.005, converge_loss=0.05,
               converge_norm=0.005, converge_levels="0.2,0.5,0.7,0.9")
    f = report.false_convergence(dict(hist=h, cfg=cfg))
    # By hand: run 0 settles at 0.2, 0.5 and 0.9 at epoch 1000 (0.7 never); run 1 at all four at 1000.
    # Only run 1 at 0.5 crosses its level by 2000 (0.6 -> 0.4); accuracy moved 0.2 for each of run 1's.
    want_acc = [abs(wander[20] - wander[10])] * 3 + [0.2] * 4
    assert f["per_level"] and f["runs"].tolist() == [0, 0, 0, 1, 1, 1, 1] and f["crossed"] == 1, f
    assert np.allclose(f["acc"], want_acc) and not f["within"], f
    assert "7 (run, level) pairs, 2 runs" in report.false_convergence_line(dict(hist=h, cfg=cfg))
    h["test_acc"] = np.stack([wander, np.full(T, 0.6)])  # run 1 stays: nothing crosses
    assert report.false_convergence(dict(hist=h, cfg=cfg))["within"]
    # A side claims no still norm (grok.level_conditions): a norm that moves 0.05 (log) per window
    # after the run settled is shown, and does not count against the test; without levels it does.
    h["param_norm"] = np.stack([np.full(T, 20.0), 20.0 * np.exp(-0.05 * e / 1000)])
    f = report.false_convergence(dict(hist=h, cfg=cfg))
    assert f["within"] and np.isclose(f["norm_per_window"].max(), 0.05), f
    assert "a side reads no norm" in report.false_convergence_line(dict(hist=h, cfg=cfg))
    assert not report.false_convergence(dict(hist=h, cfg=dict(cfg, converge_levels="")))["within"]


def test_unsettled_line_names_the_conditions_a_run_fails_at_each_level():
    # Three runs at their last record (epoch 4000, window 1000): one settled everywhere; one flat at
    # 0.6 whose loss rises 0.1 (log) per window: its accuracy would fall, so it is unsettled at 0.2
    # and 0.5 by the loss and keeps its sides of 0.7 and 0.9; one that wanders across 0.7 with a
    # moving norm: unsettled at 0.7 by its side, and nowhere by its norm, which a side does not
    # read. Worked out by hand from those three.
    e = np.arange(0, 4001, 100)
    T = len(e)
    acc = np.stack([np.full(T, 0.6), np.full(T, 0.6), 0.69 + 0.015 * np.sin(e / 150)])
    loss = np.stack([np.full(T, 0.5), 0.5 * np.exp(0.1 * e / 1000) - 0.01, np.full(T, 0.5)])  # log(loss + 0.01)
    norm = np.stack([np.full(T, 20.0), np.full(T, 20.0), 20.0 * np.exp(-0.01 * e / 1000)])
    move = lambda *last: np.repeat(np.array(last, float)[:, None], T, axis=1)  # [3, T], the same at every record
    h = dict(epoch=e, test_acc=acc, test_loss=loss, param_norm=norm, converged_epoch=np.full(3, -1),
             stop_epoch=np.full(3, -1), stop_reason=np.array([""] * 3), move_acc=move(0, 0, 0.02),
             move_loss=move(0.0, 0.075, 0.0), move_norm=move(0.0, 0.0, 0.0075), move_levels=move(0, 0, 1))
    cfg = dict(converge_train_on=True, converge_window=1000, converge_acc=0.005, converge_loss=0.05,
               converge_norm=0.005, converge_levels="0.2,0.5,0.7,0.9")
    line = report.unsettled_line(dict(hist=h, cfg=cfg))
    want = ("of 3, with the conditions they fail (a run can fail several): 0.2: 1 (side or reach 0, loss 1); "
            "0.5: 1 (side or reach 0, loss 1); 0.7: 1 (side or reach 1, loss 0); 0.9: 0 (side or reach 0, loss 0).")
    assert line.endswith(want), line
    assert report.unsettled_line(dict(hist=h, cfg=dict(cfg, converge_levels=""))) is None


def grokking_curves(t_train, t_test, n):
    """n runs whose train accuracy reaches 1 at t_train and test accuracy at t_test."""
    epoch = np.arange(0, 6001, 50)
    train = np.where(epoch >= t_train, 1.0, 0.3)[None].repeat(n, 0)
    test = np.where(epoch >= t_test, 1.0, 0.05)[None].repeat(n, 0)
    return epoch, train, test


def test_grokking_held_not_held_censored_inconclusive():
    e, tr, te = grokking_curves(100, 2000, 4)
    held = report.check_grokking(e, tr, te, np.arange(4))
    assert held["outcome"] == "held" and np.allclose(held["ratio"], 20.0), held
    e, tr, te = grokking_curves(100, 150, 4)
    assert report.check_grokking(e, tr, te, np.arange(4))["outcome"] == "not held"
    e, tr, te = grokking_curves(100, 2000, 4)
    two_seeds = report.check_grokking(e, tr, te, np.array([0, 0, 1, 1]))
    assert two_seeds["outcome"] == "inconclusive", two_seeds
    # Runs that never generalise within the budget are bounds (> 6000 / 100 = 60), never dropped;
    # with three that grokked at a ratio of 20, the median is at least 20 + (60-20)/2 = 40.
    te2 = te.copy()
    te2[3] = 0.05
    cens = report.check_grokking(e, np.vstack([tr, tr[:1]]), np.vstack([te, te2[3:]]), np.arange(5))
    assert cens["outcome"] == "held" and cens["censored"].sum() == 1 and np.sort(cens["ratio"])[-1] == 60.0, cens
    # ... but bounds alone are not grokking: no network generalised, nothing to judge.
    assert report.check_grokking(e, tr, np.zeros_like(te), np.arange(4))["outcome"] == "inconclusive"
    # A run that already generalises when it fits (test acc 0.8 at train fit) is not grokking's case.
    early = np.where(e >= 100, np.where(e >= 2000, 1.0, 0.8), 0.05)[None].repeat(4, 0)
    assert report.check_grokking(e, tr, early, np.arange(4))["outcome"] == "inconclusive"


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


def test_p4_runs_needed_is_the_least_n_at_the_papers_rate():
    n = report.p4_runs_needed()
    assert n == 99 and 0.97 ** n <= 0.05 < 0.97 ** (n - 1), n


def test_p4_held_not_held_inconclusive():
    seeds = np.arange(16)
    held = report.check_p4(semi_rows([SEMI] * 2 + [GROK] * 14, [True] * 16), seeds)
    one_seed = report.check_p4(semi_rows([SEMI] * 2 + [GROK] * 14, [True] * 16), np.r_[0, 0, seeds[2:]])
    none16 = report.check_p4(semi_rows([GROK] * 8 + [NONE] * 8, [True] * 16), seeds)
    none99 = report.check_p4(semi_rows([GROK] * 50 + [NONE] * 49, [True] * 99), np.arange(99) % 10)
    unsettled = report.check_p4(semi_rows([SEMI] * 2 + [GROK] * 14, [False] * 2 + [True] * 14), seeds)
    assert held["outcome"] == "held", held
    assert one_seed["outcome"] == "inconclusive", one_seed  # two runs, one network
    assert none16["outcome"] == "inconclusive" and "would need 99" in none16["value"], none16
    assert none99["outcome"] == "not held", none99
    assert unsettled["outcome"] == "inconclusive" and unsettled["counts"]["transient"] == 2, unsettled


def test_semi_outcomes_time_at_the_final_level():
    rows = semi_rows([SEMI, NONE], [True, True])
    # SEMI reaches within 0.05 of its final 0.5 at epoch 1900 (0.05 + 0.45 * 0.9 = 0.455) and sits there
    assert rows[0]["sat"] == 6000 - 1900 and rows[1]["sat"] == 6000, rows


def efficiency(c_mem, c_gen, seeds=(0, 1, 2, 3, 4), mem_converged=True, mem_fit=1.0):
    """An efficiency-table-like dict with P = 4 o^0.5 D^c (1% noise): C_mem at D 200..800, C_gen at 800..1600."""
    rng = np.random.default_rng(0)
    cols = {k: [] for k in ("n_train", "seed", "random_labels", "init_from", "converged", "train_acc", "test_acc",
                            "trig_frac", "trig_frac_centred", "o_m_train", "o_t", "param_norm")}
    for mem, c, Ds in ((True, c_mem, [200, 400, 800]), (False, c_gen, [800, 1200, 1600])):
        for s in seeds:
            for D in Ds:
                for logit in (5.0, 12.0):  # two weight decays: two logit levels per D
                    o = logit * (1 + 0.05 * s)
                    cols["n_train"].append(D), cols["seed"].append(s), cols["random_labels"].append(mem)
                    cols["init_from"].append(False), cols["converged"].append(mem_converged or not mem)
                    cols["train_acc"].append(mem_fit if mem else 1.0), cols["test_acc"].append(0.02 if mem else 1.0)
                    cols["trig_frac"].append(0.01 if mem else 0.99), cols["trig_frac_centred"].append(0.01 if mem else 0.98)
                    cols["o_m_train"].append(o if mem else 0.1), cols["o_t"].append(0.0 if mem else o)
                    cols["param_norm"].append(4.0 * o ** 0.5 * D ** c * np.exp(rng.normal(0, 0.01)))
    return {k: np.array(v) for k, v in cols.items()}


def test_per_seed_fit_recovers_the_exponent_with_a_t_interval():
    rows = report.p1_rows(efficiency(0.3, 0.0))
    c, lo, hi, n_s, n, b = report.per_seed_fit(rows["mem"])
    assert n_s == 5 and n == 30 and abs(c - 0.3) < 0.02 and lo <= 0.3 <= hi and abs(b - 0.5) < 0.05, (c, lo, hi, b)
    # By hand, as one least-squares problem: log P on an intercept per (seed, D) group and log o
    # gives b (the within-group slope); each seed's c is the slope of its groups' intercepts over
    # log D; then mean +- t_{0.95, 4} sd / sqrt(5).
    m = rows["mem"]
    groups = sorted(set(zip(m["seed"].tolist(), m["D"].tolist())))
    X = np.stack([((m["seed"] == g[0]) & (m["D"] == g[1])).astype(float) for g in groups] + [np.log(m["logit"])], 1)
    coef = np.linalg.lstsq(X, np.log(m["norm"]), rcond=None)[0]  # [groups + 1]
    assert abs(coef[-1] - b) < 1e-10, (coef[-1], b)
    cs = []
    for s in range(5):
        pts = [(np.log(g[1]), coef[i]) for i, g in enumerate(groups) if g[0] == s]
        A = np.stack([np.ones(len(pts)), [p[0] for p in pts]], 1)
        cs.append(np.linalg.lstsq(A, np.array([p[1] for p in pts]), rcond=None)[0][1])
    half = 2.132 * np.std(cs, ddof=1) / np.sqrt(5)
    err = max(abs(lo - (np.mean(cs) - half)), abs(hi - (np.mean(cs) + half)))
    assert err < 1e-10, f"the interval differs from the one by hand by {err:.2e} ({lo}, {hi}, {cs})"


def test_per_seed_fit_needs_one_run_per_size_and_seed():
    # b comes from every stripe, so a seed with a single run at each of two sizes still gives its
    # c_s; a seed seen at one size only does not.
    m = report.p1_rows(efficiency(0.3, 0.0))["mem"]
    keep = ~((m["seed"] == 0) & (m["logit"] > 8)) & ~((m["seed"] == 1) & (m["D"] != 200))
    cs, n, b = report.per_seed_cs({k: v[keep] for k, v in m.items()})
    assert len(cs) == 4 and abs(cs - 0.3).max() < 0.03 and abs(b - 0.5) < 0.05, (cs, b)


def test_p1_held_not_held_inconclusive():
    assert report.check_p1(report.p1_rows(efficiency(0.3, 0.0)))["outcome"] == "held"
    assert report.check_p1(report.p1_rows(efficiency(0.3, 0.4)))["outcome"] == "not held"  # C_gen's norm grows
    assert report.check_p1(report.p1_rows(efficiency(-0.3, 0.0)))["outcome"] == "not held"  # C_mem's falls
    unconverged = report.check_p1(report.p1_rows(efficiency(0.3, 0.0, mem_converged=False)))
    unfit = report.check_p1(report.p1_rows(efficiency(0.3, 0.0, mem_fit=0.6)))  # random labels not fitted
    three_seeds = report.check_p1(report.p1_rows(efficiency(0.3, 0.0, seeds=(0, 1, 2))))
    assert unconverged["outcome"] == "inconclusive", unconverged
    assert unfit["outcome"] == "inconclusive", unfit
    assert three_seeds["outcome"] == "inconclusive", three_seeds
    assert "centred reading" in report.check_p1(report.p1_rows(efficiency(0.3, 0.0)))["value"]


def test_seeds_to_train_matches_brute_force():
    # Every outcome of N seeds x k runs enumerated: the chance that >= want seeds have >= need
    # qualifying runs, against the binomial sums; N is the first seed count that reaches prob.
    import itertools
    q, k, need, want = 0.7, 3, 2, 2
    def brute(N):
        total = 0.0
        for runs in itertools.product((0, 1), repeat=N * k):
            p = np.prod([q if r else 1 - q for r in runs])
            fitted = sum(sum(runs[i * k:(i + 1) * k]) >= need for i in range(N))
            total += p if fitted >= want else 0.0
        return total
    N, per_seed = report.seeds_to_train(q, k, need, want, prob=0.95)
    assert abs(per_seed - (3 * q ** 2 * (1 - q) + q ** 3)) < 1e-12, per_seed
    assert brute(N) >= 0.95 > brute(N - 1), (N, brute(N), brute(N - 1))
    assert report.seeds_to_train(1.0, 4)[0] == 5 and report.seeds_to_train(0.0, 4)[0] == float("inf")


def test_seeds_for_interval_is_the_first_n_whose_interval_passes():
    # The 90% t-interval mean +- t_{0.95, n-1} sd / sqrt(n), written out with the table's values.
    t = {4: 2.132, 5: 2.015, 6: 1.943}
    inside = lambda lo, hi: lo > 0
    n = report.seeds_for_interval(0.206, 0.220, inside)
    assert n == 6, n
    assert 0.206 - t[5] * 0.220 / 6 ** 0.5 > 0 >= 0.206 - t[4] * 0.220 / 5 ** 0.5
    assert report.seeds_for_interval(-0.1, 0.2, inside) == float("inf")  # the mean itself fails


def test_p1_needs_reads_the_runs_it_was_given():
    eff = efficiency(0.3, 0.0)
    text = report.p1_needs(eff)
    # 30 random-label runs (5 seeds x 3 D x 2 logits), all qualifying: 5 seeds suffice.
    assert "C_mem: 30 of 30 runs at D = 200, 400, 800 qualify (1.00)" in text and "take 5 seeds" in text, text
    half = {k: v.copy() for k, v in eff.items()}
    half["trig_frac"][~half["random_labels"] & (half["seed"] % 2 == 1)] = 0.5  # seeds 1, 3 fail the trig check
    assert "C_gen: 18 of 30 runs" in report.p1_needs(half), report.p1_needs(half)


def test_spearman_matches_closed_form():
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    x, y = np.array([1.0, 2, 3, 4, 5]), np.array([2.0, 1, 4, 3, 5])
    d = np.array([1, -1, 1, -1, 0])
    want = 1 - 6 * (d ** 2).sum() / (5 * 24)
    assert abs(report.spearman(x, y) - want) < 1e-12, (report.spearman(x, y), want)
    # ties: average ranks (x's two 2s share rank 1.5), then Pearson's correlation of the ranks
    x, y = np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 3, 4])
    rx, ry = np.array([0, 1.5, 1.5, 3]), np.array([0.0, 1, 2, 3])
    want = ((rx - rx.mean()) * (ry - ry.mean())).sum() / np.sqrt(((rx - rx.mean()) ** 2).sum() * ((ry - ry.mean()) ** 2).sum())
    assert abs(report.spearman(x, y) - want) < 1e-12, (report.spearman(x, y), want)


def fig10_table(o_t, o_m, converged=True):
    """Ungrokking runs with these logits at SIZES, 3 seeds x 2 weight decays."""
    D = np.tile(SIZES, 6).astype(float)
    return dict(n_train=D, seed=np.repeat([0, 1, 2], 14), wd=np.tile(np.repeat([1.0, 3.0], 7), 3),
                o_t=np.tile(o_t, 6), o_m_train=np.tile(o_m, 6), converged=np.full(len(D), converged))


def test_fig10_held_not_held_inconclusive():
    ones = np.ones(len(SIZES))
    assert report.check_fig10(fig10_table(SIZES ** 1.0, ones))["outcome"] == "held"
    assert report.check_fig10(fig10_table(SIZES ** -1.0, ones))["outcome"] == "not held"
    assert report.check_fig10(fig10_table(SIZES ** 1.0, ones, converged=False))["outcome"] == "inconclusive"
    # o_m falls through zero as D' grows while o_t stays: o_t/o_m rises, jumps from +inf to -inf, and
    # rises again, so its ranks say "not monotone"; -o_m/o_t rises throughout and is judged.
    o_m = np.array([3.0, 2.0, 1.0, 0.5, -0.5, -1.0, -2.0])
    v = report.check_fig10(fig10_table(ones, o_m))
    assert v["outcome"] == "held" and "median rank correlation of -o_m/o_t with D' 1.00" in v["value"], v


def wd_sweep(times, seeds=(0, 1, 2), wds=(0.0, 0.5, 1.0, 2.0, 4.0), budget=4000.0):
    """A time-to-grok sweep: times(wd, seed) -> epochs, or None for a run that never grokked within budget."""
    wd, seed, t, cens = [], [], [], []
    for s in seeds:
        for w in wds:
            x = times(w, s)
            wd.append(w), seed.append(s), t.append(budget if x is None else x), cens.append(x is None)
    return np.array(wd), np.array(seed), np.array(t, float), np.array(cens)


def test_time_to_grok_reads_the_first_epoch_or_gives_the_budget_as_a_bound():
    e = np.arange(0, 1001, 100)
    acc = np.stack([np.where(e >= 300, 0.995, 0.1), np.full(len(e), 0.5)])
    t, cens = report.time_to_grok(e, acc)
    assert t.tolist() == [300.0, 1000.0] and cens.tolist() == [False, True], (t, cens)


def test_wd_check_holds_fails_censored_and_short_of_seeds():
    falls = lambda w, s: None if w == 0 else 2000 / w * (1 + 0.05 * s)
    v = report.check_wd(*wd_sweep(falls))
    assert v["outcome"] == "held" and v["judged"] == [0.5, 1.0, 2.0, 4.0] and np.allclose(v["rhos"], -1), v
    assert "wd 0: 3 not within 4000 epochs (0 of 3 grokked) (shown, not judged)" in v["value"], v["value"]
    rises = lambda w, s: None if w == 0 else 500 * w * (1 + 0.05 * s)
    assert report.check_wd(*wd_sweep(rises))["outcome"] == "not held"
    # Censored: of 4 seeds, seed 0 never groks at wd 1 within the budget (3 seeds still grok there,
    # so wd 1 is judged). Its bound ranks above every time it showed, so its times (wd 0.5, 1, 2, 4)
    # rank 2, 3, 1, 0: rho = 1 - 6 * 18 / 60 = -0.8 (closed form, no ties); the others stay at -1.
    one = lambda w, s: None if w == 0 or (w == 1 and s == 0) else 3000 / w ** 1.5
    v = report.check_wd(*wd_sweep(one, seeds=(0, 1, 2, 3)))
    assert np.allclose(sorted(v["rhos"]), [-1, -1, -1, -0.8]) and v["outcome"] == "held", v
    # A weight decay at which fewer than 3 seeds grokked is not judged; two left is too few weight decays.
    most = lambda w, s: None if w in (0, 0.5, 1) or (w == 2 and s == 2) else 2000 / w
    v = report.check_wd(*wd_sweep(most))
    assert v["outcome"] == "inconclusive" and v["judged"] == [4.0] and "too few grokked" in v["value"], v
    # Two seeds: not enough independent networks, whatever the data say (no weight decay has 3 seeds).
    v = report.check_wd(*wd_sweep(falls, seeds=(0, 1)))
    assert v["outcome"] == "inconclusive" and v["seeds"] == 0 and "fewer than 3 weight decays" in v["value"], v


def test_wd_figure_and_averaged_curves_from_saved_files(tmp_path):
    wd, seed, t, cens = wd_sweep(lambda w, s: None if w == 0 else 2000 / w)
    report.draw(dict(wd=wd, seed=seed, t=t, censored=cens, title="t"), report.plot_wd_time_to_grok, str(tmp_path), "w")
    saved = np.load(tmp_path / "w.npz")
    assert np.array_equal(saved["t"], t) and np.array_equal(saved["censored"], cens) and (tmp_path / "w.png").exists()
    e = np.arange(0, 101, 10)
    acc = np.stack([np.linspace(0, 1, len(e)), np.linspace(0, 0.5, len(e))])
    data = dict(epoch=e, train_acc=acc, test_acc=acc, train_loss=1 - acc + 1e-3, test_loss=1 - acc + 1e-3, title="a")
    report.draw(data, report.plot_grokking_averaged, str(tmp_path), "a")
    assert (tmp_path / "a.png").exists() and np.load(tmp_path / "a.npz")["test_acc"].shape == (2, len(e))


def test_toy_held_and_not_held(tmp_path):
    # The toy model is a deterministic simulation: its check can hold or fail, never lack seeds.
    csv = tmp_path / "fig2.csv"
    assert toy_sim.main(["--out", str(tmp_path / "fig2.png"), "--csv"]) in (None, 0)
    assert report.check_toy(str(csv))["outcome"] == "held"
    # The same curves with preset (b) replaced by (a)'s: (b) now groks, so the claim must fail.
    text = csv.read_text().splitlines()
    head = text[0].split(",")
    rows = [line.split(",") for line in text[1:-1]]
    assert text[-1] == f"# end: {len(rows)} rows", text[-1]
    for k in ("train", "test"):
        a, b = head.index(f"a_{k}"), head.index(f"b_{k}")
        for r in rows:
            r[b] = r[a]
    csv.write_text("\n".join([",".join(head)] + [",".join(r) for r in rows] + [text[-1]]) + "\n")
    assert report.check_toy(str(csv))["outcome"] == "not held"
    # Cut short (the first 3000 steps, or in the middle of a line): refused, one line naming the file.
    whole = csv.read_text()
    for cut in ("\n".join(whole.splitlines()[:3001]) + "\n", whole[:len(whole) // 2]):
        csv.write_text(cut)
        with pytest.raises(ValueError) as e:
            report.check_toy(str(csv))
        assert str(csv) in str(e.value) and "cut short" in str(e.value) and "\n" not in str(e.value), str(e.value)


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


def test_movement_line_reads_the_last_record():
    run = dict(hist=dict(move_acc=np.array([[np.nan, 0.01], [np.nan, 0.03]]), move_loss=np.array([[np.nan, 0.1]] * 2),
                         move_norm=np.array([[np.nan, 0.002]] * 2)), runs=dict(seed=[0, 1]),
               cfg=dict(converge_window=2000, converge_acc=0.005, converge_loss=0.05, converge_norm=0.005))
    m = report.movement(run)
    assert m["move_acc"].tolist() == [0.01, 0.03], m
    assert "median 0.0200 (max 0.0300)" in report.movement_line(run)


def test_false_convergence_measures_runs_trained_on_after_passing():
    e = np.arange(0, 4001, 100)
    settled = np.full(len(e), 0.95)
    moving = np.where(e < 1500, 0.95, 0.4)  # passed at 1000, then fell through 0.9, 0.7 and 0.5 before 2000
    drifting = 0.6 + 1e-5 * e  # passed at 1000, then rose 0.01 by 2000: 0.01 per window of 1000, inside (0.5, 0.7)
    norm = np.full((4, len(e)), 20.0)
    norm[3] = 20.0 * np.exp(4e-6 * e)  # log norm +0.004 from e = 1000 to 2000: 0.004 per window of 1000
    run = dict(hist=dict(epoch=e, test_acc=np.stack([settled, moving, settled, drifting]), param_norm=norm,
                         converged_epoch=np.array([1000, 1000, 3000, 1000])),  # run 2: 2e = 6000 is past the end
               cfg=dict(converge_train_on=True, converge_window=1000, converge_acc=0.005, converge_norm=0.005))
    f = report.false_convergence(run)
    assert f["runs"].tolist() == [0, 1, 3] and np.allclose(f["acc"], [0.0, 0.55, 0.01]) and f["crossed"] == 1, f
    assert np.allclose(f["norm"], [0, 0, 0.004]) and np.allclose(f["acc_per_window"], [0.0, 0.55, 0.01]), f
    assert not f["within"] and "**no**" in report.false_convergence_line(run)
    run["hist"]["converged_epoch"] = np.array([1000, -1, 3000, -1])  # only the settled run: within
    assert report.false_convergence(run)["within"]
    run["hist"]["converged_epoch"] = np.array([1000, -1, 3000, 1000])  # the drift exceeds 0.005 per window
    assert not report.false_convergence(run)["within"]
    run["cfg"]["converge_levels"] = "0.2,0.5,0.7,0.9"  # judged by side: the drift stays inside (0.5, 0.7)
    f = report.false_convergence(run)
    assert f["within"] and f["by_levels"] and "**yes**" in report.false_convergence_line(run), f
    run["hist"]["converged_epoch"] = np.array([1000, 1000, 3000, 1000])  # the fall crosses 0.9, 0.7 and 0.5
    assert not report.false_convergence(run)["within"]
    norm[3] = 20.0 * np.exp(1.5e-5 * e)  # log norm +0.015 over 1000 -> 2000: 0.015 per window, over 0.005
    run["hist"]["converged_epoch"] = np.array([1000, -1, 3000, 1000])
    assert not report.false_convergence(run)["within"]
    # A run its --wd-budget stopped at 1500 did not train on to 2e = 2000: frozen records measure nothing.
    run["hist"].update(stop_epoch=np.array([-1, -1, -1, 1500]), stop_reason=np.array(["", "", "", "budget: ..."]))
    assert report.false_convergence(run)["runs"].tolist() == [0]
    run["cfg"]["converge_train_on"] = False  # stopped runs stay put by construction: nothing to measure
    assert report.false_convergence(run) is None


@pytest.mark.slow
def test_false_convergence_on_real_runs_trained_on_after_passing(tmp_path):
    # Small real networks (p=11) train on after passing the stop's test, to twice the epoch they
    # passed at, and report.false_convergence reads how far they moved. The accuracy the verdicts
    # read must not move by more than the test's tolerance nor cross a verdict level. The norm can:
    # a trailing window that straddles a slow turn of the norm (a peak or a trough) sees a flat
    # curve, and the run moves on after passing. So any run whose norm moved more than the
    # tolerance must have passed with such a turn inside its window: the norm's highest point from
    # e - window to 2e (lowest, if it rose) lies in the window before e.
    W = 600
    cfg = grok.Config(task="add", p=11, train="80", seeds="0-3", wd="6", lr="3e-3", epochs=3000, log_every=30,
                      log_points=5, print_every=10**6, ckpt_every=10**6, out=str(tmp_path / "on"), device="cpu",
                      threads=1, d_model=32, n_heads=4, d_head=8, d_mlp=64, converge_window=W, converge_acc=0.05,
                      converge_loss=0.1, converge_norm=0.01, converge_train_on=True)
    grok.train(cfg)
    run = analysis.load_sweep(str(tmp_path / "on"))
    f = report.false_convergence(run)
    h = run["hist"]
    e, passed = np.asarray(h["epoch"]), np.asarray(h["converged_epoch"])
    checkable = [r for r in range(4) if 0 < 2 * passed[r] <= e[-1]]  # passed, and trained on to twice that epoch
    assert f is not None and f["runs"].tolist() == checkable and len(checkable) >= 3, (passed, f)
    for k, r in enumerate(f["runs"]):  # the measurement against the history read by hand
        i, j = e.tolist().index(passed[r]), e.tolist().index(2 * passed[r])
        acc, lognorm = h["test_acc"][r], np.log(h["param_norm"][r])
        err = max(abs(f["acc"][k] - abs(acc[j] - acc[i])), abs(f["norm"][k] - abs(lognorm[j] - lognorm[i])))
        assert err < 1e-12, f"run {r}: the measurement differs from the history read by hand by {err:.2e}"
        assert f["acc"][k] <= cfg.converge_acc, f"run {r} passed at {passed[r]} and its test accuracy moved {f['acc'][k]:.3f}"
        if f["norm"][k] > cfg.converge_norm:
            span = np.flatnonzero((e >= passed[r] - W) & (e <= 2 * passed[r]))
            turn = span[np.argmax(lognorm[span])] if lognorm[j] < lognorm[i] else span[np.argmin(lognorm[span])]
            assert passed[r] - W <= e[turn] <= passed[r], \
                f"run {r} moved {f['norm'][k]:.4f} in log norm after passing at {passed[r]}; its turn is at {e[turn]}"
    assert f["crossed"] == 0, f


def test_readme_verdicts_at_a_glance_are_the_results_md_verdicts():
    # The first screen's table of verdicts: each row's claim and its verdict in each profile must
    # be the saved results.md's (figures/results_<profile>.md), so that it cannot drift from them.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md")).read()
    glance = readme.split("**The verdicts at a glance**")[1].split("## Two commands")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in glance.splitlines()
            if line.startswith("| ") and not line.startswith("| claim") and not line.startswith("| ---")]
    for col, profile in ((2, "quick"), (3, "long")):
        saved = open(os.path.join(root, "figures", f"results_{profile}.md")).read().split("## Summary")[1]
        verdicts = {c[0]: c[-1] for c in ([x.strip() for x in line.strip().strip("|").split("|")]
                                          for line in saved.splitlines() if line.startswith("| "))}
        judged = [claim for claim, v in verdicts.items() if v in ("held", "not held", "inconclusive")]
        assert [r[0] for r in rows] == judged, f"{profile}: the README's claims {[r[0] for r in rows]} != {judged}"
        wrong = [(r[0], r[col], verdicts[r[0]]) for r in rows if r[col] != verdicts[r[0]]]
        assert not wrong, f"{profile}: README verdict != results.md verdict: {wrong}"


def test_readme_results_tables_are_results_md_line_for_line():
    # The README's tables of results are copied from the saved results.md of each profile it shows
    # (figures/results_<profile>.md): the same lines, so that no number in them is typed by hand.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md")).read()
    verdicts = (" | held |", " | not held |", " | inconclusive |", " | estimate |")
    table = lambda text: [line for line in text.splitlines()
                          if line.startswith("| claim |") or any(v in line for v in verdicts)]
    for profile in ("long", "quick"):
        saved = open(os.path.join(root, "figures", f"results_{profile}.md")).read()
        assert f"./reproduce.sh {profile}" in saved.splitlines()[0], f"results_{profile}.md: {saved.splitlines()[0]}"
        section = readme.split(f"### Results of the {profile} profile")[1].split(f"What the {profile} profile shows")[0]
        got, want = table(section), table(saved.split("## Summary")[1])
        assert got and got == want, f"{profile}: " + ("\n".join(l for l in got if l not in want) or "README table is empty")

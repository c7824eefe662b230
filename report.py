"""
report.py: the paper's claims, checked from saved runs: the experiment figures and results.md.

Reads the output folder of reproduce.sh (its layout is layout() below, the one place it is
written down) and writes, from the saved runs only:
  - the experiment figures: Fig. 1a/1b/1c (grokking, ungrokking, semi-grokking runs), Fig. 4 and 7
    (ungrokking against D'), Fig. 5 and 6 (semi-grokking), Fig. 8 (ungrokking on another task);
  - results.md: one section per claim, each with a verdict that is "held", "not held" or
    "inconclusive". Each check states, in its code below and in results.md, the paper passage it
    encodes, its threshold, its convergence requirement and its minimum number of independent
    seeds; data that fails the convergence or seed requirement gives "inconclusive", never "held".
The mechanistic maths (App. B split, Nanda et al.'s measures, Fig. 3, 9, 10) is analysis.py's.

Launch commands:
    python report.py out/quick --profile quick     # figures + results.md for a reproduce.sh folder
    python report.py --where ungrok                # a path of the layout
    python report.py --where all                   # every path of the layout (reproduce.sh reads it once)
    python report.py --movement out/quick/runs/ungrok   # each run's convergence test at its last record
    python report.py out/long --complete           # every sweep trained in shards has all of them (exit 1 if not)
Tests: python -m pytest -q tests/test_report.py
"""
import argparse
import glob
import io
import math
import os
import re
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import matplotlib

matplotlib.use("Agg")  # render to files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402  (must come after use("Agg"))

import analysis  # noqa: E402  run loading, the efficiency table, figure helpers
import grok  # noqa: E402  atomic writers, task names, the command-line helpers

# -----------------------------------------------------------------------------
# The output folder of reproduce.sh: every path, written down once


def layout():
    """What reproduce.sh writes where, relative to its output folder (reproduce.sh reads `report.py --where all`)."""
    return dict(
        toy_csv="fig2_toy.csv",                # toy_sim.py --csv: the three presets of Fig. 2
        grok="runs/grok",                      # Fig. 1a: the paper's standard run (p=113, D=3830, wd=1)
        full="runs/full_add",                  # networks trained on every pair: the ungrokking sources (Fig. 4)
        ungrok="runs/ungrok",                  # ungrokking sweep from `full`: D' x weight decay x source seed
        scratch="runs/scratch",                # from-scratch sweep over D: grokking, semi-grokking, C_gen-only
        mem="runs/mem",                        # random labels: the C_mem-only networks of Fig. 3
        gen="runs/gen",                        # from scratch well above the transition: C_gen-only networks (P1)
        wd="runs/wd",                          # from scratch over weight decays (0 included): time to grok
        full8="runs/full_div",                 # Fig. 8: a second task's networks trained on every pair
        ungrok8="runs/ungrok_div",             # ... and its ungrokking sweep
        sources="sources",                     # analysis.py --efficiency of `full`: trig share of each source
        efficiency="efficiency",               # analysis.py --efficiency of `mem` and `scratch`: Fig. 3 (P1)
        efficiency_ungrok="efficiency_ungrok",  # analysis.py --efficiency of `ungrok`: Fig. 10
        stage_times="stage_times.txt",
        results="results.md",
    )


def path_of(folder, name):
    """The path of a layout entry inside a reproduce.sh output folder."""
    return os.path.join(folder, layout()[name])


def finished(run_dir):
    """Whether a grok.py sweep has finished (params.pt is written last), or was trained in shards (pooled on reading)."""
    # A sweep of shards counts here: analysis.load_sweep pools them, and refuses (ShardsIncomplete)
    # a sweep with a shard missing or unfinished, which the section then reports as incomplete.
    return os.path.exists(os.path.join(run_dir, "params.pt")) or bool(analysis.shard_dirs(run_dir))


SWEEPS = ("ungrok", "scratch", "mem", "gen", "wd", "ungrok8")  # the layout's sweeps: reproduce.sh may train them in shards


def incomplete_sweeps(folder):
    """One line for each of the folder's sweeps that was trained in shards and has one missing or unfinished."""
    out = []
    for name in SWEEPS:
        if analysis.shard_dirs(path_of(folder, name)):
            try:
                analysis.sweep_parts(path_of(folder, name))
            except analysis.ShardsIncomplete as e:
                out.append(str(e))
    return out


# -----------------------------------------------------------------------------
# Verdicts: held, not held or inconclusive


def outcome(enough, converged, held, failed):
    """The verdict word: "inconclusive" unless the seed and convergence requirements are met and the data decides."""
    if not (enough and converged):
        return "inconclusive"
    return "held" if held else ("not held" if failed else "inconclusive")


def verdict(*, claim, passage, rule, min_seeds, seeds, convergence, n_converged, n_runs, value, spread, result):
    """One check's outcome with everything results.md shows about it: a dict."""
    return dict(claim=claim, passage=passage, rule=rule, min_seeds=min_seeds, seeds=seeds, convergence=convergence,
                n_converged=n_converged, n_runs=n_runs, value=value, spread=spread, outcome=result)


def verdict_lines(v):
    """The lines of results.md under a check: rule, requirements, value with spread, verdict."""
    return [f"- Paper: {v['passage']}",
            f"- Rule: {v['rule']}",
            f"- Requirements: at least {v['min_seeds']} independent networks (here {v['seeds']}); {v['convergence']} "
            f"(here {v['n_converged']} of {v['n_runs']} runs)",
            f"- Measured: {v['value']} (spread: {v['spread']})",
            f"- **Verdict: {v['outcome']}.**", ""]


# The independent unit of every check is the network seed: the runs of one seed share their
# initialisation (and, ungrokking, their source network), so n runs of one seed are one network's
# evidence, never n networks'. Every check counts seeds through this one function.
def n_seeds(seed):
    """How many independent networks (distinct seeds) an array of run seeds holds."""
    return len(np.unique(np.asarray(seed)))


# -----------------------------------------------------------------------------
# Run tables: one row per run, from history.npz and config.json
# (a sweep is a loaded run directory or its pooled shards, analysis.load_sweep; r indexes its runs)


def run_table(sweep):
    """Per run of a loaded directory: D, wd, seed, final accuracies (last record), whether it ended converged, and its stop."""
    h, runs = sweep["hist"], sweep["runs"]
    R = len(runs["seed"])
    return dict(D=np.array(runs["n_train"]), wd=np.array(runs["wd"], float), seed=np.array(runs["seed"]),
                train_acc=h["train_acc"][:, -1], test_acc=h["test_acc"][:, -1],
                converged=grok.converged_at_end(h, sweep["cfg"]),
                settled=grok.settled_at_levels(h, sweep["cfg"], VERDICT_LEVELS),  # [R, len(VERDICT_LEVELS)]
                stop_epoch=np.array(h["stop_epoch"] if "stop_epoch" in h else [-1] * R))


def movement(sweep):
    """Per run, the convergence test's movements at its last record while it trained: {move_acc, ...: [R]} (nan: no test)."""
    h = sweep["hist"]
    R = len(sweep["runs"]["seed"])
    at = grok.last_trained_record(h) if "stop_reason" in h else np.full(R, -1)  # a --wd-budget may end a run first
    return {k: (np.asarray(h[k])[np.arange(R), at] if k in h and np.size(h[k]) else np.full(R, np.nan))
            for k in grok.CONVERGE_KEYS}


def movement_line(sweep):
    """One line of results.md: how far a directory's runs moved over the convergence test's last window, against its limits."""
    c, m = sweep["cfg"], movement(sweep)
    W = c.get("converge_window", 0)
    if not W or not np.isfinite(m["move_acc"]).any():
        return "These runs had no convergence test."
    med = lambda x: f"median {np.nanmedian(x):.4f} (max {np.nanmax(x):.4f})"
    which = "train" if c.get("random_labels") else "test"
    mode = ("the test is recorded, the runs train on (--converge-train-on)" if c.get("converge_train_on")
            else "a run that passes stops")
    return (f"Convergence test over the trailing {W} epochs (range of the four quarters' medians; {mode}): at the last "
            f"record {which} accuracy moved {med(m['move_acc'])}, log({which} loss + 0.01) {med(m['move_loss'])}, log norm "
            f"{med(m['move_norm'])}; limits {c['converge_acc']:g}, {c['converge_loss']:g}, {c['converge_norm']:g}."
            + (f" The accuracy condition here is to stay on one side of each of {c['converge_levels']} over the window, "
               f"farther from it than the run's own drift (grok.level_reach; at least {c['converge_acc']:g}) per {W} epochs "
               f"of its age (--converge-levels), in place "
               f"of its limit; at the last record "
               f"{int(np.sum(np.nan_to_num(m['move_levels'], nan=1.0) > 0))} of {len(m['move_levels'])} runs did not."
               if c.get("converge_levels") else ""))


def unsettled_line(sweep):
    """One line of results.md: per verdict level, the runs not settled there at their last record and the conditions they fail (None without --converge-levels)."""
    # What keeps a bracket open: a run unsettled at a level neither blocks nor narrows it, so the
    # reader needs to know whether it is still moving across the level (side or reach), or stands
    # on its side while its loss (the circuit mix's gauge) moves toward the level.
    h, c = sweep["hist"], sweep["cfg"]
    if not (c.get("converge_train_on") and c.get("converge_levels")) or "move_loss" not in h:
        return None
    levels = tuple(grok.parse_list(c["converge_levels"], float, "converge-levels"))
    cond = grok.level_conditions(h, c, levels)  # side, loss: [R, L]; settled where both hold
    R = len(cond["side"])
    parts = []
    for k, level in enumerate(levels):
        side, loss = cond["side"][:, k], cond["loss"][:, k]
        parts.append(f"{level:g}: {int((~(side & loss)).sum())} (side or reach {int((~side).sum())}, loss "
                     f"{int((~loss).sum())})")
    return (f"Runs not settled at a level at their last record, of {R}, with the conditions they fail (a run can fail "
            f"several): " + "; ".join(parts) + ".")


# The levels the verdicts read: P2's 0.2 and 0.9, P3's 0.5, D_crit's 0.5 and 0.7. The long
# profile's ungrokking runs pass the convergence test's accuracy condition by staying on one side of
# each (grok.py --converge-levels), and false convergence counts a crossing of any of them.
VERDICT_LEVELS = (0.2, 0.5, 0.7, 0.9)


def settled(table, level):
    """Per row of a run table: is the run settled for a bracket at this level (converged, its side of the level fixed)?"""
    # run_table's "settled" holds grok.settled_at_levels at VERDICT_LEVELS; without it (or at another
    # level) a run is settled where it converged. Each bracket reads the test at its own level, where
    # it first read it at all four levels at once. The reason is what a bracket reads, not a verdict:
    # a run whose side of 0.5 is settled while it wanders across 0.7 says where P3's 0.5 crossing is,
    # and nothing about D_crit at 0.7. What a settled side asks is grok.level_conditions'.
    if "settled" in table and level in VERDICT_LEVELS:
        return np.asarray(table["settled"])[:, VERDICT_LEVELS.index(level)]
    return np.asarray(table["converged"], bool)


def false_convergence(sweep):
    """Runs that passed the convergence test and trained on for as many epochs again: how far they moved since.

    Returns None if no run of the directory was trained on past twice its first passing epoch, else
    a dict: runs, accuracy moved |acc(2 e) - acc(e)| and log norm moved [n], the same per window of
    the test, the test's limits, how many runs crossed a level after they had passed, and whether
    all of it is within the test's tolerance.
    """
    # A test that calls a run converged too early would show here: trained on, the run moves on.
    # Only runs that trained on after passing can be checked (--converge-train-on; a stopped run
    # stays put by construction), so this reads the sweeps that record and train on: the from-scratch
    # sweep, and the long profile's ungrokking sweep.
    h, c = sweep["hist"], sweep["cfg"]
    if "converged_epoch" not in h or not c.get("converge_train_on"):
        return None
    by_levels = bool(c.get("converge_levels"))
    levels = tuple(grok.parse_list(c["converge_levels"], float, "converge-levels")) if by_levels else VERDICT_LEVELS
    e = np.asarray(h["epoch"])
    which = "train_acc" if c.get("random_labels") else "test_acc"
    acc, norm = np.asarray(h[which]), np.log(np.asarray(h["param_norm"]))
    # [R]: the last epoch each run trained (--wd-budget may stop it before the end)
    rows, end = [], e[grok.last_trained_record(h) if "stop_reason" in h else np.full(len(acc), -1)]
    per_level = by_levels and "move_loss" in h
    if per_level:
        # The brackets count a run at a level once it is settled there (grok.settled_at_levels), so each
        # (run, level) is followed from the first record it was settled at that level, e, to 2e: did it
        # cross that level?
        first = np.full((len(acc), len(levels)), -1)
        for i in range(len(e)):
            s = grok.settled_at_levels(h, c, levels, at=np.full(len(acc), i))  # [R, L]
            first[s & (first < 0) & (e[i] <= end)[:, None]] = i
        starts = [(r, e[first[r, k]], (lv,)) for r in range(len(acc)) for k, lv in enumerate(levels) if first[r, k] >= 0]
    else:
        starts = [(r, ec, levels) for r, ec in enumerate(np.asarray(h["converged_epoch"])) if ec >= 0]
    for r, ec, crossing_levels in starts:
        if end[r] < 2 * ec:
            continue
        i, j = int(np.searchsorted(e, ec)), int(np.searchsorted(e, 2 * ec))
        crossed = any(len(set((acc[r, i:j + 1] < lv).tolist())) > 1 for lv in crossing_levels)  # both sides of one
        rows.append((r, abs(acc[r, j] - acc[r, i]), abs(norm[r, j] - norm[r, i]), crossed, e[j] - e[i]))
    if not rows:
        return None
    r, da, dn, cross, span = (np.array(x) for x in zip(*rows))
    # The test bounds movement per window (its limits hold over any W epochs), so a run trained on
    # for e epochs after passing is within the tolerance when it moved at most the limit per W
    # epochs of that span: movement * W / e. Accuracy with --converge-levels is judged as the test
    # judges it, by which side of each level it lies on.
    W = c.get("converge_window", 0) or 1
    per_w = lambda x: x * W / np.maximum(span, W)
    # Per level, a settled side claims only that the run stays on it (grok.level_conditions reads no
    # norm), so a crossing is what falsifies it; the norm's movement is shown beside it.
    within = (cross.sum() == 0 and (by_levels or bool((per_w(da) <= c["converge_acc"]).all()))
              and (per_level or bool((per_w(dn) <= c["converge_norm"]).all())))
    return dict(runs=r, acc=da, norm=dn, acc_per_window=per_w(da), norm_per_window=per_w(dn), crossed=int(cross.sum()),
                levels=levels, by_levels=by_levels, per_level=per_level, window=W,
                limits=(c["converge_acc"], c["converge_norm"]), within=bool(within))


def false_convergence_line(sweep):
    """One line of results.md: the false-convergence measurement of a directory (or that it has none)."""
    f = false_convergence(sweep)
    if f is None:
        return "False convergence: no run of this sweep trained on past twice the epoch it first passed the test."
    med = lambda x: f"median {np.median(x):.4f} (max {x.max():.4f})"
    lv = ", ".join(f"{x:g}" for x in f["levels"])
    norm_rule = f"; log norm at most {f['limits'][1]:g} per {f['window']} epochs"
    if f["per_level"]:  # each (run, level) followed from where it settled at that level
        acc_rule, norm_rule = "no crossing of the level a run was settled at; a side reads no norm", ""
        who = (f"{len(f['runs'])} (run, level) pairs, {len(np.unique(f['runs']))} runs, were settled at a level "
               f"(one of {lv}) at some epoch e and trained on to 2e")
        cross = "crossed their level"
    else:
        acc_rule = (f"no crossing of {lv}" if f["by_levels"] else
                    f"accuracy at most {f['limits'][0]:g} per {f['window']} epochs, and no crossing of {lv}")
        who = f"{len(f['runs'])} runs passed the test at some epoch e and trained on to 2e"
        cross = f"crossed a level ({lv})"
    return (f"False convergence: {who}; from e to "
            f"2e their accuracy moved {med(f['acc'])} and log norm {med(f['norm'])}, per {f['window']} epochs of that "
            f"span accuracy {med(f['acc_per_window'])} and log norm {med(f['norm_per_window'])}; {f['crossed']} {cross} "
            f"after passing. Within the test's tolerance ({acc_rule}{norm_rule}): **{'yes' if f['within'] else 'no'}**.")


def first_epoch(epoch, x, level):
    """The first recorded epoch where x >= level (nan if never)."""
    hit = np.flatnonzero(x >= level)
    return float(epoch[hit[0]]) if len(hit) else float("nan")


def crossing(D, acc, level=0.5):
    """The dataset size where accuracy first rises through `level`, interpolated on log D (nan if never)."""
    order = np.argsort(D)
    D, acc = np.asarray(D, float)[order], np.asarray(acc, float)[order]
    for i in range(1, len(D)):
        if acc[i - 1] < level <= acc[i]:
            f = (level - acc[i - 1]) / (acc[i] - acc[i - 1])
            return float(np.exp(np.log(D[i - 1]) + f * (np.log(D[i]) - np.log(D[i - 1]))))
    return float("nan")


def bracket(D, acc, converged, below, above=None, converged_above=None):
    """Where a curve's converged runs put its rise: (lo, hi), lo the largest converged D with acc < below (0: none, a
    bound), hi the smallest converged D with acc > above (default >= below; inf: none, a bound). converged_above: which
    runs count for hi, when that differs (settled at the level `above`; default `converged`)."""
    # What cannot be seen is a bound: with no converged run under the level, the rise lies somewhere
    # below hi ("below 600"); with none over it, above lo. Unconverged runs neither narrow nor block.
    D, acc, converged = np.asarray(D, float), np.asarray(acc, float), np.asarray(converged, bool)
    conv_hi = converged if converged_above is None else np.asarray(converged_above, bool)
    lows = D[converged & (acc < below)]
    highs = D[conv_hi & ((acc > above) if above is not None else (acc >= below))]
    return (float(lows.max()) if len(lows) else 0.0, float(highs.min()) if len(highs) else float("inf"))


def bracket_text(lo, hi):
    """A bracket as results.md writes it: "170-230", "below 600", "above 1000" or "not seen"."""
    if lo > 0 and np.isfinite(hi):
        return f"{lo:.0f}-{hi:.0f}" if hi > lo else f"non-monotone ({hi:.0f} above, {lo:.0f} below)"
    if np.isfinite(hi):
        return f"below {hi:.0f}"
    if lo > 0:
        return f"above {lo:.0f}"
    return "not seen"


def width_text(w):
    """A bracket's width as "2.31x", or "-" where one side is unseen."""
    return f"{w:.2f}x" if np.isfinite(w) else "-"


def mean_by(D, acc):
    """Mean accuracy per distinct D (over seeds): (sorted D values, means)."""
    xs = np.unique(D)
    return xs, np.array([acc[D == x].mean() for x in xs])


def curves(table, keys=("seed", "wd")):
    """The rows of a table grouped into curves over D, one per distinct (seed, wd): list of ((seed, wd), rows)."""
    groups = sorted({tuple(table[k][i] for k in keys) for i in range(len(table["D"]))})
    out = []
    for g in groups:
        sel = np.all([table[k] == v for k, v in zip(keys, g)], axis=0)
        order = np.argsort(table["D"][sel])
        out.append((g, {k: v[sel][order] for k, v in table.items()}))
    return out


def spread_text(x, fmt="{:.2f}"):
    """min-max of finite values as text ("-" for fewer than two)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return f"{fmt.format(x.min())}-{fmt.format(x.max())} over {len(x)}" if len(x) > 1 else "-"


# -----------------------------------------------------------------------------
# The checks. Each one's threshold, convergence requirement and minimum number of seeds are its
# keyword defaults, fixed in code before the runs they judge were made; its rule text is built
# from the same values, so results.md cannot say one thing while the code tests another.


RUN_AGAIN = "delete it and run the reproduce.sh stage that writes it again"


def read_toy_csv(csv_path):
    """toy_sim.py's CSV of Fig. 2's curves, refused (one line naming it) if it is cut short or damaged."""
    # toy_sim.py ends the file with "# end: N rows": a file cut anywhere lacks that line or those
    # rows, and a verdict on part of the horizon could be anything.
    try:
        with open(csv_path) as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"{csv_path} cannot be read ({e.strerror}); {RUN_AGAIN}") from None
    lines = text.splitlines()
    end = re.fullmatch(r"# end: (\d+) rows", lines[-1]) if lines and text.endswith("\n") else None
    body = [line for line in lines[1:] if line and not line.startswith("#")]
    if end is None or int(end.group(1)) != len(body):
        raise ValueError(f"{csv_path} is cut short ({len(body)} rows and no matching '# end: N rows' line); {RUN_AGAIN}")
    try:
        cols = np.genfromtxt(io.StringIO(text), delimiter=",", names=True, invalid_raise=True)
    except ValueError as e:
        raise ValueError(f"{csv_path} is damaged ({' '.join(str(e).split())[:200]}); {RUN_AGAIN}") from None
    need = ["step"] + [f"{k}_{c}" for k in "abc" for c in ("train", "test")]
    if cols.dtype.names is None or not set(need) <= set(cols.dtype.names) or cols.shape != (len(body),):
        raise ValueError(f"{csv_path} is not toy_sim.py's Fig. 2 CSV (it needs columns {', '.join(need)}); {RUN_AGAIN}")
    return cols


def check_toy(csv_path, delay=5.0):
    """Fig. 2: grokking in the toy model needs all three ingredients (from toy_sim.py's CSV)."""
    # Fig. 2 captions: (a) "we observe grokking"; (b) "test loss stays high ... throughout training";
    # (c) "test loss decreases immediately". The step where test loss first falls below half its
    # peak is at least `delay` times that of train loss in (a), never comes in (b), and comes
    # within twice the train step in (c). The toy model is a deterministic simulation of App. C:
    # no seed, and it runs its whole horizon, so both requirements are met by construction.
    cols = read_toy_csv(csv_path)

    def half_peak(x):
        peak = int(np.argmax(x))
        below = np.flatnonzero(x[peak:] < 0.5 * x[peak])
        return float(cols["step"][peak + below[0]]) if len(below) else float("nan")
    t = {k: (half_peak(cols[f"{k}_train"]), half_peak(cols[f"{k}_test"])) for k in "abc"}
    held = (t["a"][1] >= delay * t["a"][0]) and math.isnan(t["b"][1]) and (t["c"][1] <= 2 * t["c"][0])
    fmt = lambda x: "never" if math.isnan(x) else f"{x:.0f}"
    value = "; ".join(f"({k}) train {fmt(t[k][0])}, test {fmt(t[k][1])}" for k in "abc")
    v = verdict(claim="toy model: grokking needs all three ingredients (Sec. 3, Fig. 2)",
                passage="\"we only get grokking when C_gen is learned more slowly than C_mem\" (Fig. 2)",
                rule=f"the step where test loss falls below half its peak is >= {delay:g}x the train step in (a), "
                     "never comes in (b), and is <= 2x the train step in (c)",
                min_seeds=1, seeds="a deterministic simulation (App. C)",
                convergence="the simulation runs its whole horizon", n_converged=3, n_runs=3,
                value=f"steps to half the peak loss: {value}", spread="none (deterministic)",
                result=outcome(True, True, held, not held))
    return dict(v, steps=t)


def check_grokking(epoch, train_acc, test_acc, seed, level=0.99, min_delay=10.0, max_at_fit=0.5, min_seeds=3):
    """Grokking (Fig. 1a): test accuracy reaches `level` at least min_delay times later than train accuracy."""
    # Sec. 1: grokking is "a phenomenon where a network ... first achieves perfect training accuracy
    # but poor generalisation, and then upon further training, transitions to perfect generalisation".
    # A run counts when it fits its training set (train accuracy >= level) with poor generalisation
    # then: test accuracy at that epoch at most max_at_fit. Its delay is (epoch of test >= level) /
    # (epoch of train >= level); a run that never generalises within its budget has a delay of more
    # than (last epoch) / (epoch of train fit), a bound, not a gap. The median over runs is then
    # bracketed: its lower end counts each bound as itself, its upper end as infinite. Held: the
    # lower end >= min_delay; not held: the upper end < min_delay. An event, not a final value: no
    # convergence is needed.
    t_tr = np.array([first_epoch(epoch, a, level) for a in train_acc])
    t_te = np.array([first_epoch(epoch, a, level) for a in test_acc])
    fit = np.isfinite(t_tr)
    at_fit = np.array([a[np.flatnonzero(epoch == t)[0]] if np.isfinite(t) else np.nan for a, t in zip(test_acc, t_tr)])
    ok = fit & (at_fit <= max_at_fit)
    censored = ok & ~np.isfinite(t_te)
    bound = np.where(censored, epoch[-1], t_te) / np.maximum(t_tr, 1.0)
    lo = float(np.median(bound[ok])) if ok.any() else float("nan")
    hi = float(np.median(np.where(censored, np.inf, bound)[ok])) if ok.any() else float("nan")
    seeds = n_seeds(seed[ok & ~censored])  # networks seen to generalise: bounds alone show no transition
    upper = "" if hi == lo else (" or more (no upper bound)" if not np.isfinite(hi) else f" or more (at most {hi:.1f})")
    value = (f"median delay ratio {lo:.1f}" + upper +
             (f" ({int(censored.sum())} runs not generalised within {int(epoch[-1])} epochs: ratio > their bound)"
              if censored.any() else ""))
    v = verdict(claim="grokking: test accuracy rises long after train accuracy (Fig. 1a)",
                passage="\"first achieves perfect training accuracy but poor generalisation, and then upon further "
                        "training, transitions to perfect generalisation\" (Sec. 1)",
                rule=f"over runs with test acc <= {max_at_fit:g} when train acc first >= {level:g}: the median of "
                     f"(epoch test acc >= {level:g}) / (epoch train acc >= {level:g}), a run not generalised counted as "
                     f"a bound; held if even its lower end >= {min_delay:g}, not held if even its upper end < {min_delay:g}",
                min_seeds=min_seeds, seeds=f"{seeds} generalised", convergence="none needed (an event); runs that fit poorly generalised",
                n_converged=int(ok.sum()), n_runs=len(ok), value=value, spread=spread_text(bound[ok & ~censored], "{:.1f}"),
                result=outcome(seeds >= min_seeds, True, lo >= min_delay, hi < min_delay))
    return dict(v, ratio=bound[ok], t_train=t_tr, t_test=t_te, censored=censored)


def p2_curve(D, acc, converged, low=0.2, high=0.9, max_width=3.0, converged_high=None):
    """One ungrokking curve's bracket and status: (lo, hi, width, status), status one of pass, fail, open, unspanned.
    converged: the runs settled for `low`; converged_high: for `high` (default the same)."""
    # The fall lies between lo, the largest converged D' under `low`, and hi, the smallest converged
    # D' over `high`. pass: hi / lo <= max_width. fail: hi / lo > max_width with no unconverged run
    # inside the bracket (none could narrow it), or converged accuracy high below a low one (no
    # single step). open: too wide, but unconverged runs inside might narrow it. unspanned: the
    # converged runs do not reach both levels, so this grid says nothing about the curve's width.
    conv_hi = converged if converged_high is None else converged_high
    lo, hi = bracket(D, acc, converged, low, high, conv_hi)
    if lo == 0 or not np.isfinite(hi):
        return lo, hi, float("nan"), "unspanned"
    if hi < lo:
        return lo, hi, float("nan"), "fail"
    width = hi / lo
    # A run unsettled at either level could still end below `low` or above `high` and narrow it.
    both = np.asarray(converged, bool) & np.asarray(conv_hi, bool)
    inside = np.any(~both & (np.asarray(D) > lo) & (np.asarray(D) < hi))
    return lo, hi, width, "pass" if width <= max_width else ("open" if inside else "fail")


def check_p2(table, low=0.2, high=0.9, max_width=3.0, min_seeds=3):
    """P2, ungrokking: converged test accuracy against D' falls from > high to < low within a factor max_width."""
    # Sec. 5.2: "if we plot test accuracy at convergence against the size of the reduced training
    # dataset D', there will be a phase transition around D_crit". A curve is one source network
    # and one weight decay, judged from its converged runs by p2_curve. Held: curves of at least
    # min_seeds source networks are decided (pass or fail), and every decided curve passes. Not
    # held: as many decided, and fewer than half pass. A grid whose converged runs do not span the
    # transition decides nothing: inconclusive, never not held.
    # The seeds are counted as P3 and Fig. 10 count them, source networks with a decided curve at
    # any weight decay: the independent unit is the network, and a weight decay whose runs do not
    # settle on both sides of the fall adds no curve, for or against, as a grid that misses it adds
    # none. (The minimum first applied at each weight decay; changed for the unit, not a verdict.)
    rows = []
    for (s, w), c in curves(table):
        lo, hi, width, status = p2_curve(c["D"], c["test_acc"], settled(c, low), low, high, max_width,
                                         settled(c, high))
        rows.append(dict(seed=s, wd=w, lo=lo, hi=hi, width=width, status=status,
                         n_conv=int((settled(c, low) & settled(c, high)).sum()), n=len(c["D"])))
    decided = [r for r in rows if r["status"] in ("pass", "fail")]
    wds = np.unique(table["wd"])
    seeds_ok = n_seeds([r["seed"] for r in decided])
    per_wd = ", ".join(f"wd {w:g}: {n_seeds([r['seed'] for r in decided if r['wd'] == w])}" for w in wds)
    n_pass = sum(r["status"] == "pass" for r in decided)
    count = {k: sum(r["status"] == k for r in rows) for k in ("pass", "fail", "open", "unspanned")}
    value = (f"{n_pass} of {len(decided)} decided curves pass; brackets " +
             ", ".join(f"seed {r['seed']} wd {r['wd']:g}: {bracket_text(r['lo'], r['hi'])} ({r['status']})" for r in rows))
    if count["unspanned"]:
        value += f"; {count['unspanned']} curves not spanned by their converged runs (the grid or the budget misses the fall)"
    if not table["converged"].all():  # shown, not judged: every run's last state as if it had converged
        end = [p2_curve(c["D"], c["test_acc"], np.ones(len(c["D"]), bool), low, high, max_width) for _, c in curves(table)]
        value += (f"; at the budget's end, not judged: {sum(e[3] == 'pass' for e in end)} of {len(end)} curves pass, "
                  f"brackets " + ", ".join(bracket_text(e[0], e[1]) for e in end))
    v = verdict(claim="P2 ungrokking: a phase transition in D' (Sec. 5.2, Fig. 4)",
                passage="\"there will be a phase transition around D_crit\"; Fig. 4: \"a sharp transition from strong "
                        "test accuracy to near-zero test accuracy\"",
                rule=f"per curve (source seed, weight decay), from its converged runs: the largest D' with test accuracy "
                     f"< {low:g} and the smallest with > {high:g} within a factor {max_width:g} (pass), or wider with no "
                     "unconverged run between them (fail); held if every decided curve passes, not held if fewer "
                     "than half do; seeds counted over weight decays",
                min_seeds=min_seeds, seeds=f"{seeds_ok} with a decided curve; per weight decay {per_wd}",
                convergence=f"each run judged by grok.py's convergence test, its accuracy read at {low:g} and {high:g} "
                            "(settled_at_levels); unsettled runs neither block nor narrow",
                n_converged=int((settled(table, low) & settled(table, high)).sum()), n_runs=len(table["D"]),
                value=value, spread=spread_text([r["width"] for r in decided]),
                result=outcome(seeds_ok >= min_seeds, True, n_pass == len(decided), n_pass < len(decided) / 2))
    return dict(v, rows=rows)


def p3_spread(brackets):
    """The narrowest and widest spread (largest / smallest D') of crossings that lie in these (lo, hi) brackets."""
    # The crossings can lie anywhere in their brackets: the spread is at least max(lo) / min(hi) (or
    # 1, when the brackets overlap) and at most max(hi) / min(lo), infinite when a bracket is open.
    los, his = np.array([b[0] for b in brackets]), np.array([b[1] for b in brackets])
    narrow = max(1.0, los.max() / his.min()) if np.isfinite(his.min()) and los.max() > 0 else 1.0
    with np.errstate(divide="ignore"):
        wide = his.max() / los.min() if los.min() > 0 else float("inf")
    return float(narrow), float(wide)


def check_p3(table, level=0.5, max_spread=1.5, min_seeds=3):
    """P3, no effect of weight decay: each source network's D' at `level` agrees across weight decays."""
    # Sec. 5.2: "we predict that test accuracy at convergence is independent of the strength of
    # weight decay". For each source network and weight decay, the crossing of `level` lies in a
    # bracket of converged runs (bracket: a bound where one side is unseen). The spread over weight
    # decays (largest / smallest D') is then between p3_spread's narrowest and widest. Per network:
    # held when even the widest <= max_spread, failed when even the narrowest > max_spread, else
    # undecided. Held: at least min_seeds networks decided and every one held; not held: as many
    # decided and fewer than half held.
    wds = np.unique(table["wd"])
    per_seed = {}
    for (s, w), c in curves(table):
        per_seed.setdefault(s, {})[w] = bracket(c["D"], c["test_acc"], settled(c, level), level)
    rows = []
    for s, b in per_seed.items():
        if len(b) < len(wds) or any(hi < lo for lo, hi in b.values()):
            rows.append(dict(seed=s, brackets=b, narrow=float("nan"), wide=float("nan"), status="undecided"))
            continue
        narrow, wide = p3_spread(list(b.values()))
        status = "held" if wide <= max_spread else ("failed" if narrow > max_spread else "undecided")
        rows.append(dict(seed=s, brackets=b, narrow=narrow, wide=wide, status=status))
    decided = [r for r in rows if r["status"] != "undecided"]
    n_held = sum(r["status"] == "held" for r in decided)
    end = {}  # shown, not judged: the brackets of every run's last state, as if all had converged
    for (s, w), c in curves(table):
        end.setdefault(s, {})[w] = bracket(c["D"], c["test_acc"], np.ones(len(c["D"]), bool), level)
    value = f"{n_held} of {len(decided)} decided networks held; " + "; ".join(
        f"seed {r['seed']}: " + ", ".join(f"wd={w:g} {bracket_text(*r['brackets'][w])}" for w in sorted(r["brackets"]))
        + (f", spread {r['narrow']:.2f}-{r['wide']:.2f}" if np.isfinite(r["narrow"]) else "") + f" ({r['status']})"
        for r in rows)
    if not table["converged"].all():
        value += "; at the budget's end, not judged: " + "; ".join(
            f"seed {s}: " + ", ".join(f"wd={w:g} {bracket_text(*b[w])}" for w in sorted(b)) for s, b in end.items())
    v = verdict(claim="P3 ungrokking: the transition does not depend on weight decay (Sec. 5.2, Fig. 4)",
                passage="\"test accuracy at convergence is independent of the strength of weight decay\"",
                rule=f"per source network, the converged runs' bracket of the D' where test accuracy crosses {level:g} "
                     f"at each weight decay ({', '.join(f'{w:g}' for w in wds)}); a network holds if even the widest "
                     f"spread (largest / smallest D') the brackets allow is <= {max_spread:g}, fails if even the "
                     f"narrowest is > {max_spread:g}; held if every decided network holds, not held if fewer than half do",
                min_seeds=min_seeds, seeds=f"{len(decided)} decided",
                convergence=f"each run judged by grok.py's convergence test, its accuracy read at {level:g} "
                            "(settled_at_levels); unsettled runs neither block nor narrow",
                n_converged=int(settled(table, level).sum()), n_runs=len(table["D"]), value=value,
                spread=spread_text([r["wide"] for r in decided]),
                result=outcome(len(decided) >= min_seeds and len(wds) >= 2, True, n_held == len(decided),
                               n_held < len(decided) / 2))
    return dict(v, rows=rows)


def dcrit_brackets(table, levels=(0.5, 0.7), by_wd=True):
    """D_crit per network seed (and weight decay) as brackets: rows (wd or nan, level, {seed: (lo, hi)} of converged runs,
    the same of every run's last state, shown and not judged)."""
    out = []
    for level in levels:
        for w in (np.unique(table["wd"]) if by_wd else [float("nan")]):
            sub = {k: v[table["wd"] == w] for k, v in table.items()} if by_wd else table
            b = {s[0]: bracket(c["D"], c["test_acc"], settled(c, level), level) for s, c in curves(sub, keys=("seed",))}
            end = {s[0]: bracket(c["D"], c["test_acc"], np.ones(len(c["D"]), bool), level)
                   for s, c in curves(sub, keys=("seed",))}  # shown, not judged: every run's last state
            out.append((float(w), level, b, end))
    return out


def semi_rule(near=0.99, low=0.2, high=0.9, min_rise=0.15, delay=5.0, settle=0.05):
    """The numbers of P4's classification of a run, in one place (semi_outcomes uses them, check_p4 states them)."""
    return dict(near=near, low=low, high=high, min_rise=min_rise, delay=delay, settle=settle)


def semi_outcomes(epoch, train_acc, test_acc, converged, rule=None):
    """Each run's outcome: "grokked", "semi-grokked", "none", "transient" (unconverged, middling) or "unsettled"."""
    # Sec. 5.3: "(P4) ... we should observe a transition to middling test accuracy well after
    # near-perfect train accuracy". Readings taken: near-perfect train accuracy is >= `near`;
    # middling is within [low, high]; a transition is a rise of at least min_rise over the test
    # accuracy at near-perfect train accuracy, whose half-way point comes at least `delay` times
    # later ("well after"). P4 speaks of the network at convergence, so only a run that ends
    # converged (grok.py's test, recorded while the run trains on: a semi-grokking run is never
    # stopped, since Fig. 6's plateau lasts for most of its training before the rise) is
    # classified; an unconverged middling run is "transient" (Fig. 5: "transient semi-grokking")
    # and any other unconverged run "unsettled". `sat`: the epochs since test accuracy was last
    # more than `settle` from its final value, how long the run has sat at its final level.
    rule = rule or semi_rule()
    near, low, high, min_rise, delay = (rule[k] for k in ("near", "low", "high", "min_rise", "delay"))
    rows = []
    for tr, te, conv in zip(train_acc, test_acc, converged):
        fit = np.flatnonzero(tr >= near)
        final = float(te[-1])
        t_fit = float(epoch[fit[0]]) if len(fit) else float("nan")
        then = float(te[fit[0]]) if len(fit) else float("nan")
        half = then + 0.5 * (final - then)
        after = np.flatnonzero((te >= half) & (epoch >= t_fit)) if len(fit) else []
        t_rise = float(epoch[after[0]]) if len(after) and final - then >= min_rise else float("nan")
        away = np.flatnonzero(np.abs(te - final) > rule["settle"])
        sat = float(epoch[-1] - epoch[away[-1] + 1]) if len(away) else float(epoch[-1] - epoch[0])
        middling = low <= final <= high
        if not conv:
            name = "transient" if middling else "unsettled"
        elif final > high:
            name = "grokked"
        elif middling and np.isfinite(t_rise) and t_rise >= delay * max(t_fit, 1.0):
            name = "semi-grokked"
        else:
            name = "none"
        rows.append(dict(t_fit=t_fit, then=then, final=final, t_rise=t_rise, sat=sat, outcome=name))
    return rows


def p4_runs_needed(rate=6 / 200, miss=0.05):
    """How many converged runs make "none semi-grokked" evidence against P4: the least n with (1 - rate)^n <= miss."""
    # Fig. 5 caption: "Out of 200 runs, at least 6 show clear semi-grokking". At that rate, n runs
    # all miss it with chance (1 - 0.03)^n; below 99 runs that chance is over 5%, and seeing none
    # says little (16 runs: 0.61).
    return int(math.ceil(math.log(miss) / math.log(1 - rate)))


def check_p4(rows, seed, min_semi=2, rule=None):
    """P4, semi-grokking: converged runs with a delayed rise to middling test accuracy, in >= min_semi networks."""
    # Sec. 5.3 / Fig. 5 caption: "Out of 200 runs, at least 6 show clear semi-grokking at the end of
    # training". Held: runs of at least min_semi seeds (independent networks) semi-grok. Not held:
    # at least p4_runs_needed() runs converged and none semi-grokked. The paper's 200 runs are 10
    # seeds x 20 sizes, so runs of one seed at different D (different training sets) count as runs
    # here as they do there; "held" asks for distinct seeds.
    seed = np.asarray(seed)
    names = [r["outcome"] for r in rows]
    counts = {k: names.count(k) for k in ("semi-grokked", "grokked", "none", "transient", "unsettled")}
    n_conv = sum(k in ("semi-grokked", "grokked", "none") for k in names)
    semi_seeds = n_seeds([s for s, n in zip(seed, names) if n == "semi-grokked"])
    need = p4_runs_needed()
    q = rule or semi_rule()  # the rule the rows were classified by (semi_outcomes)
    rule_text = (f"a converged run semi-groks when its final test accuracy is in [{q['low']:g}, {q['high']:g}], reached "
                 f"by a rise of >= {q['min_rise']:g} over its test accuracy at train accuracy >= {q['near']:g}, half-way "
                 f">= {q['delay']:g}x later; held if runs of >= {min_semi} seeds semi-grok, not held if >= {need} runs "
                 "converged (at the paper's rate of 6 in 200, all would miss it with chance <= 5%) and none did")
    value = ", ".join(f"{n} {k}" for k, n in counts.items()) + f" (semi-grokked in {semi_seeds} seeds)"
    if counts["semi-grokked"] == 0 and n_conv < need:
        value += f"; 'none' would need {need} converged runs, here {n_conv}"
    v = verdict(claim="P4 semi-grokking: middling test accuracy at convergence just above D_crit (Sec. 5.3, Fig. 5)",
                passage="\"Out of 200 runs, at least 6 show clear semi-grokking at the end of training\" (Fig. 5)",
                rule=rule_text, min_seeds=min_semi, seeds=f"{len(rows)} runs, {n_seeds(seed)} seeds",
                convergence="each run ends converged by grok.py's test (recorded, never stopped)",
                n_converged=n_conv, n_runs=len(rows), value=value, spread="counts over runs",
                result=outcome(True, True, semi_seeds >= min_semi, counts["semi-grokked"] == 0 and n_conv >= need))
    return dict(v, counts=counts, need=need)


# Student's t quantile t_{0.95, df} for df = 1 ... 30 (the 90% two-sided interval), from the standard
# table (e.g. NIST/SEMATECH e-Handbook of Statistical Methods, Table 1.3.6.7.2); above 30, 1.645.
T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753,
       1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697)


def t95(df):
    """Student's t_{0.95, df} (the 90% two-sided interval's multiplier): the table, 1.645 above 30."""
    return T95[df - 1] if df <= len(T95) else 1.645


def stripe_slope(rows):
    """b of log P = a_{s,D} + b log o: the slope within each (seed, D) group of runs, pooled over the groups (nan if none spans two logits)."""
    # Sec. 5.1 on Fig. 3c: runs "with the same seed and dataset size, but different weight decay"
    # form stripes, and "when the noise from the random seed is removed, increased parameter norm
    # clearly leads to increased logits". So b is read inside the stripes, where seed and D are fixed.
    x, y = np.log(rows["logit"]), np.log(rows["norm"])
    num = den = 0.0
    for key in set(zip(rows["seed"].tolist(), rows["D"].tolist())):
        at = (rows["seed"] == key[0]) & (rows["D"] == key[1])
        xc = x[at] - x[at].mean()
        num, den = num + float(xc @ (y[at] - y[at].mean())), den + float(xc @ xc)
    return num / den if den > 0 else float("nan")


def per_seed_cs(rows):
    """c_s, the slope over log D of a seed's stripe intercepts a_{s,D} = mean(log P - b log o): (c_s [S], points used, b)."""
    # The seed is the independent unit: each seed's runs at two or more sizes give one c_s, and a
    # t-interval over the seeds' c_s is valid for the number of seeds there are (a bootstrap over
    # 3-5 seeds is not). b is one number per circuit, from every stripe (stripe_slope). (Changed,
    # before the long profile's present grid ran, from a b_s fitted per seed with a_s and c_s: that
    # fit needs every one of a seed's four runs to qualify, leaves b_s to two weight-decay contrasts
    # whose logits differ by a few per cent, and passes an error in b_s into c_s through the
    # logit's difference between sizes. The reason is the fit's conditioning, not a verdict.)
    ok = (rows["logit"] > 0) & (rows["norm"] > 0) & (rows["D"] > 0)
    rows = {k: np.asarray(v)[ok] for k, v in rows.items()}
    b = stripe_slope(rows)
    cs, n = [], 0
    if not np.isfinite(b):
        return np.array(cs), n, b
    resid = np.log(rows["norm"]) - b * np.log(rows["logit"])  # log P with the logit's share taken out
    for s in np.unique(rows["seed"]):
        Ds = np.unique(rows["D"][rows["seed"] == s])
        if len(Ds) < 2:
            continue
        a = np.array([resid[(rows["seed"] == s) & (rows["D"] == D)].mean() for D in Ds])  # [sizes]
        logD = np.log(Ds.astype(float))
        cs.append(float(np.polyfit(logD, a, 1)[0]))
        n += int(np.sum(rows["seed"] == s))
    return np.array(cs), n, b


def per_seed_fit(rows):
    """c of log P = a_{s,D} + b log o over sizes per network seed, and the 90% t-interval of the mean c over seeds.

    Returns (mean c, lo, hi, seeds fitted, points used, b); nan where fewer than 2 seeds can be fitted.
    """
    cs, n, b = per_seed_cs(rows)
    if len(cs) < 2:
        return float(cs.mean()) if len(cs) else float("nan"), float("nan"), float("nan"), len(cs), n, b
    half = t95(len(cs) - 1) * cs.std(ddof=1) / math.sqrt(len(cs))
    return float(cs.mean()), float(cs.mean() - half), float(cs.mean() + half), len(cs), n, b


def seeds_for_interval(mean, sd, inside, most=1000):
    """The fewest seeds whose 90% t-interval mean +- t sd / sqrt(n) satisfies inside(lo, hi), at this mean and spread."""
    # A planning figure, not a verdict: it assumes the next seeds' c_s have the mean and spread of
    # these. inf when no number of seeds up to `most` would do (the mean itself fails the rule).
    for n in range(2, most + 1):
        half = t95(n - 1) * sd / math.sqrt(n)
        if inside(mean - half, mean + half):
            return n
    return math.inf


def seeds_to_train(q, k, need=2, want=5, prob=0.9, most=1000):
    """Seeds to train so that >= want of them, with probability prob, have >= need of their k units qualify: (N, P(a seed does))."""
    # Each unit (for P1, a size: it qualifies when one of its runs does) qualifies independently at
    # rate q, a planning assumption; a seed fits when at least `need` of its k units do. Binomial
    # sums, exact.
    binom = lambda n, j, x: math.comb(n, j) * x ** j * (1 - x) ** (n - j)
    per_seed = sum(binom(k, j, q) for j in range(need, k + 1))
    for N in range(want, most + 1):
        if 1 - sum(binom(N, j, per_seed) for j in range(want)) >= prob:  # P(>= want) from its complement
            return N, per_seed
    return math.inf, per_seed


def p1_rows(eff, min_trig=0.95, fit=0.99, min_seeds=5, need_converged=True):
    """The C_mem-only and C_gen-only rows of an efficiency table that P1 may use, with the reasons others left."""
    # Sec. 5.1: "We produce C_mem-only networks by using completely random labels for the training
    # data ... We produce C_gen-only networks by training on large dataset sizes and checking that
    # > 95% of the logit norm comes from just the trigonometric subspace." Requirements added here:
    # a C_mem-only run has fitted its training set (train accuracy >= fit) and converged; a
    # C_gen-only run was trained from scratch, converged and has test accuracy >= fit. The trig
    # share judged is App. B's trig_frac (of the logit norm^2); the centred reading is shown beside
    # it. A dataset size counts for a circuit only with >= min_seeds such runs (independent seeds).
    conv = eff["converged"] if need_converged else np.ones(len(eff["converged"]), bool)  # False: shown, not judged
    mem = eff["random_labels"] & conv & (eff["train_acc"] >= fit)
    gen = ~eff["random_labels"] & ~eff["init_from"] & conv & (eff["trig_frac"] > min_trig) & (eff["test_acc"] >= fit)
    out = {}
    for name, sel, logit in (("mem", mem, "o_m_train"), ("gen", gen, "o_t")):
        keep = sel.copy()
        for D in np.unique(eff["n_train"][sel]):
            at = sel & (eff["n_train"] == D)
            if n_seeds(eff["seed"][at]) < min_seeds:
                keep &= ~at
        out[name] = dict(logit=eff[logit][keep], norm=eff["param_norm"][keep], D=eff["n_train"][keep],
                         seed=eff["seed"][keep])
    gen_all = ~eff["random_labels"] & ~eff["init_from"]
    out["trig"] = dict(judged=eff["trig_frac"][gen_all], centred=eff["trig_frac_centred"][gen_all])
    out["n_candidates"] = dict(mem=int(eff["random_labels"].sum()), gen=int(gen_all.sum()))
    return out


def mem_holds(lo, hi, mem_min=0.0):
    """P1's rule for C_mem: the interval of c lies above mem_min (the norm at a fixed logit grows with D)."""
    return lo > mem_min


def gen_holds(lo, hi, gen_margin=0.1):
    """P1's rule for C_gen: the interval of c lies inside [-gen_margin, gen_margin] (the norm does not move with D)."""
    return -gen_margin <= lo and hi <= gen_margin


def check_p1(rows, mem_min=0.0, gen_margin=0.1, min_seeds=5):
    """P1: at a fixed logit C_mem's parameter norm grows with D (c_mem > 0) and C_gen's does not (|c_gen| small)."""
    # Sec. 5.1: "(P1) Efficiency. We predict (Section 4.1) that memorisation efficiency decreases with
    # increasing train dataset size, while generalisation efficiency stays constant." Fig. 3's
    # isologits show the norm needed for a fixed logit against D. Fit log P = a_{s,D} + b log o, b
    # from the stripes (stripe_slope), and per network seed the slope c_s of a_{s,D} over log D
    # (per_seed_fit): c is the growth of the norm with D at a fixed logit, with a 90% t-interval
    # over seeds. Held: C_mem's interval lies above mem_min and C_gen's inside
    # [-gen_margin, gen_margin] (doubling D changes C_gen's norm by under 7%). Not held: C_mem's
    # interval lies at or below mem_min, or C_gen's lies wholly outside the margin. Reading taken:
    # "decreases" is an interval above 0 (any growth of the norm with D), and "stays constant" an
    # equivalence margin. (The seed minimum went from 3 to 5 and the interval from a seed bootstrap
    # to a t-interval for a reason independent of any outcome: a bootstrap over 3 seeds has no
    # valid coverage.)
    fits = {k: per_seed_fit(rows[k]) if len(rows[k]["D"]) else (float("nan"),) * 3 + (0, 0, float("nan"))
            for k in ("mem", "gen")}
    (cm, mlo, mhi, sm, nm, bm), (cg, glo, ghi, sg, ng, bg) = fits["mem"], fits["gen"]
    seeds = min(sm, sg)
    sizes = {k: np.unique(rows[k]["D"]) for k in ("mem", "gen")}
    enough = seeds >= min_seeds and all(len(s) >= 2 for s in sizes.values()) and np.isfinite([mlo, glo]).all()
    held = mem_holds(mlo, mhi, mem_min) and gen_holds(glo, ghi, gen_margin)
    failed = mhi <= mem_min or glo > gen_margin or ghi < -gen_margin
    fmt = lambda s: ", ".join(str(int(d)) for d in s) or "none"
    trig = rows["trig"]
    trig_text = (f"; trig share of the from-scratch runs (judged: of the logit norm^2) {spread_text(trig['judged'], '{:.3f}')}, "
                 f"centred reading {spread_text(trig['centred'], '{:.3f}')}" if len(trig["judged"]) else "")
    v = verdict(claim="P1 efficiency: C_mem's norm at a fixed logit grows with D, C_gen's does not (Sec. 5.1, Fig. 3)",
                passage="\"memorisation efficiency decreases with increasing train dataset size, while generalisation "
                        "efficiency stays constant\"",
                rule=f"per circuit, log P = a_(s,D) + b log o with b from the runs of one seed and D (Fig. 3c's "
                     f"stripes), and per network seed c_s, the slope of a_(s,D) over log D; held if C_mem's 90% "
                     f"t-interval of c over seeds lies above {mem_min:g} and C_gen's inside [-{gen_margin:g}, {gen_margin:g}]",
                min_seeds=min_seeds, seeds=f"{seeds} (fewest of the two circuits)",
                convergence="C_mem: converged and train acc >= 0.99; C_gen: from scratch, converged, test acc >= 0.99, "
                            f"> 95% trig; >= {min_seeds} seeds at each D", n_converged=nm + ng,
                n_runs=rows["n_candidates"]["mem"] + rows["n_candidates"]["gen"],
                value=(f"c_mem = {cm:.3f} [{mlo:.3f}, {mhi:.3f}] at D = {fmt(sizes['mem'])} (b = {bm:.3f})" if nm else
                       "no C_mem-only run meets the requirements") + "; " +
                      (f"c_gen = {cg:.3f} [{glo:.3f}, {ghi:.3f}] at D = {fmt(sizes['gen'])} (b = {bg:.3f})" if ng else
                       "no C_gen-only run meets the requirements") + trig_text,
                spread="90% t-intervals over seeds in brackets", result=outcome(enough, True, held, failed))
    return dict(v, c_mem=(cm, mlo, mhi), c_gen=(cg, glo, ghi), sizes=sizes)


def p1_needs(eff, min_seeds=5, prob=0.9):
    """What P1's verdict needs, from the runs there are: seeds to train per circuit, and seeds for the interval to settle."""
    # Planning figures printed beside the verdict, never part of it. Qualifying: P1's requirements
    # but the seeds-per-D minimum (p1_rows with min_seeds=1), at the sizes where any run qualified.
    # A seed is fitted when it has a qualifying run at 2 or more sizes: with m runs a size, a size
    # has one with probability 1 - (1 - q)^m. The spread of c_s comes from the converged fit, or
    # from the fit at the budget's end (marked so) where fewer than 2 seeds fit.
    kept = p1_rows(eff, min_seeds=1)
    loose = p1_rows(eff, min_seeds=1, need_converged=False)
    cand = dict(mem=eff["random_labels"], gen=~eff["random_labels"] & ~eff["init_from"])
    rules = dict(mem=mem_holds, gen=gen_holds)
    parts = []
    for name, label in (("mem", "C_mem"), ("gen", "C_gen")):
        sizes = np.unique(kept[name]["D"])
        if not len(sizes):
            parts.append(f"{label}: no run qualifies")
            continue
        at = cand[name] & np.isin(eff["n_train"], sizes)
        q = len(kept[name]["D"]) / max(int(at.sum()), 1)
        k = int(np.median([np.sum(at & (eff["seed"] == s)) for s in np.unique(eff["seed"][at])]))
        m = max(k // len(sizes), 1)  # runs per seed and size
        q_size = 1 - (1 - q) ** m
        N, per_seed = seeds_to_train(q_size, len(sizes), 2, min_seeds, prob)
        text = (f"{label}: {len(kept[name]['D'])} of {int(at.sum())} runs at D = {', '.join(str(int(d)) for d in sizes)} "
                f"qualify ({q:.2f}); a seed with {m} run(s) at each of these {len(sizes)} sizes has one qualifying at "
                f">= 2 of them with probability {per_seed:.2f}, so {min_seeds} fitted seeds take "
                f"{N if np.isfinite(N) else 'more than 1000'} seeds to train ({prob:.0%} chance)")
        cs, _, _ = per_seed_cs(kept[name])
        where = ""
        if len(cs) < 2:
            cs, _, _ = per_seed_cs(loose[name])
            where = ", from the fit at the budget's end"
        if len(cs) >= 2:
            n = seeds_for_interval(cs.mean(), cs.std(ddof=1), lambda lo, hi: rules[name](lo, hi))
            text += (f"; c_s over {len(cs)} seeds {cs.mean():.3f} +- {cs.std(ddof=1):.3f} (sd{where}): the interval meets "
                     f"the held rule from {n if np.isfinite(n) else 'no number of'} fitted seeds at that mean and spread")
        parts.append(text)
    return "; ".join(parts)


def average_ranks(v):
    """Ranks 0 ... n-1 of v, ties given the mean of the ranks they span."""
    v = np.asarray(v, float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x, y):
    """Spearman rank correlation of two equal-length arrays (ties by average rank); nan for fewer than 3."""
    if len(x) < 3:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def check_fig10(eff, min_rho=0.8, min_seeds=3, min_runs=3):
    """App. A.4: the C_gen / C_mem logit ratio rises monotonically with D' across the ungrokking runs."""
    # App. A.4: "the ratio of the C_gen to C_mem logit o_t^y/o_m^y should increase monotonically
    # with dataset size". o_m^y (App. B's, Z_M = Z - Z_T) goes through zero and changes sign (App. B,
    # Flaw 2), where o_t/o_m jumps from +inf to -inf; its reciprocal o_m/o_t is continuous there, and
    # falls where o_t/o_m rises (o_t > 0). Per curve (source seed, weight decay) with at least
    # min_runs converged runs: Spearman's rank correlation of -o_m/o_t with D' over those runs.
    # Held: the median over curves >= min_rho; not held: below it. o_t/o_m's correlation is shown.
    with np.errstate(divide="ignore", invalid="ignore"):
        judged, shown = -eff["o_m_train"] / eff["o_t"], eff["o_t"] / eff["o_m_train"]
    t = dict(D=eff["n_train"], seed=eff["seed"], wd=eff["wd"], judged=judged, shown=shown, converged=eff["converged"])
    rhos, rhos_shown, seeds = [], [], []
    for (s, _), c in curves(t):
        k = c["converged"]
        if k.sum() >= min_runs:
            rhos.append(spearman(c["D"][k], c["judged"][k]))
            rhos_shown.append(spearman(c["D"][k], c["shown"][k]))
            seeds.append(s)
    ok = np.isfinite(rhos)
    rhos, seeds = np.array(rhos)[ok], np.array(seeds)[ok]
    med = float(np.median(rhos)) if len(rhos) else float("nan")
    value = (f"median rank correlation of -o_m/o_t with D' {med:.2f} over {len(rhos)} curves; of o_t/o_m "
             f"{np.nanmedian(rhos_shown):.2f}" if len(rhos) else f"no curve with {min_runs} converged runs")
    v = verdict(claim="the C_gen / C_mem logit ratio rises with D' (App. A.4, Fig. 10)",
                passage="\"the ratio of the C_gen to C_mem logit o_t^y/o_m^y should increase monotonically with dataset "
                        "size\"",
                rule=f"per ungrokking curve with >= {min_runs} converged runs, Spearman's rank correlation of -o_m^y/o_t^y "
                     f"(continuous where o_m^y changes sign) with D' over them; held if the median over curves is "
                     f">= {min_rho:g}, not held if below",
                min_seeds=min_seeds, seeds=n_seeds(seeds), convergence=f">= {min_runs} converged runs per curve",
                n_converged=int(eff["converged"].sum()), n_runs=len(eff["n_train"]), value=value,
                spread=spread_text(rhos),
                result=outcome(n_seeds(seeds) >= min_seeds, len(rhos) > 0, med >= min_rho, med < min_rho))
    return v


def time_to_grok(epoch, test_acc, level=0.99):
    """Per run, the first recorded epoch with test accuracy >= level, and whether it never came (a bound): (t [R], censored [R])."""
    t = np.array([first_epoch(epoch, a, level) for a in test_acc])
    return np.where(np.isfinite(t), t, float(epoch[-1])), ~np.isfinite(t)


def grok_time_text(t, censored):
    """Times to grok of one weight decay's runs: "1400-2100 (3 of 3)", with the unreached as "> 4000"."""
    seen = t[~censored]
    parts = [f"{seen.min():.0f}-{seen.max():.0f}" if len(seen) > 1 else f"{seen[0]:.0f}"] if len(seen) else []
    if censored.any():
        parts.append(f"{int(censored.sum())} not within {t[censored].max():.0f} epochs")
    return ", ".join(parts) + f" ({len(seen)} of {len(t)} grokked)"


def check_wd(wd, seed, t, censored, level=0.99, max_rho=-0.8, min_seeds=3, min_wds=3):
    """Weight decay: the epochs to reach `level` test accuracy fall as weight decay rises (wd 0 shown, not judged)."""
    # The mechanistic paper's summary: weight decay forces the simpler solution, "with higher decay
    # rates leading to faster grokking"; Varma et al. (Sec. 7): their theory would "neatly explain
    # why grokking takes longer as weight decay decreases". The time to grok is the first epoch
    # with test accuracy >= level; a run that never got there within its budget is a bound,
    # "> budget", never dropped. The weight decays judged are those > 0 at which at least min_seeds
    # seeds grokked. Per network seed, Spearman's rank correlation of its times with weight decay
    # over the judged weight decays, a bound ranked above every time seen (it exceeds the budget,
    # which every time seen is within); a seed counts with at least min_wds of them. Held: the
    # median over seeds <= max_rho; not held: above it. Weight decay 0 is reported, not judged:
    # Sec. 7 says grokking without it "is slower and often much harder to elicit", not that it
    # never comes.
    wd, seed, t, censored = (np.asarray(x) for x in (wd, seed, t, censored))
    rank_t = np.where(censored, np.inf, t)
    judged = [w for w in np.unique(wd[wd > 0]) if n_seeds(seed[(wd == w) & ~censored]) >= min_seeds]
    rhos, used = [], []
    for s in np.unique(seed):
        k = (seed == s) & np.isin(wd, judged)
        if len(np.unique(wd[k])) >= min_wds:
            rhos.append(spearman(wd[k], rank_t[k]))
            used.append(s)
    ok = np.isfinite(rhos)
    rhos, used = np.array(rhos)[ok], np.array(used)[ok]
    med = float(np.median(rhos)) if len(rhos) else float("nan")
    per_wd = "; ".join(f"wd {w:g}: {grok_time_text(t[wd == w], censored[wd == w])}" + ("" if w in judged else
                       (" (shown, not judged)" if w == 0 else " (too few grokked: not judged)")) for w in np.unique(wd))
    value = (f"median rank correlation of epochs to grok with weight decay {med:.2f} over {len(rhos)} seeds"
             if len(rhos) else f"fewer than {min_wds} weight decays at which {min_seeds} seeds grokked") + \
        f"; epochs to test acc >= {level:g}: {per_wd}"
    v = verdict(claim="time to grok falls as weight decay rises (Sec. 7)",
                passage="\"higher decay rates leading to faster grokking\" (Nanda et al., summary); \"grokking takes "
                        "longer as weight decay decreases\" (Sec. 7)",
                rule=f"per seed, Spearman's rank correlation of its epochs to test acc >= {level:g} with weight decay over the "
                     f"weight decays > 0 at which >= {min_seeds} seeds grokked (>= {min_wds} of them; a run that never "
                     f"grokked ranks above every time seen); held if the median over seeds <= {max_rho:g}, not held if above",
                min_seeds=min_seeds, seeds=n_seeds(used),
                convergence=f"none needed (an event); >= {min_wds} weight decays with {min_seeds} seeds grokked",
                n_converged=int((~censored).sum()), n_runs=len(t), value=value, spread=spread_text(rhos),
                result=outcome(n_seeds(used) >= min_seeds, len(rhos) > 0, med <= max_rho, med > max_rho))
    return dict(v, judged=judged, rhos=rhos)


# -----------------------------------------------------------------------------
# Figures: one function per figure of the paper, drawn from saved arrays


def title_of(data, width):
    """A figure's saved title, wrapped to lines of at most width characters."""
    return textwrap.fill(str(data["title"]), width)


def finish_curves(fig, ax, bx, data, path):
    """Label and save a pair of panels over epochs (log axis): accuracy in ax, loss (log) in bx."""
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    bx.set_yscale("log")
    bx.set_ylabel("loss")
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
        analysis.legend(a, fontsize=8)
    fig.suptitle(title_of(data, 120), fontsize=10)
    fig.tight_layout()
    analysis.save_figure(fig, path)


def plot_fig1(data, path):
    """One panel of Fig. 1 of the paper: train and test accuracy (and loss) over epochs, log axis."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    e = np.maximum(data["epoch"], 1)  # epoch 0 on a log axis: drawn at 1
    ax.plot(e, data["train_acc"], label="train", color="C0")
    ax.plot(e, data["test_acc"], label="test", color="C3")
    bx.plot(e, data["train_loss"], label="train", color="C0")
    bx.plot(e, data["test_loss"], label="test", color="C3")
    finish_curves(fig, ax, bx, data, path)


def plot_grokking_averaged(data, path):
    """The grokking pattern averaged over seeds ("Four explanations for Grokking"): mean train and test curves, each seed faded."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    e = np.maximum(data["epoch"], 1)  # epoch 0 on a log axis: drawn at 1
    for key, color, a in (("train_acc", "C0", ax), ("test_acc", "C3", ax), ("train_loss", "C0", bx),
                          ("test_loss", "C3", bx)):
        for row in data[key]:  # [S, T]: one faded curve per seed
            a.plot(e, row, color=color, alpha=0.2, lw=0.8)
        mean = (np.exp(np.log(np.maximum(data[key], 1e-300)).mean(axis=0)) if "loss" in key  # loss: geometric mean
                else data[key].mean(axis=0))
        a.plot(e, mean, color=color, lw=2, label=f"{key.split('_')[0]} (mean of {len(data[key])} seeds)")
    finish_curves(fig, ax, bx, data, path)


def plot_wd_time_to_grok(data, path):
    """Epochs to grok against weight decay, one point per seed; a run that never grokked is an arrow up from its budget."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    wds = np.unique(data["wd"])
    pos = {w: i for i, w in enumerate(wds)}  # evenly spaced: the grid is geometric, and weight decay 0 has a place
    for w in wds:
        sel = data["wd"] == w
        x = pos[w] + np.linspace(-0.12, 0.12, sel.sum()) if sel.sum() > 1 else np.array([pos[w]], float)
        t, cens = data["t"][sel], data["censored"][sel]
        ax.scatter(x[~cens], t[~cens], color="C0", s=22, zorder=3)
        for xi, ti in zip(x[cens], t[cens]):
            ax.annotate("", xy=(xi, ti * 1.6), xytext=(xi, ti), arrowprops=dict(arrowstyle="->", color="C3"))
        ax.scatter(x[cens], t[cens], color="C3", marker="_", s=60, zorder=3)
    ax.scatter([], [], color="C0", s=22, label="epoch test accuracy first >= 0.99 (a seed)")
    ax.scatter([], [], color="C3", marker="_", s=60, label="not within the budget: more than this")
    ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
    ax.set_xlabel("weight decay")
    ax.set_yscale("log")
    ax.set_ylim(max(float(np.min(data["t"])) / 2, 1), float(np.max(data["t"])) * 2.5)  # room for the arrows
    ax.set_ylabel("epochs to grok")
    ax.grid(alpha=0.3)
    analysis.legend(ax, fontsize=8)
    ax.set_title(title_of(data, 70), fontsize=9)
    fig.tight_layout()
    analysis.save_figure(fig, path)


def plot_fig4(data, path):
    """Fig. 4 of the paper: converged test accuracy after ungrokking against D', a line per weight decay."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, wd in enumerate(np.unique(data["wd"])):
        sel = data["wd"] == wd
        conv = sel & data["converged"]
        ax.scatter(data["D"][conv], data["test_acc"][conv], color=f"C{i}", s=10, alpha=0.5)
        ax.scatter(data["D"][sel & ~data["converged"]], data["test_acc"][sel & ~data["converged"]], color=f"C{i}",
                   s=18, marker="x", alpha=0.8)
        xs, ys = mean_by(data["D"][sel], data["test_acc"][sel])
        ax.plot(xs, ys, color=f"C{i}", marker="o", ms=3, label=f"wd = {wd:g}")
    ax.set_xscale("log")
    ax.set_xlabel("reduced dataset size D' (x: run not converged)")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    analysis.legend(ax, fontsize=8)
    ax.set_title(title_of(data, 75), fontsize=9)
    fig.tight_layout()
    analysis.save_figure(fig, path)


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
    ax.set_title(title_of(data, 75), fontsize=9)
    fig.tight_layout()
    analysis.save_figure(fig, path)


def plot_fig5(data, path):
    """Fig. 5 of the paper: test accuracy over epochs of every semi-grokking run, coloured by final accuracy."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    e = np.maximum(data["epoch"], 1)
    for r in np.argsort(data["final"]):  # the most generalising runs drawn last, on top
        ax.plot(e, data["test_acc"][r], color=plt.cm.viridis(data["final"][r]), lw=0.8, alpha=0.8)
    fig.colorbar(plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap="viridis"), ax=ax,
                 label="final test accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title_of(data, 75), fontsize=9)
    fig.tight_layout()
    analysis.save_figure(fig, path)


def plot_fig6(data, path):
    """Fig. 6 of the paper: one semi-grokking run in detail: accuracy, loss and parameter norm over epochs."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    e = np.maximum(data["epoch"], 1)
    for ax, what in zip(axes[:2], ("acc", "loss")):
        ax.plot(e, data[f"train_{what}"], label="train", color="C0")
        ax.plot(e, data[f"test_{what}"], label="test", color="C3")
        ax.set_ylabel("accuracy" if what == "acc" else "loss")
        analysis.legend(ax, fontsize=8)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_yscale("log")
    axes[2].plot(e, data["param_norm"], color="k")
    axes[2].set_ylabel("parameter norm")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title_of(data, 120), fontsize=10)
    fig.tight_layout()
    analysis.save_figure(fig, path)


def plot_fig8(data, path):
    """Fig. 8 of the paper: converged test accuracy after ungrokking against D', one panel per task, a line per wd."""
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
        analysis.legend(ax, fontsize=7)
    axes[0, 0].set_ylabel("final test accuracy")
    fig.suptitle(title_of(data, 120), fontsize=10)
    fig.tight_layout()
    analysis.save_figure(fig, path)


# -----------------------------------------------------------------------------
# results.md, one function per section; each also draws its figures (from arrays it saves first)


def curves_of(sweep, r):
    """Train/test accuracy, loss and parameter norm of run r over the recorded epochs."""
    h = sweep["hist"]
    return dict(epoch=h["epoch"], **{k: h[k][r] for k in ("train_acc", "test_acc", "train_loss", "test_loss",
                                                          "param_norm")})


def budget(sweep):
    """A directory's task, modulus and epoch budget, for titles: e.g. "add mod 41, up to 6000 epochs"."""
    c = sweep["cfg"]
    stop = ""
    if c.get("converge_window", 0) > 0:
        stop = ", convergence test recorded" if c.get("converge_train_on") else ", convergence stop"
    if c.get("wd_budget", 0) > 0:  # each run to lr*wd*epochs = T, at most --epochs
        return (f"{c['task']} mod {c['p']}, each run to lr*wd*epochs = {c['wd_budget']:g} (at most {c['epochs']} "
                f"epochs){stop}")
    return f"{c['task']} mod {c['p']}, up to {c['epochs']} epochs{stop}"


def draw(data, plot, folder, name):
    """Save a figure's arrays to NAME.npz, then draw NAME.png from the saved file."""
    npz = os.path.join(folder, name + ".npz")
    grok.save_npz({k: np.asarray(v) for k, v in data.items()}, npz)
    plot(analysis.load_npz(npz), os.path.join(folder, name + ".png"))


def section_toy(folder):
    """The toy model (Fig. 2): lines and a summary row."""
    L = ["## The toy model's three ingredients (Sec. 3, Fig. 2)", ""]
    csv = path_of(folder, "toy_csv")
    if not os.path.exists(csv):
        return L + ["Not run (stage fig2).", ""], []
    v = check_toy(csv)
    return L + verdict_lines(v) + ["Figure: `fig2_toy.png`.", ""], [("toy: steps to half the peak loss", v)]


def section_grokking(folder):
    """Grokking (Fig. 1a, 1 run at p=113) and the from-scratch runs that decide it."""
    L = ["## Grokking (Fig. 1a)", ""]
    g, s = path_of(folder, "grok"), path_of(folder, "scratch")
    if finished(g):
        sweep = analysis.load_sweep(g)
        D = sweep["runs"]["n_train"][0]
        title = f"Fig. 1a: grokking, {budget(sweep)}, D={D} ({100 * D / sweep['n_pairs']:.0f}% of pairs), wd=1"
        c = curves_of(sweep, 0)
        draw(dict(c, title=title), plot_fig1, folder, "fig1a_grokking")
        L += [f"The paper's standard run ({budget(sweep)}, one network): train accuracy first >= 0.99 at epoch "
              f"{first_epoch(c['epoch'], c['train_acc'], 0.99):.0f}, test accuracy at epoch "
              f"{first_epoch(c['epoch'], c['test_acc'], 0.99):.0f}. One network is shown, not judged. Figures: "
              "`fig1a_grokking.png`, `analysis_grok/fig9_run0.png`.", ""]
    if not finished(s):
        return L + ["The from-scratch sweep was not run (stage fig5): no verdict.", ""], []
    sweep = analysis.load_sweep(s)
    v = check_grokking(sweep["hist"]["epoch"], sweep["hist"]["train_acc"], sweep["hist"]["test_acc"],
                       np.array(sweep["runs"]["seed"]))
    L += [f"Judged on the from-scratch sweep ({budget(sweep)}, D = "
          f"{', '.join(str(d) for d in sorted(set(sweep['runs']['n_train'])))}):", ""]
    table = run_table(sweep)
    D = grokking_D(table)
    rows = np.flatnonzero(table["D"] == D)
    draw(averaged_curves(sweep, rows, f"Grokking averaged over {len(rows)} seeds: from scratch, {budget(sweep)}, D={D} "
                                    f"({100 * D / sweep['n_pairs']:.0f}% of pairs), wd={table['wd'][rows[0]]:g}"),
         plot_grokking_averaged, folder, "grokking_averaged_scratch")
    return L + verdict_lines(v) + [f"Figure: `grokking_averaged_scratch.png` (D={D}: the smallest D at which every "
                                   "seed ended at test accuracy >= 0.99, else the best on average).", ""], \
        [("grokking: delay of test behind train accuracy", v)]


def averaged_curves(sweep, rows, title):
    """The figure data of plot_grokking_averaged: the recorded epochs and each metric [S, T] over the given runs."""
    h = sweep["hist"]
    return dict(epoch=h["epoch"], title=title, **{k: h[k][rows] for k in ("train_acc", "test_acc", "train_loss",
                                                                          "test_loss")})


def grokking_D(table, level=0.99):
    """The smallest D of a from-scratch sweep at which every seed's final test accuracy >= level (else the best D's mean)."""
    Ds = np.unique(table["D"])
    every = [D for D in Ds if (table["test_acc"][table["D"] == D] >= level).all()]
    return int(every[0]) if every else int(Ds[np.argmax([table["test_acc"][table["D"] == D].mean() for D in Ds])])


def section_wd(folder):
    """Time to grok against weight decay (0 included): the check, its figure, and the averaged curves at wd 1."""
    L = ["## Weight decay and the time to grok (Sec. 7)", ""]
    got = finished_sweep(folder, "wd")
    if got is None:
        return L + ["Not run (stage wd).", ""], []
    sweep, tab = got
    h = sweep["hist"]
    ok = np.array([not str(w).startswith("diverged") for w in h["stop_reason"]])  # a diverged run shows no time
    t, cens = time_to_grok(h["epoch"], h["test_acc"][ok])
    v = check_wd(tab["wd"][ok], tab["seed"][ok], t, cens)
    D = int(tab["D"][0])
    where = f"{budget(sweep)}, D={D} ({100 * D / sweep['n_pairs']:.0f}% of pairs), {n_seeds(tab['seed'])} seeds"
    draw(dict(wd=tab["wd"][ok], seed=tab["seed"][ok], t=t, censored=cens,
              title=f"Epochs to grok against weight decay: {where}; each run stops at test accuracy 0.99"),
         plot_wd_time_to_grok, folder, "wd_time_to_grok")
    L += [f"From scratch, {where}; each run stops once its test accuracy reaches 0.99 (the event the check reads)."
          + (f" {int((~ok).sum())} diverged run(s) left out." if not ok.all() else ""), ""] + verdict_lines(v)
    figs = "`wd_time_to_grok.png`"
    at1 = np.flatnonzero(tab["wd"] == 1.0)
    if len(at1) > 1:  # the standard run over several seeds: the grokking pattern averaged
        draw(averaged_curves(sweep, at1, f"Grokking averaged over {len(at1)} seeds: {where.rsplit(',', 1)[0]}, wd=1; "
                                       "each run stops at test accuracy 0.99"),
             plot_grokking_averaged, folder, "grokking_averaged_wd1")
        figs += ", `grokking_averaged_wd1.png`"
    return L + [f"Figures: {figs}.", ""], [("weight decay: epochs to grok against wd", v)]


def finished_sweep(folder, name):
    """A finished run directory of the layout and its run_table: (run, table), or None if it has not finished."""
    d = path_of(folder, name)
    if not finished(d):
        return None
    sweep = analysis.load_sweep(d)
    return sweep, run_table(sweep)


def verified_sources(folder, min_trig=0.95):
    """The sources' efficiency table (None if absent) and the seeds whose trig share of the logit norm^2 > min_trig."""
    # Sec. 5.2: the ungrokking networks must start as C_gen networks. Fig. 4 caption: "We train on the
    # full dataset (achieving 100% test accuracy)"; a source counts when > 95% of its logit norm is
    # trigonometric (App. B, the same test as for C_gen-only networks) over every pair.
    eff = os.path.join(path_of(folder, "sources"), "efficiency.npz")
    if not os.path.exists(eff):
        return None, set()
    trig = analysis.load_npz(eff, analysis.EFFICIENCY_KEYS, RUN_AGAIN)
    return trig, {int(s) for s, f in zip(trig["seed"], trig["trig_frac"]) if f > min_trig}


def section_ungrok(folder):
    """P2 and P3 from the ungrokking sweep, Fig. 4, 7 and 1b, and the source networks' check."""
    L = ["## P2 and P3: ungrokking (Sec. 5.2, Fig. 4)", ""]
    got = finished_sweep(folder, "ungrok")
    if got is None:
        return L + ["Not run (stage fig4).", ""], []
    sweep, t = got
    src = analysis.load_sweep(path_of(folder, "full"))
    n_pairs = src["n_pairs"]
    trig, good = verified_sources(folder)
    if trig is not None:
        L += ["Source networks (trained on all " + f"{n_pairs} pairs, {budget(src)}): trig share of the logit norm^2 "
              + ", ".join(f"seed {int(s)}: {f:.3f}" for s, f in zip(trig["seed"], trig["trig_frac"]))
              + f"; {len(good)} of {len(trig['seed'])} pass > 0.95 and are used.", ""]
    # The figures show every run; the checks use the runs from sources that passed.
    title = f"{budget(sweep)}, from {len(np.unique(t['seed']))} networks trained on every pair ({len(good)} pass)"
    draw(dict(t, title=f"Fig. 4: ungrokking ({title})"), plot_fig4, folder, "fig4_ungrokking")
    keep = np.isin(t["seed"], sorted(good))
    first = np.flatnonzero(np.array(sweep["runs"]["wd"]) == min(sweep["runs"]["wd"]))
    if len(first):
        draw(dict(epoch=sweep["hist"]["epoch"], test_acc=sweep["hist"]["test_acc"][first],
                  D=np.array(sweep["runs"]["n_train"])[first],
                  title=f"Fig. 7: ungrokking runs, wd={min(sweep['runs']['wd']):g}, {title}"),
             plot_fig7, folder, "fig7_ungrokking_runs")
        r = first[np.argmin(np.array(sweep["runs"]["n_train"])[first])]
        draw(dict(curves_of(sweep, r), title=f"Fig. 1b: ungrokking, a network trained on every pair, then on "
                                           f"D'={sweep['runs']['n_train'][r]} (wd={sweep['runs']['wd'][r]:g}, {budget(sweep)})"),
             plot_fig1, folder, "fig1b_ungrokking")
    t = {k: v[keep] for k, v in t.items()}
    if not len(t["D"]):
        return L + ["No source network passed the check: no verdict.", ""], []
    p2, p3 = check_p2(t), check_p3(t)
    L += ["| source seed | wd | runs converged | fall between (converged D' < 0.2 and > 0.9) | width | curve |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in p2["rows"]:
        L.append(f"| {r['seed']} | {r['wd']:g} | {r['n_conv']} of {r['n']} | {bracket_text(r['lo'], r['hi'])} | "
                 f"{width_text(r['width'])} | {r['status']} |")
    unsettled = unsettled_line(sweep)
    L += ["", movement_line(sweep), ""] + ([unsettled, ""] if unsettled else []) + [false_convergence_line(sweep), ""]
    L += ["### P2", ""] + verdict_lines(p2) + ["### P3", ""] + verdict_lines(p3)
    L += ["Figures: `fig4_ungrokking.png`, `fig7_ungrokking_runs.png`, `fig1b_ungrokking.png`.", ""]
    return L, [("P2: width of the transition in D'", p2), ("P3: spread of the transition over weight decays", p3)]


def section_efficiency(folder):
    """P1 (Fig. 3) from analysis.py's efficiency table of the C_mem-only and from-scratch runs, and Fig. 10's check."""
    L = ["## P1: efficiency against dataset size (Sec. 5.1, Fig. 3)", ""]
    out = []
    for name in ("mem", "scratch", "gen", "ungrok"):  # the runs analysis.py's tables were made from
        if analysis.shard_dirs(path_of(folder, name)):
            analysis.sweep_parts(path_of(folder, name))  # raises ShardsIncomplete
    eff = os.path.join(path_of(folder, "efficiency"), "efficiency.npz")
    if os.path.exists(eff):
        table = analysis.load_npz(eff, analysis.EFFICIENCY_KEYS, RUN_AGAIN)
        rows = p1_rows(table)
        p1 = check_p1(rows)
        if p1["n_converged"] < p1["n_runs"]:  # the same fit on every run, converged or not: shown, not judged
            at_end = check_p1(p1_rows(table, need_converged=False))
            p1["value"] += f"; at the budget's end, not judged: {at_end['value'].split('; trig share')[0]}"
        overlap = sorted(set(rows["mem"]["D"].tolist()) & set(rows["gen"]["D"].tolist()))
        near = p1_rows(table, need_converged=False, min_seeds=1)  # per D, how many seeds qualify but for convergence
        seeds_at = lambda c, D: n_seeds(near[c]["seed"][near[c]["D"] == D])
        L += ["Seeds per D that qualify but for convergence: C_mem-only " + ", ".join(
            f"D={int(D)}: {seeds_at('mem', D)}" for D in np.unique(table["n_train"][table["random_labels"]]))
            + "; C_gen-only " + ", ".join(
            f"D={int(D)}: {seeds_at('gen', D)}"
            for D in np.unique(table["n_train"][~table["random_labels"] & ~table["init_from"]])) + ".", ""]
        for name in ("mem", "scratch"):
            if finished(path_of(folder, name)):
                L += [f"{name}: " + movement_line(analysis.load_sweep(path_of(folder, name))), ""]
        L += verdict_lines(p1) + [f"Dataset sizes where both circuits were trained: {overlap or 'none'}. "
                                  "Figure: `fig3_efficiency.png`.", ""]
        if p1["outcome"] == "inconclusive":
            L += [f"What a verdict would need (planning figures from these runs, not judged): {p1_needs(table)}.", ""]
        out.append(("P1: growth of the norm with D at a fixed logit (c_mem; c_gen)", p1))
    else:
        L += ["Not run (stage fig3).", ""]
    L += ["## The logit ratio against D' (App. A.4, Fig. 10)", ""]
    eff10 = os.path.join(path_of(folder, "efficiency_ungrok"), "efficiency.npz")
    if os.path.exists(eff10):
        # The same runs as P2 and P3: those whose source network passed its trig-share check.
        eff, (trig, good) = analysis.load_npz(eff10, analysis.EFFICIENCY_KEYS, RUN_AGAIN), verified_sources(folder)
        keep = np.isin(eff["seed"], sorted(good)) if trig is not None else np.ones(len(eff["seed"]), bool)
        v = check_fig10({k: (x[keep] if np.ndim(x) and len(x) == len(keep) else x) for k, x in eff.items()})
        left = "" if keep.all() else (f" Runs from source networks that failed the trig-share check are left out, as "
                                      f"in P2 and P3 ({int((~keep).sum())} of {len(keep)}).")
        L += verdict_lines(v) + ["Figure: `fig10_logit_ratio.png`." + left, ""]
        out.append(("Fig. 10: rank correlation of o_t/o_m with D'", v))
    else:
        L += ["Not run (stage fig4).", ""]
    return L, out


def section_semi(folder):
    """P4 from the from-scratch sweep: outcome per run, Fig. 5, 6 and 1c."""
    L = ["## P4: semi-grokking (Sec. 5.3, Fig. 5, 6, 1c)", ""]
    s = path_of(folder, "scratch")
    if not finished(s):
        return L + ["Not run (stage fig5).", ""], []
    sweep = analysis.load_sweep(s)
    t = run_table(sweep)
    h = sweep["hist"]
    rows = semi_outcomes(h["epoch"], h["train_acc"], h["test_acc"], t["converged"])
    p4 = check_p4(rows, t["seed"])
    final = np.array([r["final"] for r in rows])
    draw(dict(epoch=h["epoch"], test_acc=h["test_acc"], final=final,
              title=f"Fig. 5: {len(rows)} runs from scratch, D in [{t['D'].min()}, {t['D'].max()}] ({budget(sweep)})"),
         plot_fig5, folder, "fig5_semi_grokking")
    names = [r["outcome"] for r in rows]
    for want in ("semi-grokked", "transient", None):  # the run shown: semi-grokked if any, nearest 0.5
        pool = [i for i, n in enumerate(names) if want is None or n == want]
        if pool:
            r = min(pool, key=lambda i: abs(final[i] - 0.5))
            break
    what = f"D={t['D'][r]}, seed {t['seed'][r]}, {budget(sweep)}: {names[r]}"
    draw(dict(curves_of(sweep, r), title=f"Fig. 1c: semi-grokking? ({what})"), plot_fig1, folder, "fig1c_semi_grokking")
    draw(dict(curves_of(sweep, r), title=f"Fig. 6: one run of the sweep ({what})"), plot_fig6, folder,
         "fig6_semi_grokking_run")
    first = h["converged_epoch"] if "converged_epoch" in h else np.full(len(rows), -1)
    L += ["| D | seed | train acc >= 0.99 at | test acc then | final | rise half-way at | first passed the test at "
          "| converged at the end | epochs at its final level (+-0.05) | outcome |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i in np.lexsort((t["seed"], t["D"])):
        q = rows[i]
        L.append(f"| {t['D'][i]} | {t['seed'][i]} | {q['t_fit']:.0f} | {q['then']:.3f} | {q['final']:.3f} | "
                 f"{q['t_rise']:.0f} | {first[i] if first[i] >= 0 else 'never'} | {'yes' if t['converged'][i] else 'no'} | "
                 f"{q['sat']:.0f} | {q['outcome']} |")
    L += ["", movement_line(sweep), "", false_convergence_line(sweep), ""] + verdict_lines(p4) + [
        "Figures: `fig5_semi_grokking.png`, `fig6_semi_grokking_run.png`, `fig1c_semi_grokking.png`.", "",
        f"The paper semi-groks at p=113 over up to 3e7 epochs (Fig. 6); this sweep is {budget(sweep)}. What a "
        f"verdict would need: {p4['need']} converged runs for a 'none' (here {int(t['converged'].sum())}), each trained "
        f"until it converges" + (f", which none of these did within {int(h['epoch'][-1])} epochs: more than that each"
                                 if not t["converged"].any() else
                                 f"; these converged at epochs {spread_text(first[t['converged'] & (first >= 0)], '{:.0f}')}")
        + ".", ""]
    return L, [("P4: semi-grokking runs", p4)]


def dcrit_section(folder):
    """D_crit from ungrokking and from scratch, at the 0.5 crossing and the paper's 0.7: brackets per seed."""
    # Sec. 4.1: D_crit is the dataset size where C_gen and C_mem are equally efficient. App. A.2:
    # the paper's ungrokking runs reach "a test accuracy of ~0.7 with a dataset size of around
    # 800-1000" (p=113). Here, per network seed, the converged runs' bracket of the D where final
    # test accuracy crosses 0.5 and 0.7: between the largest converged D below the level and the
    # smallest converged D at or above it, "below" or "above" where one side is unseen. These are
    # measurements, not a prediction: no verdict.
    L = ["## D_crit for modular addition", "",
         "Per network seed, the converged runs' bracket of the D where final test accuracy crosses 0.5 and 0.7 "
         "(App. A.2 reads D_crit at ~0.7): from the largest converged D below the level to the smallest at or above "
         "it; \"below X\" or \"above X\" where the grid's converged runs see only one side.", "",
         "| from | modulus | weight decay | level | per seed | all seeds within | at the budget's end, not judged |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    rows_out = []
    for name, label, by_wd in (("ungrok", "ungrokking (networks trained on every pair)", True),
                               ("scratch", "training from scratch", False)):
        got = finished_sweep(folder, name)
        if got is None:
            continue
        sweep, t = got
        if name == "ungrok":  # only networks verified as C_gen before ungrokking
            keep = np.isin(t["seed"], sorted(verified_sources(folder)[1]))
            t = {k: v[keep] for k, v in t.items()}
        for w, level, b, end in dcrit_brackets(t, by_wd=by_wd):
            per = ", ".join(f"seed {s}: {bracket_text(*x)}" for s, x in sorted(b.items()))
            pool = lambda d: bracket_text(min(x[0] for x in d.values()), max(x[1] for x in d.values())) if d else "none"
            pooled = pool(b)
            if pooled == "not seen":
                pooled = "no converged run on either side"
            at_end = ", ".join(f"seed {s}: {bracket_text(*x)}" for s, x in sorted(end.items()))
            L.append(f"| {label} | {sweep['cfg']['p']} | {'-' if np.isnan(w) else f'{w:g}'} | {level:g} | {per} | {pooled} "
                     f"| {at_end} |")
            if level == 0.7:  # the paper's level, one summary row per weight decay
                n_both = sum(lo > 0 and np.isfinite(hi) and hi > lo for lo, hi in b.values())
                rows_out.append((f"D_crit at 0.7, {label.split(' (')[0]}, p={sweep['cfg']['p']}" +
                                 ("" if np.isnan(w) else f", wd={w:g}"),
                                 f"{pooled}; at the budget's end, not judged: {pool(end)}", per, n_both))
    L += ["", "Paper: ~0.7 test accuracy at D' around 800-1000 for p=113 (App. A.2); D_crit grows with p, so only "
          "figures at the same p compare.", ""]
    return L, rows_out


def section_fig8(folder):
    """Fig. 8: ungrokking on a second task (one network: described, judged inconclusive)."""
    L = ["## Ungrokking on another task (App. A.2, Fig. 8)", ""]
    got = finished_sweep(folder, "ungrok8")
    if got is None:
        return L + ["Not run (stage fig8).", ""], []
    sweep, t = got
    data = dict(t, task=np.array([sweep["cfg"]["task"]] * len(t["D"])))
    add = finished_sweep(folder, "ungrok")
    title = f"Fig. 8: ungrokking from networks trained on every pair; {budget(sweep)}"
    if add is not None:  # addition beside it, from the fig4 sweep at the same modulus
        a = add[1]
        data = {k: np.concatenate([a[k] if k != "task" else np.array([add[0]["cfg"]["task"]] * len(a["D"])), data[k]])
                for k in data}
        title += f"; {budget(add[0])}"
    draw(dict(data, title=title), plot_fig8, folder, "fig8_ungrokking_tasks")
    p2, p3 = check_p2(t), check_p3(t)
    L += [f"{sweep['cfg']['task']} ({grok.TASKS[sweep['cfg']['task']]}), {budget(sweep)}, "
          f"{len(np.unique(t['seed']))} network(s):", "", "P2:"] + verdict_lines(p2) + ["P3:"] + verdict_lines(p3)
    L += ["Figure: `fig8_ungrokking_tasks.png`.", ""]
    return L, []


def results_summary_table(rows, dcrit):
    """The summary table of results.md (the README's results table is these lines)."""
    L = ["## Summary", "", "| claim | measured | spread | seeds | runs converged | verdict |",
         "| --- | --- | --- | --- | --- | --- |"]
    for name, v in rows:
        L.append(f"| {name} | {v['value']} | {v['spread']} | {v['seeds']} | {v['n_converged']} of {v['n_runs']} | "
                 f"{v['outcome']} |")
    for name, pooled, per, n in dcrit:
        L.append(f"| {name} | {pooled} | {per} | {n} bracketed on both sides | - | estimate |")
    return L + [""]


def read_stage_times(path):
    """reproduce.sh's stage_times.txt ("stage seconds" a line): the latest time of each stage, checked."""
    last = {}
    for i, line in enumerate(open(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path} line {i} is {line.strip()!r}, not 'STAGE SECONDS'; delete the line or the file "
                             f"(reproduce.sh writes it again)")
        last[parts[0]] = int(parts[1])  # a stage run again: its latest time
    return last


SECTIONS = ((section_toy, "The toy model"), (section_grokking, "Grokking (Fig. 1a)"),
            (section_ungrok, "P2 and P3: ungrokking (Sec. 5.2, Fig. 4)"),
            (section_efficiency, "P1 and Fig. 10: efficiency and the logit ratio"),
            (section_semi, "P4: semi-grokking (Sec. 5.3)"), (section_fig8, "Ungrokking on another task (Fig. 8)"),
            (section_wd, "Weight decay and the time to grok (Sec. 7)"))


def report_lines(folder, profile):
    """results.md for a reproduce.sh output folder: one section per claim, numbers from the saved runs."""
    L = [f"# Results of `./reproduce.sh {profile}`", "",
         "Every number below is computed by `report.py` from the files this run wrote; nothing is typed in by hand. "
         "Each verdict is held, not held or inconclusive; inconclusive means the runs did not meet the check's "
         "convergence or seed requirement, or the data fell between its held and not-held rules.", ""]
    times = path_of(folder, "stage_times")
    if os.path.exists(times):
        last = read_stage_times(times)
        L += ["Stage times on this machine: " + ", ".join(f"{a} {int(b)} s" for a, b in last.items()), ""]
    for shard_times in sorted(glob.glob(times[:-len(".txt")] + ".shard-*.txt")):  # SHARD=K/N ./reproduce.sh
        name = os.path.basename(shard_times)[len("stage_times."):-len(".txt")]
        L += [f"Stage times of {name}: " + ", ".join(f"{a} {int(b)} s" for a, b in read_stage_times(shard_times).items()),
              ""]
    missing = incomplete_sweeps(folder)
    if missing:
        L += ["**Incomplete:** " + "; ".join(missing) + ". The sections that read these sweeps give no verdict: none is "
              "drawn from part of a sweep.", ""]
    rows = []
    for section, name in SECTIONS:
        try:
            lines, found = section(folder)
        except analysis.ShardsIncomplete as e:
            lines, found = [f"## {name}", "", f"Incomplete: {e}. No verdict.", ""], []
        L += lines
        rows += found
    try:
        lines, dcrit = dcrit_section(folder)
    except analysis.ShardsIncomplete as e:
        lines, dcrit = ["## D_crit for modular addition", "", f"Incomplete: {e}. No estimate.", ""], []
    return L + lines + results_summary_table(rows, dcrit)


# -----------------------------------------------------------------------------
# Command line


@dataclass
class Args:
    folder: str = ""  # a reproduce.sh output folder (out/quick, out/long, ...)
    profile: str = "quick"  # the reproduce.sh profile named in results.md
    where: str = ""  # print this layout entry's path (relative to the output folder), or with "all" every "name path"; exit
    movement: str = ""  # print, for each run of this grok.py directory, the convergence test's movements at its last record
    complete: bool = False  # check that every sweep trained in shards has all its shards, finished: a line for each that has not, exit 1


def main(argv=None):
    """Entry point: bad input gives one line on stderr and exit code 2, no traceback."""
    try:
        ap = grok.OneLineParser(prog="report.py", description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("folder", nargs="?", default="", help="a reproduce.sh output folder")
        grok.add_field_flags(ap, Args, skip=("folder",))
        args = Args(**vars(ap.parse_args(argv)))
        if args.where == "all":
            print("\n".join(f"{name} {path}" for name, path in layout().items()))
            return
        if args.where:
            if args.where not in layout():
                raise ValueError(f"--where {args.where!r}: not in the layout; allowed: {', '.join(layout())}")
            print(layout()[args.where])
            return
        if args.movement:
            sweep = analysis.load_sweep(args.movement)
            m, conv = movement(sweep), grok.converged_at_end(sweep["hist"], sweep["cfg"])
            for i in range(len(conv)):
                print(f"run {i}: D={sweep['runs']['n_train'][i]} wd={sweep['runs']['wd'][i]:g} seed={sweep['runs']['seed'][i]}: "
                      f"accuracy moved {m['move_acc'][i]:.4f}, log loss {m['move_loss'][i]:.4f}, log norm "
                      f"{m['move_norm'][i]:.5f}; {'converged' if conv[i] else 'not converged'}")
            print(movement_line(sweep))
            return
        if not os.path.isdir(args.folder):
            raise ValueError(f"{args.folder!r}: no such output folder (run ./reproduce.sh first)")
        if args.complete:
            missing = incomplete_sweeps(args.folder)
            for line in missing:
                print(f"incomplete: {line}", file=sys.stderr)
            sys.exit(1 if missing else 0)
        lines = report_lines(args.folder, args.profile)
        analysis.save_text(lines, path_of(args.folder, "results"))
        print("\n".join(lines))
        missing = incomplete_sweeps(args.folder)
        if missing:  # results.md says which sections; the exit status says the report is not whole
            print(f"error: incomplete: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                  + f"; {path_of(args.folder, 'results')} gives no verdict from those sweeps", file=sys.stderr)
            sys.exit(1)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk or a read-only folder: the atomic writes leave nothing half-written
        print(f"error: {analysis.one_line_os_error(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

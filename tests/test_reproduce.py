"""Tests for the experiment tests of results.md and for reproduce.sh's stage logic (at toy scale).

Run: python -m pytest -q tests/test_reproduce.py      (-m "not slow" leaves out the pipeline runs)
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import analysis
import toy_sim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table(curves):
    """A final_table-like dict from {wd: (D values, test accuracies)}, two seeds per point."""
    D, wd, acc = [], [], []
    for w, (xs, ys) in curves.items():
        for x, y in zip(xs, ys):
            for noise in (-0.01, 0.01):  # two "seeds" around the curve
                D.append(x), wd.append(w), acc.append(min(1.0, max(0.0, y + noise)))
    return dict(D=np.array(D), wd=np.array(wd, float), test_acc=np.array(acc), seed=np.zeros(len(D)))


SIZES = np.array([150, 250, 400, 550, 750, 1000, 1400])
SHARP = np.array([0.02, 0.03, 0.05, 0.6, 0.97, 1.0, 1.0])  # jumps between 400 and 750
DRIFT = np.linspace(0.25, 0.85, len(SIZES))  # never near zero, never near one: no transition


def test_crossing_matches_closed_form():
    # accuracy linear in log D from 0 at D=100 to 1 at D=10000 crosses 0.5 at D=1000 exactly
    D = np.array([100.0, 300.0, 3000.0, 10000.0])
    acc = np.log(D / 100) / np.log(100)
    got = analysis.crossing(D, acc, 0.5)
    assert abs(got - 1000) < 1e-6, f"crossing {got}, closed form 1000"
    assert np.isnan(analysis.crossing(D, np.zeros(4), 0.5))


def test_p2_verdict_both_ways():
    held = analysis.test_p2(table({1.0: (SIZES, SHARP), 2.0: (SIZES, SHARP)}))
    drift = analysis.test_p2(table({1.0: (SIZES, DRIFT), 2.0: (SIZES, DRIFT)}))
    assert held["held"] and not drift["held"], (held["rows"], drift["rows"])


def test_p3_verdict_both_ways():
    same = analysis.test_p3(table({1.0: (SIZES, SHARP), 3.0: (SIZES, SHARP)}))
    shifted = analysis.test_p3(table({1.0: (SIZES, SHARP), 3.0: (SIZES * 3, SHARP)}))
    single = analysis.test_p3(table({1.0: (SIZES, SHARP)}))
    assert same["held"] and abs(same["spread"] - 1) < 0.05, same["spread"]
    assert not shifted["held"] and shifted["enough"] and abs(shifted["spread"] - 3) < 0.05, shifted["spread"]
    assert not single["enough"]


def test_toy_ingredients_both_ways(tmp_path):
    csv = tmp_path / "fig2.csv"
    assert toy_sim.main(["--out", str(tmp_path / "fig2.png"), "--csv"]) in (None, 0)
    assert analysis.toy_ingredients(str(csv))["held"]
    # The same curves with preset (b) replaced by (a)'s: (b) now groks, so the claim must fail.
    text = csv.read_text().splitlines()
    head = text[0].split(",")
    rows = [line.split(",") for line in text[1:]]
    for k in ("train", "test"):
        a, b = head.index(f"a_{k}"), head.index(f"b_{k}")
        for r in rows:
            r[b] = r[a]
    csv.write_text("\n".join([",".join(head)] + [",".join(r) for r in rows]) + "\n")
    assert not analysis.toy_ingredients(str(csv))["held"]


def triples(c_mem, c_gen, seed=0):
    """Fig. 3 triples with P = k o^b D^c (times 1% noise): mem over D 150..600, gen over D 1000..6000."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, c, Ds in (("mem", c_mem, [150, 300, 600]), ("gen", c_gen, [1000, 3000, 6000])):
        D = np.repeat(Ds, 6).astype(float)
        logit = np.tile([5.0, 8.0, 12.0, 6.0, 9.0, 14.0], 3)
        out[f"{name}_logit"], out[f"{name}_D"] = logit, D
        out[f"{name}_norm"] = 4.0 * logit ** 0.5 * D ** c * np.exp(rng.normal(0, 0.01, len(D)))
    return out


def test_norm_elasticity_recovers_the_exponents():
    t = triples(0.3, 0.0)
    b, c, n = analysis.norm_elasticity(t["mem_logit"], t["mem_norm"], t["mem_D"])
    assert n == 18 and abs(b - 0.5) < 0.02 and abs(c - 0.3) < 0.02, (b, c)


def test_p1_verdict_both_ways():
    held = analysis.test_p1(triples(0.3, 0.0))
    gen_grows = analysis.test_p1(triples(0.3, 0.3))
    mem_flat = analysis.test_p1(triples(0.0, 0.0))
    few = triples(0.3, 0.0)
    few = {k: (v[:3] if k.startswith("gen") else v) for k, v in few.items()}  # one D for C_gen
    assert held["held"] and held["enough"], held
    assert not gen_grows["held"] and gen_grows["enough"], gen_grows
    assert not mem_flat["held"] and mem_flat["enough"], mem_flat
    assert not analysis.test_p1(few)["enough"]


def semi_run(curves, t_fit=100):
    """A load_run-like dict whose runs reach train accuracy 1 at t_fit and follow the given test curves."""
    epoch = np.unique(np.round(np.logspace(0, np.log10(6000), 120)).astype(int))
    epoch = np.concatenate([[0], epoch])
    test = np.stack([f(epoch) for f in curves])
    train = np.where(epoch >= t_fit, 1.0, 0.5)[None].repeat(len(curves), 0)
    train[-1] = 0.9  # the last run never fits its training set
    n = len(curves)
    hist = dict(epoch=epoch, train_acc=train, test_acc=test)
    return dict(hist=hist, runs=dict(n_train=[700] * n, seed=list(range(n)), wd=[1.0] * n))


SEMI = lambda e: np.where(e < 1000, 0.05, np.minimum(0.5, 0.05 + 0.45 * (e - 1000) / 1000))  # delayed, to 0.5
GROK = lambda e: np.where(e < 1000, 0.05, np.minimum(1.0, 0.05 + (e - 1000) / 1000))  # delayed, to 1
NONE = lambda e: np.full(len(e), 0.03)
AT_ONCE = lambda e: np.full(len(e), 0.5)  # middling from the start: no transition
UNFIT = lambda e: np.where(e < 1000, 0.05, 0.5)  # rises, but train accuracy never >= 0.99
RISING = lambda e: np.where(e < 2000, 0.05, 0.05 + 0.45 * (e - 2000) / 4000)  # still climbing at the end


def test_semi_grokking_outcomes_and_p4_both_ways():
    run = semi_run([SEMI, GROK, NONE, AT_ONCE, RISING, UNFIT])
    t = analysis.semi_grok_table(run)
    assert t["outcome"].tolist() == [1, 2, 0, 0, 3, 0], t["outcome"]
    e = run["hist"]["epoch"]
    assert t["t_train"][0] == e[e >= 100][0] and abs(t["acc_final"][0] - 0.5) < 1e-9, (t["t_train"], t["acc_final"])
    assert t["t_rise"][0] == e[e >= 1500][0], t["t_rise"]  # half-way (0.275) at epoch 1500: its first record
    assert analysis.test_p4(t)["held"]
    assert analysis.pick_semi_run(t)[0] == 0
    t2 = analysis.semi_grok_table(semi_run([GROK, NONE, AT_ONCE, RISING, UNFIT]))
    p4 = analysis.test_p4(t2)
    assert not p4["held"] and p4["enough"] and p4["grokked"] == 1 and p4["transient"] == 1, p4
    assert analysis.pick_semi_run(t2) == (3, "no run semi-grokked; a transient one")


def test_dcrit_per_seed_matches_crossing():
    # two seeds whose accuracy jumps at different D': each seed's crossing is its own
    D = np.array([100, 200, 400, 800] * 2)
    acc = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    seed = np.repeat([0, 1], 4)
    rows = analysis.dcrit_per_seed(dict(D=D, test_acc=acc, seed=seed, wd=np.ones(8)))
    want = [np.sqrt(200 * 400), np.sqrt(400 * 800)]  # half-way on log D'
    got = [r[2] for r in rows]
    assert np.allclose(got, want), (got, want)


# -----------------------------------------------------------------------------
# reproduce.sh at toy scale (profile "tiny": p=23, a small model, tens of epochs)


def repro(out, *args):
    """Run reproduce.sh with this interpreter; return (exit code, stdout + stderr)."""
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, THREADS="1")
    r = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), *args], capture_output=True, text=True, env=env)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def tiny_shared(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    code, log = repro(out, "tiny")
    assert code == 0, log
    return out, log


@pytest.fixture
def tiny(tiny_shared, tmp_path):
    """A copy of the tiny pipeline's output for one test, so that no test sees another's changes."""
    out, log = tiny_shared
    shutil.copytree(out, tmp_path / "tiny")
    return tmp_path / "tiny", log


@pytest.mark.slow
def test_tiny_pipeline_writes_every_output(tiny):
    out, log = tiny
    for f in ("fig2_toy.png", "fig1a_grokking.png", "fig1b_ungrokking.png", "fig4_ungrokking.png",
              "fig7_ungrokking_runs.png", "fig10_logit_ratio.png", "fig3_efficiency.png", "fig5_semi_grokking.png",
              "fig6_semi_grokking_run.png", "fig1c_semi_grokking.png", "fig8_ungrokking_tasks.png",
              "results.md", "logs/fig4.log", "logs/fig8.log"):
        assert (out / f).exists(), f"{f} missing; log:\n{log}"
    text = (out / "results.md").read_text()
    for section in ("three ingredients", "Grokking (Fig. 1a)", "P2 and P3", "P1:", "P4:", "Fig. 8", "D_crit",
                    "Summary table"):
        assert section in text, section
    assert "Verdict: held" in text.split("## Grokking")[0], "the toy model's claim should hold"
    # P2/P3 read the fig4 sweeps alone (D' 30, 60), not fig8's sweeps of other tasks (D' 20, 40)
    p2 = text.split("## P2 and P3")[1].split("## P1")[0]
    assert "smallest D' (30)" in p2, p2


@pytest.mark.slow
def test_second_run_skips_finished_stages(tiny):
    out, _ = tiny
    before = (out / "fig4_ungrokking.png").stat().st_mtime
    code, log = repro(out, "tiny")
    assert code == 0, log
    for name in ("fig2", "fig1a", "fig4", "fig3", "fig5", "fig8"):
        assert f"[{name}] done already" in log, log
    assert (out / "fig4_ungrokking.png").stat().st_mtime == before


@pytest.mark.slow
def test_interrupted_stage_resumes_from_checkpoints(tiny):
    out, _ = tiny
    # As if killed during the fig4 stage: the second sweep has a checkpoint but no params.pt,
    # and the stage's figures and its done marker were never written.
    (out / "fig4_ungrokking.png").unlink()
    (out / ".done_fig4").unlink()
    (out / "runs" / "ungrok_wd2" / "params.pt").unlink()
    code, log = repro(out, "tiny", "fig4")
    assert code == 0, log
    stage_log = (out / "logs" / "fig4.log").read_text()
    assert "resuming" in stage_log and "already finished" in stage_log, stage_log[-2000:]
    assert (out / "fig4_ungrokking.png").exists()


@pytest.mark.slow
def test_failing_command_inside_a_stage_fails_the_stage(tiny):
    out, _ = tiny
    # The second sweep's directory now holds other settings: its grok.py command fails midway
    # through the stage, after the first sweep succeeded. The stage, and the script, must fail,
    # and the stage must not be marked done.
    (out / "fig4_ungrokking.png").unlink()
    (out / ".done_fig4").unlink()
    cfg = out / "runs" / "ungrok_wd2" / "config.json"
    saved = json.loads(cfg.read_text())
    saved["runs"]["lr"] = [0.5 for _ in saved["runs"]["lr"]]
    cfg.write_text(json.dumps(saved))
    code, log = repro(out, "tiny", "fig4")
    assert code == 1 and "stage 'fig4' failed" in log, log
    assert not (out / "fig4_ungrokking.png").exists() and not (out / ".done_fig4").exists()


def test_failed_stage_names_itself_and_its_log(tmp_path):
    out = tmp_path / "bad"
    grok_dir = out / "runs" / "grok"
    grok_dir.mkdir(parents=True)
    # A run directory with other settings: grok.py refuses to resume it, so the stage fails.
    (grok_dir / "config.json").write_text(json.dumps({"config": {"task": "sub"}}))
    code, log = repro(out, "tiny", "fig1a")
    assert code == 1 and "stage 'fig1a' failed" in log and str(out / "logs" / "fig1a.log") in log, log


@pytest.mark.parametrize("args, message", [(("fast",), "unknown profile 'fast'"),
                                           (("tiny", "fig99"), "unknown stage 'fig99'"),
                                           (("",), "an empty argument"),
                                           (("tiny", ""), "an empty argument"),
                                           (("tiny", "fig4", "extra"), "too many arguments")])
def test_bad_profile_or_stage(tmp_path, args, message):
    code, log = repro(tmp_path / "x", *args)
    assert code == 2 and message in log and log.count("\n") == 1, log
    assert not (tmp_path / "x").exists(), "a refused command created its output folder"


def test_list_touches_nothing(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "x"))
    env.pop("PYTHON", None)  # without PYTHON, anything but `list` would create .venv
    venv_before = os.path.exists(os.path.join(ROOT, ".venv"))
    r = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), "quick", "list"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0 and "fig4" in r.stdout and "report" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "x").exists() and os.path.exists(os.path.join(ROOT, ".venv")) == venv_before

"""Tests for the experiment tests of results.md and for reproduce.sh's stage logic (at toy scale).

Run: python -m pytest -q tests/test_reproduce.py
"""
import json
import os
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


# -----------------------------------------------------------------------------
# reproduce.sh at toy scale (profile "tiny": p=23, a small model, tens of epochs)


def repro(out, *args):
    """Run reproduce.sh with this interpreter; return (exit code, stdout + stderr)."""
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, THREADS="1")
    r = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), *args], capture_output=True, text=True, env=env)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    code, log = repro(out, "tiny")
    assert code == 0, log
    return out, log


def test_tiny_pipeline_writes_every_output(tiny):
    out, log = tiny
    for f in ("fig2_toy.png", "fig1a_grokking.png", "fig1b_ungrokking.png", "fig4_ungrokking.png",
              "fig7_ungrokking_runs.png", "fig10_logit_ratio.png", "results.md", "logs/fig4.log"):
        assert (out / f).exists(), f"{f} missing; log:\n{log}"
    text = (out / "results.md").read_text()
    for section in ("three ingredients", "Grokking (Fig. 1a)", "P2 and P3", "P1:", "P4:", "Summary table"):
        assert section in text, section
    assert "Verdict: held" in text.split("## Grokking")[0], "the toy model's claim should hold"


def test_second_run_skips_finished_stages(tiny):
    out, _ = tiny
    before = (out / "fig4_ungrokking.png").stat().st_mtime
    code, log = repro(out, "tiny")
    assert code == 0, log
    for name in ("fig2", "fig1a", "fig4"):
        assert f"[{name}] done already" in log, log
    assert (out / "fig4_ungrokking.png").stat().st_mtime == before


def test_interrupted_stage_resumes_from_checkpoints(tiny):
    out, _ = tiny  # runs after the tests above, so changing the shared folder is safe
    # As if killed during the fig4 stage: the second sweep has a checkpoint but no params.pt,
    # and the stage's figures were never drawn.
    (out / "fig4_ungrokking.png").unlink()
    (out / "runs" / "ungrok_wd2" / "params.pt").unlink()
    code, log = repro(out, "tiny", "fig4")
    assert code == 0, log
    stage_log = (out / "logs" / "fig4.log").read_text()
    assert "resuming" in stage_log and "already finished" in stage_log, stage_log[-2000:]
    assert (out / "fig4_ungrokking.png").exists()


def test_failing_command_inside_a_stage_fails_the_stage(tiny):
    out, _ = tiny
    # The second sweep's directory now holds other settings: its grok.py command fails midway
    # through the stage, after the first sweep succeeded. The stage, and the script, must fail.
    (out / "fig4_ungrokking.png").unlink()
    cfg = out / "runs" / "ungrok_wd2" / "config.json"
    saved = json.loads(cfg.read_text())
    saved["config"]["lr"] = "0.5"
    cfg.write_text(json.dumps(saved))
    code, log = repro(out, "tiny", "fig4")
    assert code == 1 and "stage 'fig4' failed" in log, log
    assert not (out / "fig4_ungrokking.png").exists()


def test_failed_stage_names_itself_and_its_log(tmp_path):
    out = tmp_path / "bad"
    grok_dir = out / "runs" / "grok"
    grok_dir.mkdir(parents=True)
    # A run directory with other settings: grok.py refuses to resume it, so the stage fails.
    (grok_dir / "config.json").write_text(json.dumps({"config": {"task": "sub"}}))
    code, log = repro(out, "tiny", "fig1a")
    assert code == 1 and "stage 'fig1a' failed" in log and str(out / "logs" / "fig1a.log") in log, log


@pytest.mark.parametrize("args, message", [(("fast",), "unknown profile 'fast'"),
                                           (("tiny", "fig99"), "unknown stage 'fig99'")])
def test_bad_profile_or_stage(tmp_path, args, message):
    code, log = repro(tmp_path / "x", *args)
    assert code == 2 and message in log, log

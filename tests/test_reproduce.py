"""Tests for reproduce.sh's stage logic and report.py's results.md, on the pipeline at toy scale.

Run: python -m pytest -q tests/test_reproduce.py      (-m "not slow" leaves out the pipeline runs)
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import report  # noqa: E402
from conftest import repro_env  # noqa: E402  the environment the background pipeline runs under too


# -----------------------------------------------------------------------------
# reproduce.sh at toy scale (profile "tiny": p=23, a small model, tens of epochs)


def repro(out, *args):
    """Run reproduce.sh with this interpreter; return (exit code, stdout + stderr)."""
    r = subprocess.run(["bash", os.path.join(ROOT, "reproduce.sh"), *args], capture_output=True, text=True,
                       env=repro_env(out))
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def tiny_shared(tiny_pipeline):
    """The tiny profile's output, from the run conftest.py started when the tests were collected."""
    out, code, log = tiny_pipeline
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
                    "## Summary"):
        assert section in text, section
    assert "Verdict: held" in text.split("## Grokking")[0], "the toy model's claim should hold"
    # At toy scale nothing groks or converges: no check on networks may say held.
    assert "Verdict: held" not in text.split("## Grokking")[1], text


@pytest.mark.slow
def test_second_run_skips_finished_stages(tiny):
    out, _ = tiny
    before = (out / "fig10_logit_ratio.png").stat().st_mtime
    code, log = repro(out, "tiny")
    assert code == 0, log
    for name in ("fig2", "fig1a", "fig4", "fig3", "fig5", "fig8"):
        assert f"[{name}] done already" in log, log
    assert (out / "fig10_logit_ratio.png").stat().st_mtime == before


@pytest.mark.slow
def test_interrupted_stage_resumes_from_checkpoints(tiny):
    out, _ = tiny
    # As if killed during the fig8 stage (two sweeps, the second from the first's networks): the
    # second sweep has a checkpoint but no params.pt, and the stage's done marker was never written.
    (out / ".done_fig8").unlink()
    (out / "runs" / "ungrok_div" / "params.pt").unlink()
    code, log = repro(out, "tiny", "fig8")
    assert code == 0, log
    stage_log = (out / "logs" / "fig8.log").read_text()
    assert "already finished" in stage_log and "resuming" in stage_log, stage_log[-2000:]
    assert (out / "runs" / "ungrok_div" / "params.pt").exists() and (out / ".done_fig8").exists()


@pytest.mark.slow
def test_failing_command_inside_a_stage_fails_the_stage(tiny):
    out, _ = tiny
    # The second sweep's directory now holds other settings: its grok.py command fails midway
    # through the stage, after the first command succeeded. The stage, and the script, must fail,
    # and the stage must not be marked done.
    (out / ".done_fig8").unlink()
    cfg = out / "runs" / "ungrok_div" / "config.json"
    saved = json.loads(cfg.read_text())
    saved["runs"]["lr"] = [0.5 for _ in saved["runs"]["lr"]]
    cfg.write_text(json.dumps(saved))
    code, log = repro(out, "tiny", "fig8")
    assert code == 1 and "stage 'fig8' failed" in log, log
    assert "already finished" in (out / "logs" / "fig8.log").read_text() and not (out / ".done_fig8").exists()


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


def test_long_profile_ungrokking_levels_are_the_verdicts_levels():
    # The long profile's ungrokking runs pass the accuracy condition by their side of each level
    # (--converge-levels); those must be the levels report.py's brackets and false convergence read.
    text = open(os.path.join(ROOT, "reproduce.sh")).read()
    long_block = text[text.index('if [ "$PROFILE" = long ]'):]
    spec = re.search(r"UNGROK_LEVELS=([0-9.,]+)", long_block).group(1)
    assert tuple(float(x) for x in spec.split(",")) == report.VERDICT_LEVELS, spec


def test_an_output_folder_belongs_to_one_profile(tmp_path):
    # A folder of another profile's runs, or of finished stages that do not say whose: refused in one
    # line before any stage is skipped as done; nothing in it changes.
    out = tmp_path / "x"
    out.mkdir()
    (out / ".profile").write_text("tiny\n")
    (out / ".done_fig2").write_text("")
    code, log = repro(out, "quick", "report")
    assert code == 2 and "holds the tiny profile's runs" in log and log.count("\n") == 1, log
    os.remove(out / ".profile")
    code, log = repro(out, "quick", "report")
    assert code == 2 and "no .profile saying whose" in log and log.count("\n") == 1, log
    assert sorted(os.listdir(out)) == [".done_fig2"], os.listdir(out)
    (tmp_path / "file").write_text("x")
    code, log = repro(tmp_path / "file", "tiny", "fig2")
    assert code == 2 and "is a file, not a directory" in log and log.count("\n") == 1, log

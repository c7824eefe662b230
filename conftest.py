"""Test setup: the repository root on sys.path, one torch thread per process, and the tiny pipeline started at collection.

The suite's networks are tiny, so a second thread buys them nothing. The tiny reproduce.sh
pipeline (tests/test_reproduce.py) is the suite's longest piece and runs in a process of its own
with one thread: started as soon as the tests that read it are selected, it runs on the second
core while the other test files run on the first, and its tests wait for it. The same profile
trained as three shards and pooled (tests/test_shards.py) runs after it, in the same process.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # so that tests can `import grok` from any working directory
# One thread in every process the tests start, this one included (set before torch loads): two
# processes that each spin up a thread per core slow each other far more than 2x.
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402

torch.set_num_threads(1)
PIPELINE = {}  # the background run of the tiny profile: its process and output folder


def pytest_configure(config):
    """The marker for the slow tests: `python -m pytest -q -m "not slow"` skips them for a fast loop."""
    config.addinivalue_line("markers", "slow: runs reproduce.sh's pipeline at toy scale, or trains real runs for seconds")


def repro_env(out):
    """The environment reproduce.sh runs under in the tests: this interpreter, one thread, OUT=out."""
    return dict(os.environ, OUT=str(out), PYTHON=sys.executable, THREADS="1")


# The background chain: the tiny profile whole, then (if asked) the same profile as 3 shards in
# turn after its sources, pooled by the report stage. Each writes NAME.log and then NAME.rc.
CHAIN = """
bash "$ROOT/reproduce.sh" tiny >"$F/tiny.log" 2>&1; echo $? >"$F/tiny.rc"
[ "$SHARDED" = 1 ] || exit 0
{ OUT="$F/sharded" bash "$ROOT/reproduce.sh" tiny sources &&
  for k in 0 1 2; do OUT="$F/sharded" SHARD=$k/3 bash "$ROOT/reproduce.sh" tiny || exit 1; done &&
  OUT="$F/sharded" bash "$ROOT/reproduce.sh" tiny report; } >"$F/sharded.log" 2>&1
echo $? >"$F/sharded.rc"
"""


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they leave out
def pytest_collection_modifyitems(session, config, items):
    """Start the tiny pipeline (and its sharded twin) in the background if a selected test reads it."""
    wants = lambda name: any(name in getattr(item, "fixturenames", ()) for item in items)
    if wants("tiny_shared") or wants("tiny_sharded"):
        folder = tempfile.mkdtemp(prefix="grok_tiny_")
        env = dict(repro_env(os.path.join(folder, "tiny")), ROOT=ROOT, F=folder,
                   SHARDED="1" if wants("tiny_sharded") else "0")
        proc = subprocess.Popen(["bash", "-c", CHAIN], env=env, start_new_session=True)
        PIPELINE.update(proc=proc, folder=folder)


def pipeline_result(name):
    """Wait for one pipeline of the background chain: (its output folder, exit code, log)."""
    rc = os.path.join(PIPELINE["folder"], name + ".rc")
    while not os.path.exists(rc) or not open(rc).read().strip():
        if PIPELINE["proc"].poll() is not None and not os.path.exists(rc):
            break  # the chain died before this pipeline ended
        time.sleep(0.2)
    log_path = os.path.join(PIPELINE["folder"], name + ".log")
    log = open(log_path).read() if os.path.exists(log_path) else ""
    code = int(open(rc).read()) if os.path.exists(rc) else -1
    return os.path.join(PIPELINE["folder"], name), code, log


def pytest_sessionfinish(session, exitstatus):
    """Stop the background pipeline if it still runs, and remove its folder."""
    if PIPELINE:
        if PIPELINE["proc"].poll() is None:  # the tests stopped early: the pipeline and every command it started
            os.killpg(PIPELINE["proc"].pid, signal.SIGKILL)
            PIPELINE["proc"].wait()
        shutil.rmtree(PIPELINE["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The tiny profile's output folder, exit code and log, once its background run has finished."""
    return pipeline_result("tiny")


@pytest.fixture(scope="session")
def tiny_sharded_pipeline():
    """The tiny profile trained as 3 shards and pooled: output folder, exit code and log, once finished."""
    return pipeline_result("sharded")

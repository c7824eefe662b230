"""Test setup: the repository root on sys.path, one torch thread per process, and the tiny pipeline started at collection.

The suite's networks are tiny, so a second thread buys them nothing. The tiny reproduce.sh
pipeline (tests/test_reproduce.py) is the suite's longest piece and runs in a process of its own
with one thread: started as soon as the tests that read it are selected, it runs on the second
core while the other test files run on the first, and its tests wait for it.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

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


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they leave out
def pytest_collection_modifyitems(session, config, items):
    """Start the tiny pipeline in the background if a selected test reads it."""
    if any("tiny_shared" in getattr(item, "fixturenames", ()) for item in items):
        folder = tempfile.mkdtemp(prefix="grok_tiny_")
        out = os.path.join(folder, "tiny")
        proc = subprocess.Popen(["bash", os.path.join(ROOT, "reproduce.sh"), "tiny"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=repro_env(out), start_new_session=True)
        PIPELINE.update(proc=proc, folder=folder, out=out)


def pytest_sessionfinish(session, exitstatus):
    """Stop the background pipeline if it still runs, and remove its folder."""
    if PIPELINE:
        if PIPELINE["proc"].poll() is None:  # the tests stopped early: the pipeline and every command it started
            os.killpg(PIPELINE["proc"].pid, signal.SIGKILL)
            PIPELINE["proc"].communicate()
        shutil.rmtree(PIPELINE["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The tiny profile's output folder, exit code and log, once its background run has finished."""
    log, _ = PIPELINE["proc"].communicate()
    return PIPELINE["out"], PIPELINE["proc"].returncode, log

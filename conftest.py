"""Puts the repository root on sys.path so tests can `import grok` from any working directory."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    """The marker for the slow tests: `python -m pytest -q -m "not slow"` skips them for a fast loop."""
    config.addinivalue_line("markers", "slow: runs reproduce.sh's pipeline at toy scale (about 80 s)")

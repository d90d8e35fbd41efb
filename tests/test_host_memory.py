"""Tests of custom.host_memory: glibc keeps freed blocks, so repeated allocations stop page-faulting."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from custom import host_memory

REPO_ROOT = Path(__file__).resolve().parents[1]
GLIBC = host_memory._glibc_mallopt() is not None

# allocate and free four arrays of 2.4-20 MB twenty times; print the minor page faults of those 20 steps
FAULTS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from custom.host_memory import retain_freed_host_memory
    applied = retain_freed_host_memory(enabled=sys.argv[1] == "retain")
    def step():
        blocks = [np.ones(n) for n in (300_000, 1_200_000, 2_500_000, 600_000)]
        del blocks
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="needs glibc's mallopt")
def test_retained_memory_is_reused_without_page_faults():
    applied_default, faults_default = _faults("default")
    applied_retain, faults_retain = _faults("retain")
    assert (applied_default, applied_retain) == ("False", "True")
    # glibc's defaults return the 20 MB block to the OS each step (thousands of faults); retained, it is reused
    assert faults_default > 1000
    assert faults_retain < faults_default / 10


def test_disabled_is_a_no_op(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: pytest.fail("mallopt must not be looked up"))
    assert host_memory.retain_freed_host_memory(enabled=False) is False


def test_without_mallopt_nothing_changes(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: None)
    assert host_memory.retain_freed_host_memory() is False


def test_refused_settings_report_false(monkeypatch):
    calls = []

    def refusing_mallopt(param, value):
        calls.append((param, value))
        return 0

    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: refusing_mallopt)
    assert host_memory.retain_freed_host_memory(mmap_threshold=1 << 20, trim_threshold=1 << 30) is False
    assert calls == [(-3, 1 << 20)]  # stops at the first refusal


@pytest.mark.parametrize(
    "kwargs",
    [{"mmap_threshold": 0}, {"mmap_threshold": host_memory.MAX_MMAP_THRESHOLD + 1}, {"trim_threshold": 0},
     {"trim_threshold": 2**31}],
)
def test_bad_thresholds_raise(kwargs):
    with pytest.raises(ValueError, match="threshold"):
        host_memory.retain_freed_host_memory(**kwargs)

"""The CPU allocator setting of the console scripts (glow_train.runtime.memory)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import resource, sys
    if sys.argv[1] == "1":
        from glow_train.runtime.memory import keep_freed_memory
        assert keep_freed_memory()
    import torch
    def work():
        for _ in range(5):  # like a training step: activations pile up, then all go
            kept = [torch.ones(2**20) for _ in range(16)]  # 16 x 4 MiB
            del kept
    work()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    work()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    faults = [
        int(
            subprocess.run(
                [sys.executable, "-c", PROBE, flag], capture_output=True, text=True, check=True
            ).stdout
        )
        for flag in ("0", "1")
    ]
    # kept: the second round reuses the first round's memory, no page is faulted in
    # again (of 5 x 16 x 1,024 pages allocated)
    assert faults[1] < 5 * 16 * 1024 / 20, faults
    # default: glibc usually hands the freed 64 MiB back and faults it in again
    # (81,765 faults on the development machine); how often depends on its dynamic
    # thresholds, so this half only compares when it happened
    if faults[0] > 5 * 16 * 200:
        assert faults[1] < faults[0] / 5, faults


def test_idempotent():
    from glow_train.runtime.memory import freed_memory_kept, keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() == first == freed_memory_kept()

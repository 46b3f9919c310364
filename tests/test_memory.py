"""Peak-memory measurement: the kernel's high-water mark is exact, nested regions keep their own peaks,
and the training step's peak sees spikes inside a phase."""

from __future__ import annotations

import mmap

import pytest

from layerwise.runtime.memory import CpuPeak, PeakMemory, cpu_peak_tracking_exact
from layerwise.train.phases import PhaseTimer

pytestmark = pytest.mark.skipif(not cpu_peak_tracking_exact(), reason="needs Linux /proc/self/clear_refs")

MIB = 2**20


def _spike(mib: int) -> None:
    """Touch ``mib`` MiB of fresh pages and unmap them again: invisible to a reading taken afterwards.

    An anonymous mapping, not a numpy array: malloc may reuse pages an earlier test freed but kept
    resident, which would not raise RSS at all."""
    size = mib * MIB
    m = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        m[offset] = 1
    m.close()


def test_peak_memory_sees_a_spike_freed_before_the_region_ends():
    with PeakMemory() as mem:
        _spike(200)
    assert mem.peak - mem.start >= 190 * MIB


def test_nested_regions_keep_their_own_peaks():
    with PeakMemory() as outer:
        _spike(300)
        with PeakMemory() as inner:  # resets the kernel's mark: the outer region must keep its 300 MiB
            _spike(60)
    assert outer.peak - outer.start >= 290 * MIB
    assert 50 * MIB <= inner.peak - inner.start < 250 * MIB


def test_a_restarted_region_forgets_its_earlier_peak():
    region = CpuPeak()
    region.reset()
    _spike(200)
    high = region.read()
    low_start = region.reset()
    assert region.read() < high - 150 * MIB and region.read() >= low_start
    region.close()
    assert region not in CpuPeak._open


def test_step_peak_includes_spikes_inside_a_phase():
    timer = PhaseTimer(phases=("forward",))
    timer.begin_step(1)
    with timer.phase("forward"):
        _spike(200)
    record = timer.end_step()
    assert record["peak_memory"] >= record["mem_after_forward"] + 190 * MIB

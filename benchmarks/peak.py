"""The peak memory of this process, as the benchmarks report it.

``ru_maxrss`` is not a process's own on Linux: the kernel folds the high-water mark of the
process that started it into a child's at ``exec``, so every ``spawn`` child (each contender,
each step) inherits its parent's peak. A contender spawned after the parent had generated
10 M people's bronze reported 5,661 MB for a staging that peaked at 2,050 MB; a child spawned
by a parent that had touched 2 GB and freed it reports 1,920 MB at start, 13 MB its own. The
kernel's ``VmHWM`` (``/proc/self/status``) is the high-water mark of the memory the process
has mapped since its ``exec``: its own, interpreter and imports included. Where there is no
``/proc``, ``ru_maxrss`` is the fallback (an upper bound).
"""

from __future__ import annotations

import resource
import sys

_STATUS = "/proc/self/status"


def peak_mb() -> float:
    """This process's peak resident memory in MB (``VmHWM``; ``ru_maxrss`` without /proc)."""
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale

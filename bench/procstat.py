"""Resident-memory figures of this process from /proc/self/status (Linux), shared by the bench scripts."""


def memory_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset VmHWM to the current resident size; returns that size in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return memory_kib("VmRSS")

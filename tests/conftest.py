import os
import sys
from pathlib import Path

# Make tests/helpers.py importable as `helpers` from every test module.
sys.path.insert(0, str(Path(__file__).parent))


def pytest_report_header(config):
    """The CPU's floating-point features and what `precision=auto` runs in here: the
    suite passes on CPUs with and without native bf16, and `make test-fp32`
    (`GLOW_TRAIN_AUTO_PRECISION=fp32`) runs it as on one without."""
    from glow_train.runtime.precision import resolve_precision

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                words = line.split(":", 1)[1].split()
                flags = {w for w in words if w in ("avx2", "avx512f", "avx512_bf16")}
                flags |= {w for w in words if w.startswith("amx")}
                break
    except OSError:
        pass
    forced = os.environ.get("GLOW_TRAIN_AUTO_PRECISION")
    chosen = resolve_precision("auto", "cpu").describe()
    cpu = ", ".join(sorted(flags)) or "unknown"
    return f"glow-train: CPU flags {cpu}; {chosen}" + (f" (forced: {forced})" if forced else "")

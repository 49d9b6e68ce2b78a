"""What a measurement ran on: CPU model, cores, GPU, library versions and the git commit of the checkout."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the checkout this package runs from ("" for an installed wheel or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def machine_info() -> dict:
    import torch

    from kvi_engine._version import __version__
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "arch": platform.machine(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "kvi_engine": __version__, "commit": git_commit()}

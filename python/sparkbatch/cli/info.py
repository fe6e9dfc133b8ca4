"""``sparkbatch info``: what this installation is made of, for bug reports and sanity checks."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess
from types import ModuleType

from sparkbatch._version import __version__
from sparkbatch.nn.gpu import cuda_version


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _java_version() -> str:
    java = shutil.which("java")
    if java is None:
        return "not found (Spark needs Java 17 or newer on PATH or JAVA_HOME)"
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{java} did not run: {e}"
    first = (out.stderr or out.stdout).strip().splitlines()
    return first[0] if first else java


def _cuda_facts() -> dict[str, str]:
    """Whether the CUDA module was built (for which architectures) and which GPUs it sees.

    Never raises: without a driver the module still imports and sees no device.
    """
    if importlib.util.find_spec("sparkbatch._cuda") is None:
        return {"cuda module": "not built (CPU only)"}
    try:
        from sparkbatch import _cuda
    except ImportError as e:
        return {"cuda module": f"built but not importable: {e}"}
    module = (
        f"built for {', '.join(_cuda.architectures())} "
        f"(CUDA runtime {cuda_version(_cuda.runtime_version())}, linked statically)"
    )
    count = _cuda.device_count()
    driver = _cuda.driver_version()
    if count == 0:
        devices = "none visible" + (
            " (no NVIDIA driver)" if driver == 0 else f" (driver for CUDA {cuda_version(driver)})"
        )
    else:
        names = []
        for i in range(count):
            major, minor = _cuda.device_capability(i)
            names.append(f"{i}: {_cuda.device_name(i)} (sm_{major}{minor})")
        devices = f"{count} (driver for CUDA {cuda_version(driver)}): " + "; ".join(names)
    return {"cuda module": module, "cuda devices": devices, "cuda cublas": _cublas(_cuda)}


def _cublas(cuda: ModuleType) -> str:
    """Where cuBLAS loads from (the GPU network's matrix products need it; no GPU needed here)."""
    from sparkbatch.nn.gpu import cublas_candidates

    try:
        return cuda.load_cublas(cublas_candidates())
    except RuntimeError:
        return "not found (GPU training needs it: pip install nvidia-cublas-cu12, or nvidia-cublas)"


def collect() -> dict[str, str]:
    """Return the facts ``sparkbatch info`` prints, as strings keyed by what they describe."""
    from sparkbatch import _native

    build = _native.build_info()
    return {
        "sparkbatch": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "native crc32c": build["crc32c"]
        + (" (SIMD)" if build["crc32c"] != "table" else " (no CPU CRC instructions)"),
        "native threads": (
            f"{'OpenMP' if build['openmp'] else build['threads']}, a pool of "
            f"{build['pool_threads']} (SPARKBATCH_NUM_THREADS sets it)"
        ),
        "native build": ("debug" if build["debug"] else "release")
        + (f", sanitizers: {build['sanitizers']}" if build["sanitizers"] else "")
        + f", compiler {build['compiler']}",
        **_cuda_facts(),
        "numpy": _package_version("numpy"),
        "fsspec": _package_version("fsspec"),
        "pyspark": _package_version("pyspark"),
        "java": _java_version(),
    }


def run() -> int:
    """Print :func:`collect` as aligned ``key: value`` lines."""
    facts = collect()
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}")
    return 0

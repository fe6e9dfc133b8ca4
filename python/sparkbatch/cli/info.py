"""``sparkbatch info``: what this installation is made of, for bug reports and sanity checks."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess

from sparkbatch._version import __version__


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


def collect() -> dict[str, str]:
    """Return the facts ``sparkbatch info`` prints, as strings keyed by what they describe."""
    from sparkbatch import _native

    build = _native.build_info()
    cuda = importlib.util.find_spec("sparkbatch._cuda") is not None
    return {
        "sparkbatch": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "native crc32c": build["crc32c"]
        + (" (SIMD)" if build["crc32c"] != "table" else " (no CPU CRC instructions)"),
        "native threads": "OpenMP" if build["openmp"] else build["threads"],
        "native build": ("debug" if build["debug"] else "release")
        + (f", sanitizers: {build['sanitizers']}" if build["sanitizers"] else "")
        + f", compiler {build['compiler']}",
        "cuda module": "built" if cuda else "not built",
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

"""Where numba caches the compiled G.722 kernels, decided before numba is imported.

numba's ``cache=True`` writes next to the source, in ``mediastream/codecs/__pycache__``. When the
package is installed read-only (a system site-packages, a container image), that fails, so we
point ``NUMBA_CACHE_DIR`` at a per-user directory instead, unless the user already chose one.
numba reads the variable when it is first imported, so :mod:`mediastream.codecs.g722` imports
this module before numba. Importing it runs :func:`configure` once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def choose_cache_dir(
    package_dir: str | os.PathLike[str], writable: bool, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The ``NUMBA_CACHE_DIR`` to set, or None to leave numba's choice alone.

    None when the user set ``NUMBA_CACHE_DIR`` or when ``package_dir`` is ``writable`` (numba
    then caches beside the source); otherwise ``$XDG_CACHE_HOME/mediastream/numba``, or
    ``~/.cache/mediastream/numba`` without ``XDG_CACHE_HOME``.
    """
    del package_dir  # part of the signature for callers and tests: the decision is about it
    if environ.get("NUMBA_CACHE_DIR") or writable:
        return None
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mediastream", "numba")


def package_writable(package_dir: str | os.PathLike[str] = PACKAGE_DIR) -> bool:
    """Whether numba can write its cache beside the source (``__pycache__`` too, if present)."""
    pycache = os.path.join(package_dir, "__pycache__")
    if os.path.isdir(pycache):
        return os.access(pycache, os.W_OK)
    return os.access(package_dir, os.W_OK)


def configure(package_dir: str | os.PathLike[str] = PACKAGE_DIR) -> str | None:
    """Set ``NUMBA_CACHE_DIR`` if :func:`choose_cache_dir` says so; return what was set."""
    chosen = choose_cache_dir(package_dir, package_writable(package_dir))
    if chosen is not None:
        os.environ["NUMBA_CACHE_DIR"] = chosen
        config = sys.modules.get("numba.core.config")
        if config is not None:  # numba was imported first: it has already read the variable
            config.CACHE_DIR = chosen
    return chosen


CACHE_DIR = configure()

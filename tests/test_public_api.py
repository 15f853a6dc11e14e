"""The public surface: what ``import mediastream`` offers, and what importing it costs.

The package root imports lazily (PEP 562), so these guard both halves of that bargain: every
public name still resolves, and the sans-I/O layers still import without the server's
libraries. Import costs are checked in a fresh interpreter, since this one has loaded
everything already.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import mediastream
import mediastream.errors
from mediastream.errors import MediaStreamError

SERVER_LIBRARIES = ("websockets", "prometheus_client")

# what the README and the issue promise at the top level (``__all__`` may hold more)
PROMISED = {
    "AudioFrame",
    "Call",
    "Config",
    "HttpLimits",
    "MediaApp",
    "MediaServer",
    "MediaStreamError",
    "Playback",
    "PlaybackConfig",
    "ProtocolError",
    "ServerLimits",
    "StreamHandler",
    "StreamOptions",
    "UnsupportedCodecError",
    "WavRecorder",
    "__version__",
    "serve",
}


def test_every_public_name_resolves():
    missing = []
    for name in mediastream.__all__:
        try:
            getattr(mediastream, name)
        except AttributeError as exc:
            missing.append(f"{name}: {exc}")
    assert not missing, missing


def test_all_holds_the_promised_names_and_only_the_lazy_table():
    assert set(mediastream.__all__) >= PROMISED
    assert set(mediastream.__all__) == {"__version__", *mediastream._EXPORTS}
    assert len(mediastream.__all__) == len(set(mediastream.__all__))


def test_star_import_gives_every_public_name():
    namespace: dict[str, object] = {}
    exec("from mediastream import *", namespace)
    assert set(mediastream.__all__) <= set(namespace)


def test_dir_lists_every_public_name():
    assert set(mediastream.__all__) <= set(dir(mediastream))


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        mediastream.no_such_name  # noqa: B018 - the access under test
    assert not hasattr(mediastream, "SessionError")  # removed: nothing raised it


def test_serve_is_a_function_with_its_documented_signature():
    serve = mediastream.serve
    assert inspect.isfunction(serve)
    parameters = inspect.signature(serve).parameters
    assert list(parameters) == [
        "handler", "host", "port", "record_dir", "options", "transport", "instance_id"
    ]  # fmt: skip
    assert parameters["handler"].default is mediastream.StreamHandler
    assert (parameters["host"].default, parameters["port"].default) == ("127.0.0.1", 8765)
    keyword_only = [n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert keyword_only == ["record_dir", "options", "transport", "instance_id"]
    assert parameters["transport"].default == "websockets"
    assert parameters["instance_id"].default is None  # $MEDIASTREAM_INSTANCE_ID, else the host


def _modules_loaded_by(statement: str) -> list[str]:
    """Which of ``SERVER_LIBRARIES`` a fresh interpreter has loaded after ``statement``."""
    check = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in {SERVER_LIBRARIES!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "statement", ["import mediastream", "import mediastream.session", "import mediastream.codecs"]
)
def test_sans_io_layers_import_without_the_server_libraries(statement: str):
    assert _modules_loaded_by(statement) == []


def test_the_checker_sees_a_server_library_when_one_is_loaded():
    """The test above would pass vacuously if the subprocess check could not see anything."""
    assert "websockets" in _modules_loaded_by("import mediastream; mediastream.MediaServer")


def test_errors_imports_nothing_heavy():
    heavy = ("websockets", "prometheus_client", "pydantic", "numpy")
    check = (
        f"import sys, mediastream.errors\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _package_modules() -> list[ModuleType]:
    """Every module of the package that imports here (an optional extra may be missing)."""
    modules = []
    for info in pkgutil.walk_packages(mediastream.__path__, "mediastream."):
        if info.name.endswith("__main__"):  # runs the CLI
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as exc:
            if (exc.name or "").startswith("mediastream"):
                raise
    return modules


def test_every_exception_of_the_package_is_reachable_from_errors():
    defined = {
        f"{module.__name__}.{name}": value
        for module in _package_modules()
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    }
    assert "mediastream.errors.MediaStreamError" in defined  # the walk found the package
    unreachable = [
        where
        for where, cls in defined.items()
        if getattr(mediastream.errors, cls.__name__, None) is not cls
    ]
    assert not unreachable, f"define these in mediastream.errors, or re-export them: {unreachable}"


def test_every_mediastream_error_is_a_public_name():
    errors = [
        value
        for value in vars(mediastream.errors).values()
        if inspect.isclass(value)
        and issubclass(value, MediaStreamError)
        and value.__module__ == "mediastream.errors"  # not the runtime's, re-exported lazily
    ]
    assert len(errors) > 10
    for cls in errors:
        assert cls.__name__ in mediastream.__all__, cls
        assert getattr(mediastream, cls.__name__) is cls

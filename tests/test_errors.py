"""Install hints: every one the code prints names an extra that exists, in the README's form."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

from mediastream.errors import UsageError, install_hint

REPO = Path(__file__).resolve().parents[1]
EXTRAS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
             ["optional-dependencies"])  # fmt: skip


def hint_calls() -> list[tuple[str, int, str]]:
    """``(file, line, extra)`` of every ``install_hint(...)`` call in the package: a literal
    extra, or (the codec registry's one call) each extra a codec of the registry needs."""
    from mediastream import codecs

    found = []
    for path in sorted((REPO / "mediastream").rglob("*.py")):
        name = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "install_hint":
                arg = node.args[0]
                if isinstance(arg, ast.Constant):
                    found.append((name, node.lineno, arg.value))
                    continue
                assert name == "mediastream/codecs/__init__.py", f"{name}:{node.lineno}"
                extras = {entry[3] for entry in codecs._REGISTRY.values()} - {None}
                found += [(name, node.lineno, extra) for extra in sorted(extras)]
    return found


def test_every_install_hint_names_an_extra_of_pyproject():
    calls = hint_calls()
    assert {extra for _, _, extra in calls} >= {"telnyx", "ffmpeg", "uvloop"}, calls
    for path, line, extra in calls:
        assert extra in EXTRAS, f"{path}:{line}: no extra {extra!r} in pyproject.toml"


def test_no_hint_is_written_by_hand():
    """A literal ``pip install`` in the package would drift from ``install_hint`` (as the
    ``--loop uvloop`` one did: ``mediastream[uvloop]``, which fails from a clone)."""
    for path in sorted((REPO / "mediastream").rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "mediastream":
            continue
        for number, text in enumerate(path.read_text().splitlines(), 1):
            assert "pip install" not in text, f"{path.relative_to(REPO)}:{number}: {text}"


def test_hint_has_the_readme_form_and_every_readme_extra_exists():
    readme = (REPO / "README.md").read_text()
    assert install_hint("telnyx").startswith("pip install -e '.[telnyx]'")
    assert "pip install -e '.[telnyx]'" in readme
    for extras in re.findall(r"pip install -e '\.\[([^\]]+)\]'", readme):
        for extra in extras.split(","):
            assert extra.strip() in EXTRAS, f"README installs an unknown extra {extra!r}"
    assert "pip install 'mediastream[" not in readme  # fails from a clone


def test_loop_uvloop_without_uvloop_prints_the_hint(monkeypatch: pytest.MonkeyPatch):
    from mediastream.cli import run_event_loop

    async def main() -> None:  # never awaited: the import fails first
        raise AssertionError

    monkeypatch.setitem(sys.modules, "uvloop", None)  # ``import uvloop`` raises ImportError
    coroutine = main()
    with pytest.raises(UsageError) as caught:
        run_event_loop(coroutine, "uvloop")
    coroutine.close()
    assert str(caught.value) == f"--loop uvloop needs uvloop: {install_hint('uvloop')}"


def test_transport_picows_without_picows_prints_the_hint(monkeypatch: pytest.MonkeyPatch):
    from mediastream.server.base import server_class

    monkeypatch.setitem(sys.modules, "picows", None)  # ``import picows`` raises ImportError
    monkeypatch.delitem(sys.modules, "mediastream.server.picows", raising=False)
    with pytest.raises(UsageError) as caught:
        server_class("picows")
    assert str(caught.value) == f"--transport picows needs picows: {install_hint('picows')}"

"""The one TOML reader: `tomllib` on Python 3.11+, `tomli` on 3.10 (JetPack 6).

Configs (training, export), camera profiles and reference ranges are all read here.
A syntax error raises the parser's `TOMLDecodeError`, a `ValueError`: callers add
which file it was and what to do.
"""

from __future__ import annotations

from pathlib import Path

from wbcedge.errors import MissingDependencyError


def loads_toml(text: str) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # Python 3.10
        except ModuleNotFoundError:
            raise MissingDependencyError("reading TOML on Python 3.10 needs tomli: pip install tomli") from None
    return tomllib.loads(text)


def read_toml(path: Path) -> dict:
    return loads_toml(Path(path).read_text(encoding="utf-8"))

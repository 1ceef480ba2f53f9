"""The bundle manifest's schema (pydantic), checked before anything of a bundle is loaded.

The preprocessing spec is checked by `PreprocessSpec` itself (one place for its ranges:
input_size 16..1024, cell_fraction in (0, 1), crop_um > 0, known interpolation and
colour order). Policy for keys: every key listed here is validated (type, allowed values, ranges);
keys this wbcedge does not know are kept as they are (`extra="allow"`), at the top
level and in each model entry, so a newer exporter can add fields (reference
statistics for a shift alarm, a parent-bundle hash, ...) without breaking an older
runner. A newer *format_version* is refused instead, with what to do.

Every file name (`files`, `models[].file`, `default_model`) must be a plain relative
name inside the bundle: no absolute path, no `..`, no backslash, no drive letter.
That a name also *resolves* inside the folder (symlinks) is checked by
`wbcedge.bundle.safe_member`, which needs the folder.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wbcedge.errors import BundleFormatError
from wbcedge.preprocess import PreprocessSpec

FORMAT = "wbcedge-bundle"
BACKENDS = ("tflite", "onnx")
PRECISIONS = ("int8", "fp16", "fp32")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def plain_name_problem(name: Any) -> str | None:
    """Why `name` is not a plain relative file name inside a bundle, or None when it is."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a file name"
    if "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return f"{name!r} is not a plain relative name (absolute, drive or backslash)"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return f"{name!r} is not a plain relative name (empty, '.' or '..' part)"
    return None


def _plain(name: str) -> str:
    problem = plain_name_problem(name)
    if problem:
        raise ValueError(problem + ": a bundle names only files inside itself")
    return name


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ModelEntry(_Open):
    file: str
    backend: Literal[BACKENDS]  # type: ignore[valid-type]
    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    within_budget: bool
    accuracy: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    size_bytes: int | None = Field(default=None, ge=0)

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return _plain(v)

    @model_validator(mode="after")
    def _suffix_matches_backend(self) -> "ModelEntry":
        if not self.file.lower().endswith("." + self.backend):
            raise ValueError(f"model file {self.file!r} is declared {self.backend} but does not end in .{self.backend}")
        return self


class BundleManifest(_Open):
    format: Literal[FORMAT]  # type: ignore[valid-type]
    format_version: int = Field(ge=1)
    created: str | None = None
    classes: list[str] = Field(min_length=2, max_length=1000)
    preprocess: dict[str, Any]
    confidence_threshold: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    models: list[ModelEntry] = Field(min_length=1)
    default_model: str | None = None
    deployable: bool = False
    files: dict[str, str]

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        if any(not c.strip() for c in v) or len(set(v)) != len(v):
            raise ValueError("class names must be non-empty and distinct")
        return v

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, v: dict[str, Any]) -> dict[str, Any]:
        PreprocessSpec.from_dict(v)  # the spec's own ranges: input_size 16..1024, cell_fraction in (0, 1), ...
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for name, digest in v.items():
            _plain(name)
            if not SHA256.match(digest):
                raise ValueError(f"the sha256 of {name!r} is not 64 lowercase hex digits")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "BundleManifest":
        listed = set(self.files)
        for m in self.models:
            if m.file not in listed:
                raise ValueError(f"model file {m.file!r} is not among the bundle's hashed files")
        if self.default_model is not None and self.default_model not in {m.file for m in self.models}:
            raise ValueError(f"default_model {self.default_model!r} is not one of the model files")
        return self


REQUIRED_KEYS = {"classes": list, "preprocess": dict, "models": list, "files": dict}


def validate_manifest(data: Any, where: str = "manifest.json") -> BundleManifest:
    """A parsed manifest.json as a `BundleManifest`, or a BundleFormatError with one line per problem."""
    if not isinstance(data, dict):
        raise BundleFormatError(f"{where} holds a {type(data).__name__}, not a bundle manifest (a JSON object): "
                                "copy the bundle again from its source")
    wrong = [f"'{k}' ({t.__name__})" for k, t in REQUIRED_KEYS.items() if not isinstance(data.get(k), t)]
    if wrong:
        raise BundleFormatError(f"{where} lacks or has malformed {', '.join(wrong)}: re-export the bundle with "
                                "`wbcedge export RUN --int8`")
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()[:10]]
        raise BundleFormatError(f"{where} does not match the bundle schema: " + "; ".join(lines)
                                + ". Re-export the bundle with `wbcedge export`, or copy it again from its source") from None

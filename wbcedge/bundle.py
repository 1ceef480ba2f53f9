"""The model bundle: one folder with everything the device needs, and nothing else.

    manifest.json     format and version, classes, preprocessing spec, confidence
                      threshold, the model files with their precision and gate result,
                      data hashes, package versions, and the sha256 of every other file
    labels.json       class names in output order (also in the ONNX file's metadata)
    preprocess.json   the preprocessing spec (wbcedge.preprocess)
    reference.npz     the domain-shift check's reference statistics and thresholds
                      (wbcedge.device.shift; absent in bundles made before it)
    report.json/.md   the export accuracy gate's report
    *.tflite, *.onnx  the model files

The runner and the benchmark only accept a bundle that verifies. A bundle can
travel as one .tar.gz archive; unpacking never writes outside its target folder and
stops at the archive limits (MAX_ARCHIVE_MEMBERS, MAX_MEMBER_BYTES, MAX_UNPACKED_BYTES).

A manifest is data, never a path to elsewhere: it is checked against a schema
(`wbcedge.bundle_schema`) before anything is loaded, and every file it names must be
a plain relative name that resolves inside the bundle folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from wbcedge.bundle_schema import FORMAT, plain_name_problem, validate_manifest
from wbcedge.errors import BundleFormatError, InputDataError
from wbcedge.preprocess import PreprocessSpec
from wbcedge.provenance import file_sha256

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.json"
MAX_MANIFEST_BYTES = 4 << 20
# Archive limits, checked from the tar headers before each member is written (see docs/limits.md).
MAX_ARCHIVE_MEMBERS = 256
MAX_MEMBER_BYTES = 512 << 20      # 512 MiB: the largest model file a device should load
MAX_UNPACKED_BYTES = 1 << 30      # 1 GiB in all
DEFAULT_BUNDLE = Path(__file__).parent / "default_bundle"


class BundleError(BundleFormatError):
    """A bundle that is missing, damaged or of an unknown format; the message says what to do."""


def write_manifest(folder: Path, meta: dict) -> dict:
    """Write manifest.json: `meta` plus format fields and the sha256 of every other file in `folder`."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): file_sha256(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **meta, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path, check_version: bool = True) -> dict:
    """manifest.json of a bundle folder, checked against the schema (`wbcedge.bundle_schema`); BundleError if not."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path} is missing: not a wbcedge bundle (make one with `wbcedge export RUN --int8`)")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES // 1024} KB: not a bundle manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path} is not valid JSON ({type(exc).__name__}: {exc}); copy the bundle again "
                          "from its source, or re-export it") from None
    try:
        validate_manifest(manifest, str(path))
    except BundleFormatError as exc:
        raise BundleError(str(exc)) from None
    problem = version_problem(manifest, path)
    if check_version and problem:
        raise BundleError(problem)
    for name in manifest["files"]:
        safe_member(folder, name)
    return manifest


def version_problem(manifest: dict, path: Path) -> str | None:
    version = manifest["format_version"]
    if version == FORMAT_VERSION:
        return None
    return (f"{path}: bundle format version {version!r}; this wbcedge reads version {FORMAT_VERSION}: "
            "re-export the bundle with this wbcedge, or install the wbcedge that made it")


def safe_member(folder: Path, name: str) -> Path:
    """folder/name, when `name` is a plain relative name that resolves inside the folder (symlinks followed)."""
    problem = plain_name_problem(name)
    if problem:
        raise BundleError(f"bundle {folder}: {problem}; a bundle names only files inside itself")
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if root not in target.parents:
        raise BundleError(f"bundle {folder}: {name!r} resolves to {target}, outside the bundle (a symbolic link?); "
                          "refusing it: copy the bundle as plain files")
    return root / name


def model_format_problem(path: Path, backend: str) -> str | None:
    """Why a model file's bytes are not its declared format (TFLite: "TFL3" at byte 4; ONNX: a protobuf)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    is_tflite = head[4:8] == b"TFL3"
    if backend == "tflite" and not is_tflite:
        what = "ONNX (protobuf) bytes" if head[:1] == b"\x08" else "not a TFLite model (no TFL3 identifier)"
        return f"{path}: cannot load this model file: it is declared TFLite but holds {what}; re-export the bundle"
    if backend == "onnx" and (is_tflite or head[:1] != b"\x08"):
        what = "TFLite bytes (TFL3 identifier)" if is_tflite else "bytes that do not start an ONNX protobuf"
        return f"{path}: cannot load this model file: it is declared ONNX but holds {what}; re-export the bundle"
    return None


def verify_bundle(folder: Path) -> list[str]:
    """Everything wrong with a bundle folder, as sentences; an empty list means it verifies."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = read_manifest(folder, check_version=False)
    except BundleFormatError as exc:
        return [str(exc)]
    problems = [p for p in [version_problem(manifest, path)] if p]
    listed = manifest["files"]
    for name, digest in sorted(listed.items()):
        file = folder / name
        if not file.is_file():
            problems.append(f"{file} is listed in the manifest but missing")
        elif file_sha256(file) != digest:
            problems.append(f"{file} does not match its sha256 in the manifest (changed or damaged): "
                            "copy the bundle again from its source")
    root = folder.resolve()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink() and root not in p.resolve().parents:
            problems.append(f"{p} is a symbolic link to {p.resolve()}, outside the bundle")
        elif p.is_file() and p.name != MANIFEST and rel not in listed:
            problems.append(f"{p} is not listed in the manifest (added after export)")
    for model in manifest["models"]:
        file = folder / model["file"]
        if file.is_file():
            problem = model_format_problem(file, model["backend"])
            if problem:
                problems.append(problem)
    labels = folder / LABELS
    if LABELS in listed and labels.is_file():
        try:
            names = json.loads(labels.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            names = None
        if names != manifest["classes"]:
            problems.append(f"{labels} lists {names!r} but {path} lists {manifest['classes']!r}: the class "
                            "list must agree; re-export the bundle")
    return problems


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def spec(self) -> PreprocessSpec:
        try:
            return PreprocessSpec.from_dict(self.manifest["preprocess"])
        except (InputDataError, TypeError) as exc:
            raise BundleError(f"{self.path / MANIFEST}: its preprocessing spec is not usable ({exc})") from None

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("confidence_threshold", 0.0))

    @property
    def temperature(self) -> float:
        """Temperature scaling fitted at export (1.0: probabilities as the model gives them)."""
        return float((self.manifest.get("calibration") or {}).get("temperature", 1.0))

    @property
    def shift_reference_path(self) -> Path | None:
        """The domain-shift reference statistics, or None for a bundle without them."""
        name = (self.manifest.get("domain_shift") or {}).get("reference")
        return self.path / name if name and (self.path / name).is_file() else None

    @property
    def deployable(self) -> bool:
        return bool(self.manifest.get("deployable", False))

    @property
    def models(self) -> list[dict]:
        return list(self.manifest.get("models", []))

    def model_entry(self, backend: str | None = None, precision: str | None = None) -> dict:
        """The model file to run: the bundle's default, or the one matching backend/precision."""
        candidates = [m for m in self.models
                      if (backend is None or m["backend"] == backend) and (precision is None or m["precision"] == precision)]
        if not candidates:
            have = ", ".join(f"{m['backend']}/{m['precision']}" for m in self.models) or "none"
            raise BundleError(f"{self.path} has no {backend or 'any'}/{precision or 'any'} model (it has: {have}); "
                              "re-export with the formats you need")
        default = self.manifest.get("default_model")
        for m in candidates:
            if m["file"] == default:
                return m
        # Another backend than the default's: keep the default's precision (an int8 bundle runs int8 ONNX
        # too), else int8, taking only a file that passed the gate; fp32 only when asked or nothing else passed.
        default_precision = next((m["precision"] for m in self.models if m["file"] == default), None)
        for wanted in (default_precision, "int8"):
            for m in candidates:
                if m["precision"] == wanted and m.get("within_budget", True):
                    return m
        return candidates[0]

    def model_path(self, backend: str | None = None, precision: str | None = None) -> Path:
        return safe_member(self.path, self.model_entry(backend, precision)["file"])


def load_bundle(path: Path | None = None, verify: bool = True) -> Bundle:
    """Open a bundle folder or .tar.gz archive (default: the built-in bundle).

    The manifest is always checked against the schema and every name in it must stay
    inside the bundle; with `verify` (the default) every file's sha256 is checked too.
    """
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    if not path.exists():
        raise BundleError(f"{path}: no such bundle; give a folder made by `wbcedge export`, or omit it for the built-in one")
    if path.is_file():
        path = unpack(path, unpack_folder(path), replace=True)
    if verify:
        problems = verify_bundle(path)
        if problems:
            raise BundleError(f"bundle {path} failed verification:\n  " + "\n  ".join(problems))
    return Bundle(path, read_manifest(path))


def unpack_folder(archive: Path) -> Path:
    """Where an archive is unpacked: beside it (NAME.unpacked), or, when that folder cannot be
    written (read-only media), a per-archive folder in the user's cache (XDG_CACHE_HOME), else the temp folder."""
    archive = Path(archive)
    name = archive.name.removesuffix(".gz").removesuffix(".tgz").removesuffix(".tar") + ".unpacked"
    if os.access(archive.parent, os.W_OK):
        return archive.with_name(name)
    key = hashlib.sha256(str(archive.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    for base in (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wbcedge" / "bundles",
                 Path(tempfile.gettempdir()) / "wbcedge-bundles"):
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(base, os.W_OK):
            return base / f"{key}-{name}"
    raise BundleError(f"{archive}: no writable folder to unpack it into (its own folder, the cache and the temp "
                      "folder are read-only); unpack it yourself with `wbcedge bundle unpack ARCHIVE DEST`")


def pack(folder: Path, archive: Path) -> Path:
    """One .tar.gz archive of a bundle folder, its files at the archive's top level."""
    folder, archive = Path(folder), Path(archive)
    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(folder).as_posix())
    return archive


def unpack(archive: Path, dest: Path, replace: bool = False) -> Path:
    """Extract a bundle archive into `dest`, within the archive limits; nothing is left behind on refusal.

    Members are checked from their tar headers before each is written: only plain files
    and folders with plain relative names, at most MAX_ARCHIVE_MEMBERS members,
    MAX_MEMBER_BYTES each and MAX_UNPACKED_BYTES in all; tarfile's `data` filter
    (where Python has it) checks again. Everything is written into a temporary
    sibling folder and renamed to `dest` at the end. An existing non-empty `dest` is
    refused, unless `replace` (an earlier unpack of the same archive).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and not dest.is_dir():
        raise BundleError(f"{dest} exists and is not a folder; choose another destination")
    if dest.is_dir() and any(dest.iterdir()) and not replace:
        raise BundleError(f"{dest} is not empty; unpack into a new folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=dest.parent))
    except OSError as exc:
        raise BundleError(f"cannot unpack into {dest}: {exc.strerror or exc}; choose a folder you can write") from None
    try:
        try:
            tar = tarfile.open(archive, "r:*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{archive}: not a bundle archive ({exc})") from None
        with tar:
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(work, members=_checked_members(tar, archive), filter="data")
                else:  # Python without extraction filters: our own checks stand alone
                    tar.extractall(work, members=_checked_members(tar, archive))
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise BundleError(f"the disk is full while unpacking {archive} into {dest}") from None
                raise BundleError(f"{archive}: damaged or refused archive ({exc}); nothing was unpacked") from None
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return dest


def _checked_members(tar: tarfile.TarFile, archive: Path):
    members = total = 0
    for m in tar:
        members += 1
        if members > MAX_ARCHIVE_MEMBERS:
            raise BundleError(f"{archive}: more than {MAX_ARCHIVE_MEMBERS} members; not a bundle, refusing to unpack")
        if not (m.isfile() or m.isdir()):
            raise BundleError(f"{archive}: member {m.name!r} is a link or special file; refusing to unpack")
        problem = plain_name_problem(m.name.rstrip("/") if m.isdir() else m.name)
        if problem:
            raise BundleError(f"{archive}: member {problem}, it would be written outside the destination; "
                              "refusing to unpack")
        if m.size > MAX_MEMBER_BYTES:
            raise BundleError(f"{archive}: member {m.name!r} unpacks to {m.size:,} bytes, above the "
                              f"{MAX_MEMBER_BYTES:,} byte limit per file; refusing to unpack")
        total += m.size
        if total > MAX_UNPACKED_BYTES:
            raise BundleError(f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES:,} bytes; refusing to unpack")
        yield m

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
travel as one .tar.gz archive; unpacking never writes outside its target folder.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from wbcedge.errors import BundleFormatError, InputDataError
from wbcedge.preprocess import PreprocessSpec
from wbcedge.provenance import file_sha256

FORMAT = "wbcedge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
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


def verify_bundle(folder: Path) -> list[str]:
    """Everything wrong with a bundle folder, as sentences; an empty list means it verifies."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = read_manifest(folder)
    except BundleError as exc:
        return [str(exc)]
    problems = []
    if manifest.get("format") != FORMAT:
        problems.append(f"{path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        problems.append(f"{path}: bundle format version {version!r}; this wbcedge reads version {FORMAT_VERSION}: "
                        "re-export the bundle with this wbcedge, or install the wbcedge that made it")
    listed = manifest.get("files", {})
    for name, digest in sorted(listed.items()):
        file = folder / name
        if not file.is_file():
            problems.append(f"{file} is listed in the manifest but missing")
        elif file_sha256(file) != digest:
            problems.append(f"{file} does not match its sha256 in the manifest (changed or damaged): "
                            "copy the bundle again from its source")
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and p.name != MANIFEST and rel not in listed:
            problems.append(f"{p} is not listed in the manifest (added after export)")
    for model in manifest.get("models", []):
        if model.get("file") not in listed:
            problems.append(f"model file {model.get('file')} is not among the bundle's hashed files")
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
        return self.path / self.model_entry(backend, precision)["file"]


def load_bundle(path: Path | None = None, verify: bool = True) -> Bundle:
    """Open a bundle folder or .tar.gz archive (default: the built-in bundle); verify it unless told not to."""
    path = Path(path) if path is not None else DEFAULT_BUNDLE
    if not path.exists():
        raise BundleError(f"{path}: no such bundle; give a folder made by `wbcedge export`, or omit it for the built-in one")
    if path.is_file():
        path = unpack(path, path.with_name(path.name.removesuffix(".gz").removesuffix(".tar") + ".unpacked"))
    if verify:
        problems = verify_bundle(path)
        if problems:
            raise BundleError(f"bundle {path} failed verification:\n  " + "\n  ".join(problems))
    return Bundle(path, read_manifest(path))


REQUIRED_KEYS = {"classes": list, "preprocess": dict, "models": list, "files": dict}


def read_manifest(folder: Path) -> dict:
    """A bundle's manifest.json as a dict with the keys every command needs, or a `BundleError` saying what is wrong."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path} is missing: not a wbcedge bundle (make one with `wbcedge export RUN --int8`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}): copy the bundle again from its source") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} holds a {type(manifest).__name__}, not a bundle manifest: copy the bundle again")
    wrong = [f"'{k}' ({t.__name__})" for k, t in REQUIRED_KEYS.items() if not isinstance(manifest.get(k), t)]
    if wrong:
        raise BundleError(f"{path} lacks or has malformed {', '.join(wrong)}: re-export the bundle with "
                          "`wbcedge export RUN --int8`")
    return manifest


def pack(folder: Path, archive: Path) -> Path:
    """One .tar.gz archive of a bundle folder, its files at the archive's top level."""
    folder, archive = Path(folder), Path(archive)
    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(folder).as_posix())
    return archive


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive into `dest`, refusing links, devices and any path outside `dest`."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as exc:
        raise BundleError(f"{archive}: not a bundle archive ({exc})") from exc
    with tar:
        members = tar.getmembers()
        for m in members:
            target = (root / m.name).resolve()
            if not (m.isfile() or m.isdir()):
                raise BundleError(f"{archive}: member {m.name!r} is a link or special file; refusing to unpack")
            if target != root and root not in target.parents:
                raise BundleError(f"{archive}: member {m.name!r} would be written outside {dest}; refusing to unpack")
        for m in members:
            if m.isdir():
                (root / m.name).mkdir(parents=True, exist_ok=True)
                continue
            target = root / m.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as out:
                out.write(src.read())
    return dest

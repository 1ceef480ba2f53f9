"""The five white blood cell classes and how folder names map onto them.

One place for class names: the data layer, the model bundle and the report all
read `CLASSES` from here (a bundle stores its own copy, which the device trusts).
"""

from __future__ import annotations

from wbcedge.errors import InputDataError

CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
SKIP = "skip"  # a --map target that leaves a folder out on purpose

# Lower-cased folder or file-prefix spellings seen in public WBC datasets.
_ALIASES: dict[str, str] = {
    "ba": "basophil", "bas": "basophil", "baso": "basophil",
    "eo": "eosinophil", "eos": "eosinophil", "eosino": "eosinophil", "eosinophile": "eosinophil",
    "ly": "lymphocyte", "lym": "lymphocyte", "lymph": "lymphocyte", "lympho": "lymphocyte",
    "mo": "monocyte", "mon": "monocyte", "mono": "monocyte",
    "ne": "neutrophil", "neu": "neutrophil", "neut": "neutrophil", "neutro": "neutrophil",
    "neutrophile": "neutrophil",
    # PBC: segmented and band neutrophils
    "sne": "neutrophil", "bne": "neutrophil", "seg": "neutrophil", "band": "neutrophil",
    "segmented_neutrophil": "neutrophil", "band_neutrophil": "neutrophil",
}


def class_indices(labels):
    """Canonical class names -> their indices in CLASSES, as an int32 array."""
    import numpy as np

    index = {c: i for i, c in enumerate(CLASSES)}
    return np.array([index[label] for label in labels], dtype=np.int32)


class UnknownClassError(InputDataError):
    """A folder or label name that is not one of the five WBC classes."""


def normalize_class(name: str, extra: dict[str, str] | None = None) -> str:
    """Map a folder name such as 'Neutrophils', 'EOS' or 'SNE' onto a canonical class.

    `extra` maps further names (from `--map NAME=CLASS`) and wins over the built-ins.
    """
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    extra = {k.strip().lower(): v for k, v in (extra or {}).items()}
    if key in extra:
        return SKIP if extra[key].strip().lower() == SKIP else normalize_class(extra[key])
    if key in _ALIASES:
        return _ALIASES[key]
    if key in CLASSES:
        return key
    singular = key[:-1] if key.endswith("s") else key
    if singular in CLASSES:
        return singular
    if singular in _ALIASES:
        return _ALIASES[singular]
    raise UnknownClassError(
        f"'{name}' is not a known white blood cell class. Known classes: {', '.join(CLASSES)}. "
        f"Map it with --map '{name}=<class>' (or --map '{name}=skip' to leave it out)."
    )

"""The data layer: class-folder trees in, a leak-free data manifest (CSV) out.

`index` reads a class-folder tree into records (one `Problem` line per file it cannot use),
`split` assigns train/val/test so that identical bytes never straddle splits, `check`
re-reads a manifest and finds leaks or changed files, `augment` writes the paper's OpenCV
augmentation of the train split. `manifest` owns the CSV format. No TensorFlow here: the
data layer runs on any machine.
"""

from wbcedge.data.augment import (
                                  AUGMENTED_TAG,
                                  JPEG_QUALITY,
                                  ROTATIONS,
                                  ZOOM,
                                  AugmentResult,
                                  augment_image,
                                  augment_records,
                                  plan_copies,
                                  rotation_fill_scale,
)
from wbcedge.data.check import CheckResult, check_records
from wbcedge.data.index import index_folder
from wbcedge.data.manifest import (
                                  EXCLUDED,
                                  FIELDS,
                                  HUGE_SIDE,
                                  IMAGE_SUFFIXES,
                                  SAMPLES_DIR,
                                  SPLITS,
                                  TINY_SIDE,
                                  IndexResult,
                                  Problem,
                                  Record,
                                  counts_by_split,
                                  load_labelled,
                                  load_split,
                                  read_manifest,
                                  write_manifest,
)
from wbcedge.data.split import conflicting_groups, duplicate_groups, leak_groups, split_records, straddling_groups

__all__ = [name for name in dir() if not name.startswith("_")]

"""A case (an image with its label or targets) and a split of cases into train, validation and test parts."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IDENTITY_BYTES = 1 << 16  # read from each end of a file for its identity
IDENTITY_BLOCK, IDENTITY_SAMPLES = 1 << 12, 64  # and this many blocks of this size between the ends
ID_SUFFIXES = (".nii.gz", ".nii", ".png", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


@dataclass(frozen=True)
class Case:
    """One case: an image file, a label file (segmentation) or targets (classification, one 0/1 per finding).
    Where each channel has a file of its own (nnU-Net's ``case_0000``, ``case_0001``, ...), ``image`` is the
    first channel's file and ``more_channels`` the others, in order."""

    id: str
    image: Path
    label: Path | None = None
    targets: tuple[int, ...] | None = None
    patient: str | None = None
    more_channels: tuple[Path, ...] = ()

    @property
    def image_files(self) -> tuple[Path, ...]:
        """Every file of the image, one per channel file, in channel order."""
        return (self.image, *self.more_channels)


@dataclass
class Split:
    """Labelled train, validation and test parts, plus ``unlabelled`` images (entries without a label,
    such as MSD ``imagesTs``), which only pretraining can use."""

    name: str
    source: str
    train: list[Case]
    validation: list[Case]
    test: list[Case]
    unlabelled: list[Case] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def parts(self) -> dict[str, list[Case]]:
        return {"train": self.train, "validation": self.validation, "test": self.test, "unlabelled": self.unlabelled}

    def all_cases(self) -> list[Case]:
        """Every case of the split once, in order of id."""
        return sorted({c.id: c for part in self.parts.values() for c in part}.values(), key=lambda c: c.id)

    def note_overlaps(self) -> None:
        """Add a note for every case that sits in two labelled parts."""
        names = ("train", "validation", "test")
        for k, first in enumerate(names):
            for second in names[k + 1 :]:
                shared = sorted({c.id for c in self.parts[first]} & {c.id for c in self.parts[second]})
                if shared:
                    self.notes.append(
                        f"cases in both {first} and {second}: {', '.join(shared[:10])}"
                        + (f" and {len(shared) - 10} more" if len(shared) > 10 else "")
                    )


def case_id(image: Path) -> str:
    name = image.name
    for suffix in ID_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def file_identity(path: Path) -> str:
    """A fingerprint of an image's content: its size, its first and last 64 KiB and 64 blocks of 4 KiB spread
    evenly between them (a small file whole; a DICOM series folder: each file's, in name order; a detached
    header, ``.mhd`` or ``.nhdr``: its data file's too). A copy anywhere has the same one; another scan, even
    an uncompressed one of the same size with the same header and empty margins, differs in the blocks
    that cross the body. Cheap for any collection size; a file converted to another format is another file."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path, *data_file(path)]:
        size = file.stat().st_size
        digest.update(size.to_bytes(8, "little"))
        with file.open("rb") as handle:
            if size <= 2 * IDENTITY_BYTES + IDENTITY_SAMPLES * IDENTITY_BLOCK:
                digest.update(handle.read())
                continue
            between = np.linspace(IDENTITY_BYTES, size - IDENTITY_BYTES - IDENTITY_BLOCK, IDENTITY_SAMPLES)
            offsets = [0, *between.astype(int).tolist(), size - IDENTITY_BYTES]
            for offset, length in zip(offsets, [IDENTITY_BYTES, *[IDENTITY_BLOCK] * IDENTITY_SAMPLES, IDENTITY_BYTES]):
                handle.seek(offset)
                digest.update(handle.read(length))
    return digest.hexdigest()[:32]


def data_file(header: Path) -> list[Path]:
    """The data file a detached header names (MetaImage's ``ElementDataFile``, NRRD's ``data file``), when
    it is one file beside it; else none."""
    if not header.name.lower().endswith((".mhd", ".nhdr")):
        return []
    text = header.read_bytes()[:65536].decode("latin-1")
    found = re.search(r"^(?:ElementDataFile\s*=|data ?file:)\s*(\S+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    target = header.parent / found.group(1) if found else None
    return [target] if target is not None and target.is_file() else []


def inputs_record(cases: list[Case]) -> dict[str, list[str]]:
    """What a model was trained on, for checkpoints: the case ids and the identities of their image files
    (:func:`file_identity`; a file that cannot be read has none: reading it will name the problem)."""
    return {"cases": sorted(c.id for c in cases), "files": sorted({i for c in cases for i in identities(c)})}


def merged_record(*records: dict[str, list[str] | None] | None) -> dict[str, list[str] | None]:
    """The union of :func:`inputs_record` records; ``files`` is None when one of them did not record its files."""
    present = [r for r in records if r is not None]
    files = [r.get("files") for r in present]
    return {
        "cases": sorted({c for r in present for c in r.get("cases") or ()}),
        "files": None if any(f is None for f in files) else sorted({i for f in files for i in f}),
    }


def identities(case: Case) -> list[str]:
    """The :func:`file_identity` of each of ``case``'s image files that can be read."""
    found = []
    for path in case.image_files:
        try:
            found.append(file_identity(path))
        except OSError:
            continue
    return found

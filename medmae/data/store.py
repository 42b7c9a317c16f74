"""The preprocessed per-case store: each case's deterministic chain (:func:`medmae.data.transforms.
preprocessing_steps`) run once, into one compressed file per array, read back whole or one box at a time.

Layout: a folder per task definition, ``<root>/<task name>_<16 hex digits>``, the digits a SHA-256 over the
store format, medmae's version and the task record's preprocessing keys (:data:`PREPROCESSING_KEYS`), with
``store.json`` (format, version, task record) and, per case (its id made safe as a file name, see
:func:`safe_name`):

- ``<case>.image.b2nd``: the image ``[C, *S]`` float32, exact;
- ``<case>.label.b2nd``: the label map ``[1, *S]`` (uint8, or int16 for larger values), when the case has one;
- ``<case>.points.npz``, with a label: where fine-tuning crops may be centred (:func:`crop_points`), flat
  voxel indices ``foreground`` (label not 0) and ``background`` (label 0; inside the body for CT), each a
  seeded uniform sample of at most :data:`POINTS` voxels;
- ``<case>.json``, written last (a case without it is not in the store): the source files' identities
  (:func:`medmae.data.cases.file_identity`), the shapes, the affine after preprocessing and the spacing,
  the image's shape and affine as read (before preprocessing), and MONAI's record of the operations
  applied to the image (:func:`encoded`), so that a prediction goes back to the original grid exactly as
  from the chain.

Arrays are blosc2 NDArrays (LZ4HC level 9, bit shuffle, chunks of 64^3 voxels in blocks of 16^3; measured
in ``benchmarks/store_format.py``), each written under a temporary name in the same folder and renamed, so
a killed run never leaves a half file under a real name. A case is current while its ``.json`` exists, its
recorded identities equal its files' now and its arrays exist; :func:`preprocess` skips current cases and
rebuilds the others, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import get_random_patch
from monai.transforms import Compose, MapTransform, RandomizableTransform
from monai.transforms.utils import generate_pos_neg_label_crop_centers
from monai.utils import TraceKeys

import medmae
from medmae.data.cases import Case, file_identity
from medmae.data.transforms import IMAGE_ONLY, preprocessing_steps
from medmae.errors import DataError, UserError
from medmae.files import OutputError, write_text
from medmae.tasks import TaskSpec

log = logging.getLogger("medmae")

STORE_FORMAT = "medmae-store-2"
PREPROCESSING_KEYS = (
    "channels",
    "orientation",
    "spacing",
    "intensity",
    "crop_foreground",
    "roi",
    "labels",
    "regions",
    "ignore_label",
    "layout",
)
STORE_FILE = "store.json"
CHUNK, BLOCK = 64, 16  # voxels per axis of a compressed chunk and of a block inside it
CODEC_LEVEL = 9  # LZ4HC: crops read 4x faster than from ZSTD level 8, for 3.5 % more disk
TMP_MARK = ".tmp"
POINTS = 20_000  # crop centres kept per case and kind: a uniform sample of the foreground and background voxels


STORE_ENV = "MEDMAE_STORE"  # the folder for every task's stores, when set


def store_off(setting: bool | str) -> bool:
    """Whether config ``data.store`` turns the store off: ``off``, which YAML reads as false, or ``false``."""
    return setting is False or setting == "off"


def store_root(setting: bool | str, data_root: Path | None) -> Path:
    """The folder that holds the stores (config ``data.store``, not off): a folder as given; ``auto`` (or
    true): ``$MEDMAE_STORE``, else ``<data root>/medmae_store`` where the data root can be written, else
    ``~/.cache/medmae/store`` (always so for ``--images``)."""
    if setting is True:
        setting = "auto"
    if setting != "auto":
        return Path(setting).expanduser()
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    if data_root is not None and os.access(data_root, os.W_OK):
        return Path(data_root) / "medmae_store"
    return Path("~/.cache/medmae/store").expanduser()


def store_key(task: TaskSpec) -> dict[str, Any]:
    """What the store folder's name is a hash of: the format, medmae's version and the task's preprocessing keys."""
    return {
        "format": STORE_FORMAT,
        "medmae": medmae.__version__,
        "task": {key: task.record.get(key) for key in PREPROCESSING_KEYS},
    }


def store_folder(task: TaskSpec, root: str | Path) -> Path:
    """``<root>/<task name>_<16 hex digits of the SHA-256 of store_key(task)>``."""
    text = json.dumps(store_key(task), sort_keys=True, default=str)
    return Path(root) / f"{task.name}_{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def open_store(task: TaskSpec, root: str | Path, rebuild: bool = False) -> Path:
    """The store folder of ``task`` under ``root``, made with its ``store.json`` when missing. A folder whose
    ``store.json`` names another format or medmae version (or cannot be read) is refused with a
    :class:`UserError`, or, with ``rebuild``, emptied and made again; ``rebuild`` empties a matching one too."""
    folder = store_folder(task, root)
    record = folder / STORE_FILE
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: names a file, not a store folder")
    if rebuild and folder.exists():
        log.info("rebuilding the store %s from scratch", folder)
        shutil.rmtree(folder)
    if record.is_file():
        found = made_by(folder)
        if found != (STORE_FORMAT, medmae.__version__):
            raise UserError(
                f"{folder}: a store of format {found[0]} made by medmae {found[1]}, not format {STORE_FORMAT} "
                f"of medmae {medmae.__version__}: delete the folder, or build it again with "
                "medmae data preprocess --rebuild"
            )
        return folder
    write_text(record, json.dumps({**store_key(task), "task_record": task.record}, indent=2, default=str) + "\n")
    return folder


def made_by(folder: Path) -> tuple[str, str]:
    """(format, medmae version) that the store ``folder``'s ``store.json`` records; ``("unreadable", "?")``
    when it is missing or cannot be read."""
    try:
        found = json.loads((folder / STORE_FILE).read_text(encoding="utf-8"))
        return found["format"], found["medmae"]
    except (OSError, ValueError, TypeError, KeyError):
        return "unreadable", "?"


def holding(task: TaskSpec, cases: Sequence[Case], root: str | Path) -> Path | None:
    """The store folder of ``task`` under ``root`` where it is of this medmae and holds every case as its
    files are now (:func:`is_current`), else None (nothing is written)."""
    folder = store_folder(task, root)
    if made_by(folder) != (STORE_FORMAT, medmae.__version__):
        return None
    return folder if all(is_current(folder, case) for case in cases) else None


def safe_name(case_id: str) -> str:
    """``case_id`` as one file name: ``/`` (from ``--images`` subfolders) and other unsafe characters
    percent-encoded, a leading dot too (``patient1/ct`` -> ``patient1%2Fct``); distinct ids stay distinct."""
    name = quote(case_id, safe="-_.+@,=")
    return "%2E" + name[1:] if name.startswith(".") else name


def case_paths(folder: Path, case_id: str) -> dict[str, Path]:
    """The ``image``, ``label`` and ``meta`` files of ``case_id`` in the store ``folder``."""
    name = safe_name(case_id)
    return {
        "image": folder / f"{name}.image.b2nd",
        "label": folder / f"{name}.label.b2nd",
        "points": folder / f"{name}.points.npz",
        "meta": folder / f"{name}.json",
    }


def source_identities(case: Case) -> dict[str, Any]:
    """The identities of a case's image files (in channel order) and label; :class:`OSError` when one is unreadable."""
    return {
        "image": [file_identity(path) for path in case.image_files],
        "label": file_identity(case.label) if case.label is not None else None,
    }


def is_current(folder: Path, case: Case) -> bool:
    """Whether the store holds ``case`` as its files are now: its ``.json``, recording the identities its
    files have now, and its arrays."""
    paths = case_paths(folder, case.id)
    try:
        meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
        files = source_identities(case)
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("files") == files
        and paths["image"].is_file()
        and (case.label is None or (paths["label"].is_file() and paths["points"].is_file()))
    )


def remove_leftovers(folder: Path, case_id: str) -> None:
    """Remove the temporary files a killed write of ``case_id`` left in ``folder`` (never read: they carry no
    real name)."""
    prefix = f".{safe_name(case_id)}."
    for path in folder.glob(f"{prefix}*"):
        if TMP_MARK in path.name[len(prefix) :]:
            path.unlink(missing_ok=True)


def write_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` ``[C, *S]`` as a blosc2 NDArray at ``path`` (:func:`written_atomically`)."""
    import blosc2

    def write(tmp: Path) -> None:
        spatial = array.shape[1:]
        blosc2.asarray(
            np.ascontiguousarray(array),
            urlpath=str(tmp),
            mode="w",
            chunks=(1, *[min(CHUNK, s) for s in spatial]),
            blocks=(1, *[min(BLOCK, s) for s in spatial]),
            cparams=blosc2.CParams(codec=blosc2.Codec.LZ4HC, clevel=CODEC_LEVEL, nthreads=1),
        )

    written_atomically(path, write)


def written_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file in ``path``'s folder, fsynced, then renamed to ``path``; an
    ``OSError`` or a codec's ``RuntimeError`` becomes an :class:`OutputError` naming ``path``, and no
    temporary file is left."""
    tmp = path.with_name(
        f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_MARK}{path.suffix}"
    )
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as error:
        tmp.unlink(missing_ok=True)
        reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise OutputError(f"{path}: cannot be written ({reason})") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def label_dtype(label: np.ndarray) -> np.dtype:
    """uint8 where every value fits, else int16 (else int32)."""
    low, high = (int(label.min()), int(label.max())) if label.size else (0, 0)
    if 0 <= low and high < 256:
        return np.dtype(np.uint8)
    if -(1 << 15) <= low and high < (1 << 15):
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _root_cause(error: BaseException) -> BaseException:
    """The medmae DataError inside MONAI's wrapping RuntimeError, else the innermost error."""
    while error.__cause__ is not None and not isinstance(error, DataError):
        error = error.__cause__
    return error


def preprocessed(task: TaskSpec, case: Case) -> dict[str, Any]:
    """``image`` ``[C, *S]`` float32, ``label`` ``[1, *S]`` integer (or None) and ``affine`` ``[D+1, D+1]`` of
    ``case`` after ``task``'s deterministic chain, with ``source_shape`` and ``source_affine`` (the image as
    read, before it); a bad case raises :class:`DataError` naming its file."""
    keys = ["image", "label"] if case.label is not None else ["image"]
    data: dict[str, Any] = {"image": [str(p) for p in case.image_files] if case.more_channels else str(case.image)}
    if case.label is not None:
        data["label"] = str(case.label)
    steps = preprocessing_steps(task, keys)
    try:
        d = steps[0](data)  # ReadImaged
        source_shape = list(d["image"].shape)
        source_affine = np.asarray(d["image"].affine, dtype=np.float64).tolist()
        d = Compose(steps[1:])(d)
    except Exception as error:
        cause = _root_cause(error)
        if isinstance(cause, DataError):
            raise DataError(cause.path, cause.problem) from error
        raise DataError(case.image, f"{type(cause).__name__}: {cause}") from error
    image = d["image"]
    affine = np.asarray(image.affine, dtype=np.float64)
    array = np.asarray(torch.as_tensor(image).as_subclass(torch.Tensor), dtype=np.float32)
    if not np.isfinite(array).all():
        raise DataError(
            case.image,
            f"non-finite values after preprocessing: its intensities are too extreme for the "
            f"{task.intensity['rule']} rule (see medmae data check)",
        )
    label = None
    if case.label is not None:
        values = torch.as_tensor(d["label"]).as_subclass(torch.Tensor).numpy()
        label = values.astype(label_dtype(values))
    return {
        "image": array,
        "label": label,
        "affine": affine,
        "source_shape": source_shape,
        "source_affine": source_affine,
        "applied_operations": encoded(image.applied_operations),
    }


def encoded(value: Any) -> Any:
    """MONAI's record of the applied operations (dicts, lists, tuples, arrays, tensors, scalars) as JSON
    values, every array and tuple tagged so that :func:`decoded` restores it exactly. A transform's ``id``
    becomes MONAI's ``none``: inverting it from another process then skips MONAI's identity check."""
    if isinstance(value, dict):
        return {k: TraceKeys.NONE if k == TraceKeys.ID else encoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encoded(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [encoded(v) for v in value]}
    if isinstance(value, np.ndarray | np.generic):
        return {"__ndarray__": np.asarray(value).tolist(), "dtype": str(value.dtype)}
    if hasattr(value, "detach"):  # a tensor
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    return value


def decoded(value: Any) -> Any:
    """The inverse of :func:`encoded`."""
    if isinstance(value, list):
        return [decoded(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(decoded(v) for v in value["__tuple__"])
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    if "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    return {k: decoded(v) for k, v in value.items()}


def crop_points(task: TaskSpec, case_id: str, image: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    """Where today's fine-tuning chain centres its crops (MONAI's ``RandCropByPosNegLabeld``): ``foreground``,
    flat indices of the voxels ``[*S]`` whose label is not 0 (the ignore label counts as background, as
    :class:`~medmae.data.transforms.SamplingLabeld` makes it), and ``background``, those whose label is 0,
    for CT (window rule) only where some channel of ``image`` ``[C, *S]`` is above 0 (inside the body).
    Each is a uniform sample of at most :data:`POINTS` (int32, sorted), seeded by the case id, with the
    total count in ``foreground_voxels`` / ``background_voxels``."""
    labelled = label[0] != 0
    if task.ignore_label is not None:
        labelled &= label[0] != task.ignore_label
    background = ~labelled
    if task.intensity["rule"] == "window":
        background &= (image > 0).any(axis=0)
    rng = np.random.default_rng(int(hashlib.sha256(case_id.encode()).hexdigest()[:15], 16))
    points: dict[str, np.ndarray] = {}
    for kind, mask in (("foreground", labelled), ("background", background)):
        where = np.flatnonzero(mask)
        points[f"{kind}_voxels"] = np.int64(len(where))
        if len(where) > POINTS:
            where = np.sort(rng.choice(where, POINTS, replace=False))
        points[kind] = where.astype(np.int32)
    return points


def write_points(path: Path, points: dict[str, np.ndarray]) -> None:
    """``points`` (:func:`crop_points`) as an uncompressed ``.npz`` at ``path`` (:func:`written_atomically`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **points)

    written_atomically(path, write)


def read_points(folder: str | Path, case_id: str) -> dict[str, np.ndarray]:
    """The ``foreground`` and ``background`` crop centres of ``case_id`` (:func:`crop_points`)."""
    path = case_paths(Path(folder), case_id)["points"]
    try:
        with np.load(path) as points:
            return {key: points[key] for key in points.files}
    except (OSError, ValueError) as error:
        raise DataError(
            path, f"case {case_id}'s crop centres cannot be read ({error}); run medmae data preprocess --rebuild"
        ) from error


def write_case(task: TaskSpec, case: Case, folder: Path) -> dict[str, Any]:
    """Preprocess ``case`` and write it into the store ``folder`` (its ``.json`` last); returns that record.
    A bad case raises :class:`DataError`; an unwritable folder :class:`OutputError`. Either way the case is
    left out of the store (its ``.json`` removed first), with no temporary file left."""
    paths = case_paths(folder, case.id)
    paths["meta"].unlink(missing_ok=True)  # from here until the end the case is not in the store
    remove_leftovers(folder, case.id)
    try:
        files = source_identities(case)
    except OSError as error:
        where = next(
            (p for p in (*case.image_files, case.label) if p is not None and not Path(p).is_file()), case.image
        )
        raise DataError(where, f"cannot be read ({error.strerror or error})") from error
    result = preprocessed(task, case)
    image, label, affine = result["image"], result["label"], result["affine"]
    write_array(paths["image"], image)
    counts = {}
    if label is not None:
        write_array(paths["label"], label)
        points = crop_points(task, case.id, image, label)
        write_points(paths["points"], points)
        counts = {kind: int(points[f"{kind}_voxels"]) for kind in ("foreground", "background")}
    else:
        paths["label"].unlink(missing_ok=True)
        paths["points"].unlink(missing_ok=True)
    dims = image.ndim - 1
    meta = {
        "case": case.id,
        "files": files,
        "image_files": [str(path) for path in case.image_files],
        "label_file": str(case.label) if case.label is not None else None,
        "shape": list(image.shape),
        "label_shape": list(label.shape) if label is not None else None,
        "label_dtype": label.dtype.name if label is not None else None,
        "affine": affine.tolist(),
        "spacing": np.linalg.norm(affine[:dims, :dims], axis=0).tolist(),
        "source_shape": result["source_shape"],
        "source_affine": result["source_affine"],
        "applied_operations": result["applied_operations"],
        "voxels": counts,
    }
    write_text(paths["meta"], json.dumps(meta, indent=1) + "\n")
    return meta


@dataclass
class StoreRun:
    """What :func:`preprocess` did: the store folder, the ids written and already current, and the failed
    cases with their problem (a message starting with the file)."""

    folder: Path
    written: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _init_worker() -> None:
    """One torch thread per worker; Ctrl-C reaches the parent, which stops the workers and cleans up."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _work(job: tuple[TaskSpec, Case, Path]) -> tuple[str, str, str]:
    """(case id, ``written`` | ``failed`` | ``output``, problem) for one case, in a worker or in this process."""
    task, case, folder = job
    try:
        write_case(task, case, folder)
    except OutputError as error:
        return case.id, "output", str(error)
    except DataError as error:
        return case.id, "failed", str(error)
    return case.id, "written", ""


def part_of(cases: Sequence[Case], part: int = 0, parts: int = 1) -> list[Case]:
    """Part ``part`` (0 ... ``parts`` - 1) of ``cases``: every ``parts``-th case in order of id, from the
    ``part``-th; the parts are disjoint and together hold every case once."""
    if parts < 1 or not 0 <= part < parts:
        raise UserError(f"--part {part} --parts {parts}: the part counts from 0 to {parts - 1}")
    unique = sorted({case.id: case for case in cases}.values(), key=lambda case: case.id)
    return unique[part::parts]


def preprocess(
    task: TaskSpec,
    cases: Sequence[Case],
    root: str | Path,
    workers: int = 1,
    part: int = 0,
    parts: int = 1,
    progress: bool = True,
    rebuild: bool = False,
) -> StoreRun:
    """Write the cases of part ``part`` of ``parts`` (:func:`part_of`) into the store of ``task`` under
    ``root`` (:func:`open_store`), skipping current ones, with ``workers`` processes (one torch thread each).
    A case that fails is recorded in ``failed`` and the others go on; an unwritable folder or a full disk
    raises :class:`OutputError` with no temporary file left (and no folder, where this call made it and
    wrote no case)."""
    from tqdm import tqdm

    if task.is_classification or task.spatial_dims != 3:
        raise UserError(f"task {task.name}: the preprocessed store holds 3D segmentation tasks only")
    if workers < 1:
        raise UserError(f"--workers {workers}: at least 1")
    mine = part_of(cases, part, parts)
    made = [path for path in (Path(root), store_folder(task, root)) if not path.exists()]
    folder = open_store(task, root, rebuild=rebuild)
    run = StoreRun(folder)
    todo = []
    for case in mine:
        if is_current(folder, case):
            run.current.append(case.id)
        else:
            todo.append(case)
    jobs = [(task, case, folder) for case in todo]
    bar = tqdm(total=len(jobs), desc=f"preprocessing {task.name}", unit="case", disable=not progress or None)
    output_error = None
    try:
        if workers == 1 or len(jobs) <= 1:
            results = map(_work, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker)
            results = pool.imap_unordered(_work, jobs)
        try:
            for case_id, outcome, problem in results:
                bar.update()
                if outcome == "written":
                    run.written.append(case_id)
                elif outcome == "failed":
                    run.failed[case_id] = problem
                    log.warning("case %s failed: %s", case_id, problem)
                else:
                    output_error = problem
                    break
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        bar.close()
        for case in todo:  # a worker stopped mid-write leaves a temporary file: never read, removed here
            remove_leftovers(folder, case.id)
    if output_error is not None:
        if made and {path.name for path in folder.iterdir()} <= {STORE_FILE}:  # nothing but what this call made
            shutil.rmtree(made[0], ignore_errors=True)
        raise OutputError(output_error)
    run.written.sort()
    return run


def read_meta(folder: str | Path, case_id: str) -> dict[str, Any]:
    """The ``.json`` record of ``case_id``; :class:`DataError` when the store does not hold the case."""
    path = case_paths(Path(folder), case_id)["meta"]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(path, f"case {case_id} is not in the store (run medmae data preprocess)") from error


def read_case(folder: str | Path, case_id: str, with_label: bool = True) -> dict[str, Any]:
    """``image`` ``[C, *S]`` float32, ``label`` ``[1, *S]`` integer (None without one or ``with_label``), and
    ``meta`` (the case's record)."""
    import blosc2

    meta = read_meta(folder, case_id)
    paths = case_paths(Path(folder), case_id)
    image = blosc2.open(str(paths["image"]), mode="r")[:]
    label = None
    if with_label and meta.get("label_shape"):
        label = np.asarray(blosc2.open(str(paths["label"]), mode="r")[:])
    return {"image": np.asarray(image), "label": label, "meta": meta}


def read_crop(
    folder: str | Path, case_id: str, start: Sequence[int], size: Sequence[int], with_label: bool = True
) -> dict[str, Any]:
    """The box ``start`` .. ``start + size`` (spatial axes) of ``case_id``'s image ``[C, *size]`` and label
    ``[1, *size]`` (None without one or ``with_label``), decompressing only the chunks it touches of the
    memory-mapped files."""
    import blosc2

    paths = case_paths(Path(folder), case_id)
    box = (slice(None), *[slice(int(a), int(a) + int(n)) for a, n in zip(start, size)])
    try:
        image = np.asarray(blosc2.open(str(paths["image"]), mode="r", mmap_mode="r")[box])
        label = None
        if with_label and paths["label"].is_file():
            label = np.asarray(blosc2.open(str(paths["label"]), mode="r", mmap_mode="r")[box])
    except (OSError, RuntimeError, ValueError) as error:
        raise DataError(paths["image"], f"case {case_id} cannot be read from the store ({error})") from error
    return {"image": image, "label": label}


def one_decompression_thread(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: blosc2 decompresses in this worker's thread only (its default,
    one thread per core in every worker, oversubscribes the cores: 1.6 x fewer crops per second on 2 cores)."""
    import blosc2

    blosc2.set_nthreads(1)


def store_steps(folder: Path, task: TaskSpec, stage: str, samples: int) -> list:
    """The first steps of ``stage``'s chain (:func:`~medmae.data.transforms.segmentation_transform`'s ``first``)
    read from the store ``folder``: whole cases for validation and inference, only the drawn crops for train
    and pretrain (:class:`StoreCropd`)."""
    keys = ["image"] if stage in IMAGE_ONLY else ["image", "label"]
    if stage in ("train", "pretrain"):
        return [StoreCropd(folder, keys, task.roi, samples, balanced=stage == "train")]
    return [StoreReadd(folder, keys)]


class StoreReadd(MapTransform):
    """``{"case_id"}`` -> the case's preprocessed ``image`` ``[C, *S]`` (float32 MetaTensor with its affine
    and the record of the operations that made it, so that :func:`~medmae.inference.segment.to_original_grid`
    inverts it as it inverts the chain) and ``label`` ``[1, *S]`` (integer) read whole from the store folder."""

    def __init__(self, folder: Path, keys: Sequence[str]) -> None:
        super().__init__(keys)
        self.folder = folder

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case = read_case(self.folder, d["case_id"], with_label="label" in self.keys)
        meta = case["meta"]
        affine = torch.tensor(meta["affine"], dtype=torch.float64)
        for key in self.key_iterator(d):
            source = meta["image_files"][0] if key == "image" else meta["label_file"]
            operations = decoded(meta["applied_operations"]) if key == "image" else []
            d[key] = MetaTensor(
                torch.from_numpy(case[key]),
                affine=affine,
                meta={"filename_or_obj": source},
                applied_operations=operations,
            )
        return d


class StoreCropd(RandomizableTransform, MapTransform):
    """``{"case_id"}`` -> a list of ``samples`` dicts, each an ROI crop (``image`` ``[C, *roi]``, ``label``
    ``[1, *roi]``) read from the store without decompressing the rest of the case. ``balanced``: centres
    drawn as :func:`positive_negative_crops` draws them, from the store's crop points
    (:func:`medmae.data.store.crop_points`); otherwise starts uniform over the case, as MONAI's
    ``RandSpatialCropSamplesd``."""

    def __init__(self, folder: Path, keys: Sequence[str], roi: Sequence[int], samples: int, balanced: bool) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.folder, self.roi, self.samples, self.balanced = folder, tuple(roi), samples, balanced

    def starts(self, case_id: str, shape: Sequence[int]) -> list[list[int]]:
        """The first voxel of each crop, drawn by MONAI's own functions with this transform's random state:
        those of ``RandCropByPosNegLabeld`` (odds 1:1, a centre near the edge moved inside the case) over the
        stored points, or of ``RandSpatialCropSamplesd``."""
        if not self.balanced:
            return [[s.start for s in get_random_patch(shape, self.roi, self.R)] for _ in range(self.samples)]
        points = read_points(self.folder, case_id)
        try:
            centres = generate_pos_neg_label_crop_centers(
                self.roi, self.samples, 0.5, shape, points["foreground"], points["background"], self.R
            )
        except ValueError as error:  # no voxel of either kind
            raise DataError(case_paths(self.folder, case_id)["points"], f"case {case_id}: {error}") from error
        return [[int(c) - r // 2 for c, r in zip(centre, self.roi)] for centre in centres]

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        case_id = d["case_id"]
        shape = read_meta(self.folder, case_id)["shape"][1:]
        crops = []
        for start in self.starts(case_id, shape):
            crop = read_crop(self.folder, case_id, start, self.roi, with_label="label" in self.keys)
            crops.append({**d, **{key: torch.from_numpy(crop[key]) for key in self.key_iterator(d)}})
        return crops

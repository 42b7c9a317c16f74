"""The data path at a user's scale (issue 31): the preprocessed store against today's chain on generated
CT-like volumes of mixed size. Prints one JSON line per measurement, each with its target where it has one.

    python benchmarks/data_scale.py --work /tmp/data_scale            # N = 25, 100, 200 (~7 GB; checks 15 GB free)
    python benchmarks/data_scale.py --work /tmp/data_scale --tiny     # a CPU dry run at tiny sizes (CI)

Volumes: int16 HU ``.nii.gz`` at 0.78 x 0.78 x 2.5 mm, 256-384 voxels in-plane and 40-300 slices, a body
ellipsoid with four organs (labels 1-4), plus one whole-body outlier (512 x 512 x 600) among the first 25,
and one 512 x 512 x 160 CT (BTCV's size) for the per-item comparison; the task is ``btcv``. 25 volumes are
generated; cases 25 ... 199 are copies of them under their own names (each preprocessed and stored as its
own case). Measured:

(a) ``preprocess_s``: the first 25 cases preprocessed into an empty store with 1 and with 2 workers
    (target: 2 workers >= 1.6x faster);
(b) ``peak_rss_mb``: short pretraining and fine-tuning runs (tiny models, 2 steps, no loader workers)
    reading the store at each N (target: N = max within 10 % of N = min);
(c) ``store_mb`` against the float32 preprocessed volumes and the compressed inputs (target: <= 0.5x float32);
(d) ``items_per_s``: fine-tuning items (``crops`` crops each) of the 512 x 512 x 160 CT from the store against
    the chain from the file, one thread (target >= 50x), and pretraining crops per second from the store
    (2 loader workers) against the volumes held in memory (target >= 0.5x), each pair in one run.

The work folder keeps the generated volumes and the store between runs (delete it after: ``rm -r WORK``);
free disk is checked first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medmae.data.crops import CachedCrops
from medmae.data.loaders import CaseDataset
from medmae.data.manifests import load_split
from medmae.data.store import preprocess, store_folder
from medmae.tasks import load_task

SPACING = (0.78, 0.78, 2.5)
ORGANS = ((1, 60, (0.35, 0.15, 0.1), 0.3), (2, 45, (-0.45, -0.25, 0.2), 0.15), (3, 150, (0.4, -0.45, -0.15), 0.1))
ORGANS += ((4, 150, (-0.4, -0.45, -0.1), 0.1),)  # label, HU, centre and radius as fractions of the body
FULL = {"counts": [25, 100, 200], "inplane": (256, 384), "slices": (40, 300), "outlier": (512, 512, 600)}
FULL |= {"big": (512, 512, 160), "task": "btcv", "distinct": 25}
TINY = {"counts": [4, 6], "inplane": (40, 56), "slices": (20, 40), "outlier": (72, 72, 60), "big": (64, 64, 40)}
TINY |= {"task": "demo", "distinct": 4}


def ct_volume(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU volume of ``shape`` (air, a body ellipsoid, four organs, noise) and its uint8 label map."""
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 + (z / 1.1) ** 2
    image = np.where(body <= 1, np.float32(30), np.float32(-1000))
    label = np.zeros(shape, np.uint8)
    for value, hu, centre, radius in ORGANS:
        c = np.array(centre, np.float32) * 0.6 + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        inside = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) / 2) ** 2 <= radius**2) & (body <= 0.8)
        image[inside], label[inside] = hu, value
    image += rng.normal(0, 15, shape).astype(np.float32)
    return np.clip(image, -1024, 3071).astype(np.int16), label


def write_case(root: Path, name: str, shape: tuple[int, int, int], seed: int) -> None:
    """``imagesTr/img<name>.nii.gz`` and ``labelsTr/label<name>.nii.gz`` (compression level 1), once."""
    image_path, label_path = root / "imagesTr" / f"img{name}.nii.gz", root / "labelsTr" / f"label{name}.nii.gz"
    if image_path.is_file() and label_path.is_file():
        return
    image, label = ct_volume(shape, seed)
    affine = np.diag([*SPACING, 1.0])
    for array, path in ((label, label_path), (image, image_path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".partial.{path.name}")
        nib.save(nib.Nifti1Image(array, affine), str(partial))
        os.replace(partial, path)


def generate(work: Path, sizes: dict, count: int) -> list[str]:
    """The ``count`` mixed-size cases (the outlier third) under ``work/volumes``; their names. The first
    ``sizes["distinct"]`` are generated, the others are copies of them under their own names (generating
    costs more than the benchmark measures)."""
    rng = np.random.default_rng(0)
    names = []
    for k in range(count):
        inplane, slices = int(rng.integers(*sizes["inplane"])), int(rng.integers(*sizes["slices"]))
        shape = tuple(sizes["outlier"]) if k == 2 else (inplane, inplane, slices)
        names.append(f"{k:04d}")
        if k < sizes["distinct"]:
            write_case(work / "volumes", names[-1], shape, seed=k)
            continue
        for part, prefix in (("imagesTr", "img"), ("labelsTr", "label")):
            copy = work / "volumes" / part / f"{prefix}{names[-1]}.nii.gz"
            if not copy.exists():
                shutil.copyfile(work / "volumes" / part / f"{prefix}{k % sizes['distinct']:04d}.nii.gz", copy)
    write_case(work / "volumes", "big", tuple(sizes["big"]), seed=10_000)
    return names


def data_root(work: Path, names: list[str]) -> Path:
    """A BTCV-layout root of the named cases (links to the generated files): one case to validate on, one
    test case, the others to train on."""
    root = work / f"root_{len(names)}"
    for part, prefix in (("imagesTr", "img"), ("labelsTr", "label")):
        (root / part).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = root / part / f"{prefix}{name}.nii.gz"
            if not link.exists():
                link.symlink_to(work / "volumes" / part / f"{prefix}{name}.nii.gz")
    entry = [{"image": f"imagesTr/img{n}.nii.gz", "label": f"labelsTr/label{n}.nii.gz"} for n in names]
    (root / "dataset_0.json").write_text(
        json.dumps({"training": entry[2:], "validation": entry[:1], "test": entry[1:2]})
    )
    return root


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def preprocessing(task, cases, work: Path) -> None:
    """(a): the cases into a fresh store with 1 and 2 workers."""
    seconds = {}
    for workers in (1, 2):
        scratch = work / f"store_workers{workers}"
        shutil.rmtree(scratch, ignore_errors=True)
        started = time.perf_counter()
        preprocess(task, cases, scratch, workers=workers, progress=False)
        seconds[workers] = time.perf_counter() - started
        shutil.rmtree(scratch)
    speedup = seconds[1] / seconds[2]
    emit(measure="preprocess_s", cases=len(cases), workers_1=round(seconds[1], 1), workers_2=round(seconds[2], 1))
    emit(measure="preprocess_speedup_2_workers", value=round(speedup, 2), target=1.6, met=speedup >= 1.6)


def peak_rss_mb(command: list[str], env: dict) -> float:
    """The peak resident memory (MB) of ``command``, run in a fresh Python that waits for it alone."""
    probe = "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)"
    probe += "; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    done = subprocess.run([sys.executable, "-c", probe, *command], check=False, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return int(done.stdout.split()[-1]) / 1024


def training_memory(task_name: str, roots: dict[int, Path], work: Path, env: dict) -> None:
    """(b): peak RSS of a short pretraining and fine-tuning run at each N."""
    tiny = Path(__file__).resolve().parents[1] / "configs" / "test" / "tiny.yaml"
    short = ["train.epochs=1", "optim.warmup_epochs=0", "train.steps_per_epoch=2", "data.num_workers=0"]
    rss = {}
    for stage in ("pretrain", "finetune"):
        for count, root in roots.items():
            output = work / "runs" / f"{stage}_{count}"
            shutil.rmtree(output, ignore_errors=True)
            sets = [flag for key in short for flag in ("--set", key)]
            command = [sys.executable, "-m", "medmae", stage, "--task", task_name, "--data-root", str(root)]
            command += ["--config", str(tiny), "--output-dir", str(output), *sets]
            rss[stage, count] = peak_rss_mb(command, env)
            emit(measure="peak_rss_mb", stage=stage, cases=count, value=round(rss[stage, count]))
        low, high = min(roots), max(roots)
        ratio = rss[stage, high] / rss[stage, low]
        emit(
            measure="peak_rss_growth",
            stage=stage,
            cases=[low, high],
            value=round(ratio, 3),
            target=1.1,
            met=ratio <= 1.1,
        )


def store_size(task, cases, root: Path) -> None:
    """(c): the store's bytes against the float32 preprocessed volumes and the compressed inputs."""
    folder = store_folder(task, root)
    stored = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    float32 = sum(4 * int(np.prod(json.loads((folder / f"{c.id}.json").read_text())["shape"])) for c in cases)
    inputs = sum(Path(p).resolve().stat().st_size for c in cases for p in (*c.image_files, c.label))
    ratio = stored / float32
    emit(measure="store_mb", cases=len(cases), store=round(stored / 1e6), float32=round(float32 / 1e6))
    emit(measure="store_vs_float32", value=round(ratio, 3), target=0.5, met=ratio <= 0.5)
    emit(measure="store_vs_compressed_inputs", value=round(stored / inputs, 3), inputs_mb=round(inputs / 1e6))


def rate(make_item, seconds: float, least: int) -> float:
    """Items per second of ``make_item()`` over at least ``least`` items and ``seconds`` seconds."""
    started, done = time.perf_counter(), 0
    while done < least or time.perf_counter() - started < seconds:
        make_item()
        done += 1
    return done / (time.perf_counter() - started)


def item_rates(task, big, folder: Path, crops: int, seconds: float) -> None:
    """(d), fine-tuning: items of the big CT from the chain and from the store, one thread."""
    chain = CaseDataset(task, [big], "train", samples=crops)
    stored = CaseDataset(task, [big], "train", samples=crops, store=folder)
    rates = {}
    for name, dataset in (("chain", chain), ("store", stored)):
        seeds = iter(range(10**6))

        def item(dataset=dataset, seeds=seeds):
            dataset.transform.set_random_state(seed=next(seeds))
            return dataset[0]

        rates[name] = rate(item, seconds, 2)
    ratio = rates["store"] / rates["chain"]
    emit(
        measure="finetune_items_per_s",
        shape=list(nib.load(big.image).shape),
        crops=crops,
        chain=round(rates["chain"], 3),
    )
    emit(
        measure="finetune_items_per_s_store",
        value=round(rates["store"], 2),
        ratio=round(ratio, 1),
        target=50,
        met=ratio >= 50,
    )


def crop_rates(task, cases, folder: Path, seconds: float) -> None:
    """(d), pretraining: crops per second from volumes held in memory and from the store (2 workers)."""
    dataset = CaseDataset(task, cases, "inference", store=folder)
    rates = {}
    for source, workers in (("device", 0), ("store", 2)):
        loader = CachedCrops(
            dataset, task.roi, 2, 4, 0, 1, 0, torch.device("cpu"), False, crops_from=source, num_workers=workers
        )
        passes = iter(range(10**6))
        batches = iter(())

        def batch(loader=loader, passes=passes):
            nonlocal batches
            try:
                return next(batches)
            except StopIteration:
                loader.sampler.set_pass(next(passes))
                batches = iter(loader)
                return next(batches)

        rates[source] = rate(batch, seconds, 3) * 8
    ratio = rates["store"] / rates["device"]
    emit(
        measure="pretrain_crops_per_s",
        cases=len(cases),
        memory=round(rates["device"], 1),
        store=round(rates["store"], 1),
    )
    emit(measure="pretrain_store_vs_memory", value=round(ratio, 2), target=0.5, met=ratio >= 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the volumes, the store and the runs (kept)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run (CI)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each rate is measured")
    args = parser.parse_args()
    sizes = TINY if args.tiny else FULL
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    need = 0.1e9 if args.tiny else 15e9
    if shutil.disk_usage(work).free < need:
        raise SystemExit(
            f"{work}: {shutil.disk_usage(work).free / 1e9:.1f} GB free, the benchmark needs {need / 1e9:.0f}"
        )
    torch.set_num_threads(1)
    task = load_task(sizes["task"])
    names = generate(work, sizes, max(sizes["counts"]))
    roots = {count: data_root(work, names[:count]) for count in sizes["counts"]}
    everything = data_root(work, [*names, "big"])
    cases = {c.id: c for c in load_split(task, everything).all_cases()}
    first = [cases[c] for c in sorted(cases) if c != "imgbig"][: min(sizes["counts"])]
    emit(measure="machine", cpus=os.cpu_count(), torch=torch.__version__, task=task.name)
    preprocessing(task, first, work)
    store_root = work / "store"
    env = dict(os.environ, MEDMAE_STORE=str(store_root), OMP_NUM_THREADS="2")
    preprocess(task, list(cases.values()), store_root, workers=2, progress=False)
    store_size(task, [c for c in cases.values() if c.id != "imgbig"], store_root)
    folder = store_folder(task, store_root)
    item_rates(task, cases["imgbig"], folder, crops=4, seconds=args.seconds)
    crop_rates(task, first, folder, args.seconds)
    training_memory(sizes["task"], roots, work, env)
    print(
        json.dumps(
            {"measure": "max_rss_mb_this_process", "value": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
        )
    )


if __name__ == "__main__":
    main()

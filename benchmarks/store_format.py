"""Formats for the preprocessed per-case store (``medmae data preprocess``): size, write time, the time to
read one random crop, and the largest error, for blosc2 NDArrays (ZSTD level 8 and LZ4HC level 9, float32;
ZSTD float16) against numpy's ``savez_compressed``. Prints one JSON line per format.

    python benchmarks/store_format.py                                  # a CT-like 1 x 256 x 256 x 200 volume
    python benchmarks/store_format.py --shape 1 64 64 48 --crop 32 --crops 5

The volume is smooth noise inside a body box, zero outside, scaled to 0..1 (a windowed CT after
preprocessing). Each blosc2 array has chunks of 64^3 and blocks of 16^3 voxels (clipped to the volume),
one compression thread, and is read memory-mapped; a crop from the ``.npz`` must decompress the whole
volume.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np
from scipy.ndimage import gaussian_filter

FORMATS = (
    ("blosc2_zstd8_float32", blosc2.Codec.ZSTD, 8, np.float32),
    ("blosc2_lz4hc9_float32", blosc2.Codec.LZ4HC, 9, np.float32),
    ("blosc2_zstd8_float16", blosc2.Codec.ZSTD, 8, np.float16),
)


def ct_like(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A ``[C, *S]`` float32 volume in 0..1: smoothed noise inside a central box, exactly 0 outside."""
    rng = np.random.default_rng(seed)
    spatial = shape[1:]
    tissue = gaussian_filter(rng.normal(size=spatial).astype(np.float32), 6) * 20
    body = np.zeros(spatial, bool)
    body[tuple(slice(s * 3 // 20, s - s * 3 // 20) for s in spatial[:2])] = True
    volume = np.where(body, tissue + rng.normal(scale=0.05, size=spatial).astype(np.float32), 0)
    volume = (volume - volume.min()) / (volume.max() - volume.min())
    return np.repeat(volume[None].astype(np.float32), shape[0], axis=0)


def crop_ms(read, shape: tuple[int, ...], crop: int, crops: int, rng: np.random.Generator) -> float:
    """Mean milliseconds of ``read(box)`` over ``crops`` random boxes of ``crop`` voxels per axis."""
    started = time.perf_counter()
    for _ in range(crops):
        first = [int(rng.integers(0, max(1, s - crop + 1))) for s in shape[1:]]
        read((slice(None), *[slice(a, a + crop) for a in first]))
    return 1e3 * (time.perf_counter() - started) / crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 256, 256, 200], help="C X Y Z")
    parser.add_argument("--crop", type=int, default=96, help="voxels per axis of a read crop")
    parser.add_argument("--crops", type=int, default=20, help="crops read per format")
    args = parser.parse_args()
    shape = tuple(args.shape)
    volume = ct_like(shape)
    base = {"shape": list(shape), "float32_mb": round(volume.nbytes / 1e6, 2), "crop": args.crop}
    with tempfile.TemporaryDirectory(prefix="store_format.") as scratch:
        for name, codec, level, dtype in FORMATS:
            path = Path(scratch) / f"{name}.b2nd"
            data = np.ascontiguousarray(volume.astype(dtype))
            started = time.perf_counter()
            blosc2.asarray(
                data,
                urlpath=str(path),
                mode="w",
                chunks=(1, *[min(64, s) for s in shape[1:]]),
                blocks=(1, *[min(16, s) for s in shape[1:]]),
                cparams=blosc2.CParams(codec=codec, clevel=level, nthreads=1),
            )
            write_s = time.perf_counter() - started
            opened = blosc2.open(str(path), mode="r", mmap_mode="r")
            read_ms = crop_ms(lambda box, a=opened: a[box], shape, args.crop, args.crops, np.random.default_rng(1))
            error = float(np.abs(np.asarray(opened[:], dtype=np.float32) - volume).max())
            line = {"format": name, "mb": round(os.path.getsize(path) / 1e6, 2), "write_s": round(write_s, 3)}
            print(json.dumps({**line, "crop_ms": round(read_ms, 2), "max_abs_error": error, **base}), flush=True)
        started = time.perf_counter()
        buffer = io.BytesIO()
        np.savez_compressed(buffer, image=volume)
        write_s = time.perf_counter() - started
        packed = buffer.getvalue()

        def npz_crop(box):
            return np.load(io.BytesIO(packed))["image"][box]

        read_ms = crop_ms(npz_crop, shape, args.crop, args.crops, np.random.default_rng(1))
        error = float(np.abs(np.load(io.BytesIO(packed))["image"] - volume).max())
        line = {"format": "npz_zlib_float32", "mb": round(len(packed) / 1e6, 2), "write_s": round(write_s, 3)}
        print(json.dumps({**line, "crop_ms": round(read_ms, 2), "max_abs_error": error, **base}), flush=True)


if __name__ == "__main__":
    main()

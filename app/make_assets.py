"""Build the small real-image assets the app ships, from an MNIST / Fashion-MNIST data folder.

    python -m app.make_assets --data-dir DATA

assets/examples/*.png: 2 test images per class of each data set (the Interpolate tab's pickers).
assets/latent/<name>-test.npz: the first 5,000 test images (uint8 [N, 28, 28]) and labels, so the
Latent map works on a machine with no data folder and no internet. Run once by a maintainer;
the app itself only reads assets/.
"""
from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from lsgm_core import atomic
from lsgm_core.data import load_dataset
from lsgm_core.tensors import crop

from .paths import ASSETS, CLASS_NAMES

PER_CLASS = 2
LATENT_POINTS = 5000


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m app.make_assets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    args = ap.parse_args(argv)
    for name in CLASS_NAMES:
        ds = load_dataset(name, "test", args.data_dir, download=False)
        images = crop(ds.images, ds.crop)[:, 0].numpy()
        labels = ds.labels.numpy()
        buf = io.BytesIO()  # numpy would add .npz to the name of a temporary file
        np.savez_compressed(buf, images=images[:LATENT_POINTS], labels=labels[:LATENT_POINTS].astype(np.uint8))
        atomic.write_bytes(ASSETS / "latent" / f"{name}-test.npz", buf.getvalue())
        # examples come from beyond the latent-map subset, so the two never overlap
        for label in range(10):
            for k, i in enumerate(np.flatnonzero(labels[LATENT_POINTS:] == label)[:PER_CLASS]):
                atomic.atomic_write(ASSETS / "examples" / f"{name}-{label}-{k}.png",
                                    lambda tmp: Image.fromarray(images[LATENT_POINTS + i]).save(
                                        tmp, format="PNG", optimize=True))


if __name__ == "__main__":
    main()

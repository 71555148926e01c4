"""app.images' own PNG writer: what PIL reads back from it is the image written, grey and RGB."""
import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.images import png_data_uris


@pytest.mark.parametrize("channels", [1, 3])
def test_png_data_uris_read_back_as_the_images(channels):
    images = torch.randint(0, 256, (4, channels, 9, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    uris = png_data_uris(images)
    assert len(uris) == 4 and all(u.startswith("data:image/png;base64,") for u in uris)
    for uri, image in zip(uris, images):
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
            assert im.mode == ("L" if channels == 1 else "RGB") and im.size == (13, 9)
            np.testing.assert_array_equal(np.asarray(im), image.permute(1, 2, 0).squeeze(2).numpy())

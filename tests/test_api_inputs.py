"""The inputs a CLIP user passes to ``vlalign.load(run)``: strings, PIL images, paths, HWC or CHW arrays,
and open_clip's ``preprocess`` then ``encode_image`` on its tensors."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.api import load
from vlalign.data.images import image_array, is_channels_last
from vlalign.data.specs import build_source


@pytest.fixture(scope="module")
def aligner(trained_tiny_run):
    return load(trained_tiny_run)


@pytest.fixture(scope="module")
def chw_images():
    source = build_source("shapes:n=3,seed=9,size=32")  # the tiny run's image size: no resizing involved
    return [source[i].image for i in range(3)]  # [3, 32, 32] uint8 each


def test_a_string_is_one_text_not_one_per_character(aligner):
    one = aligner.encode_text("a red circle")
    assert one.shape == (1, aligner.embed_dim)
    torch.testing.assert_close(one, aligner.encode_text(["a red circle"]))
    assert aligner.encode_text(["a red circle", "a blue star"]).shape == (2, aligner.embed_dim)


def test_pil_images_paths_and_hwc_arrays_give_the_chw_embeddings(aligner, chw_images, tmp_path):
    expected = aligner.encode_image(chw_images)  # [3, E]
    hwc = [x.transpose(1, 2, 0) for x in chw_images]  # [32, 32, 3]: once read as 32 channels
    paths = []
    for i, x in enumerate(hwc):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(x).save(paths[-1])
    as_float = [x.astype(np.float32) / 255 for x in hwc]  # values in [0, 1], as matplotlib reads a PNG
    for images in ([Image.fromarray(x) for x in hwc], paths, [str(p) for p in paths], hwc, as_float,
                   [torch.from_numpy(x) for x in chw_images], np.stack(hwc)):
        torch.testing.assert_close(aligner.encode_image(images), expected)
    single = aligner.encode_image(Image.fromarray(hwc[0]))
    assert single.shape == (1, aligner.embed_dim)
    torch.testing.assert_close(single, expected[:1])
    torch.testing.assert_close(aligner.encode_image(paths[1]), expected[1:2])
    torch.testing.assert_close(aligner.encode_image(hwc[2]), expected[2:])


def test_preprocess_is_open_clips_resize_and_centre_crop(aligner, chw_images):
    image = Image.fromarray(chw_images[0].transpose(1, 2, 0))
    pixels = aligner.preprocess(image)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    torch.testing.assert_close(aligner.encode_image(pixels), aligner.encode_image([chw_images[0]]))
    torch.testing.assert_close(aligner.encode_image(pixels[None]), aligner.encode_image(image))
    assert aligner.preprocess([image, image]).shape == (2, 3, 32, 32)

    wide = np.concatenate([np.zeros_like(chw_images[1]), chw_images[1], np.zeros_like(chw_images[1])], axis=2)
    assert wide.shape == (3, 32, 96)
    torch.testing.assert_close(aligner.preprocess(wide), aligner.preprocess(chw_images[1]))  # the centre square
    squashed = aligner.preprocess(wide, crop=False)  # the whole width squeezed, as training resizes
    torch.testing.assert_close(aligner.encode_image(squashed), aligner.encode_image(wide))
    assert not torch.allclose(squashed, aligner.preprocess(wide))


def test_the_shorter_side_is_resized_before_the_crop(aligner, chw_images):
    tall = np.repeat(np.repeat(chw_images[2], 2, axis=1), 2, axis=2)[:, :, 8:56]  # [3, 64, 48]
    pixels = aligner.preprocess(tall)  # 48 -> 32 wide, 64 -> 43 high, centre 32 rows kept
    assert pixels.shape == (3, 32, 32)
    full = aligner.transform([tall[:, 8:56]])[0]  # the centre 48 x 48, resized whole
    assert (pixels - full).abs().mean() < 0.05


@pytest.mark.parametrize("shape, channels, last", [
    ((32, 32, 3), 3, True), ((3, 32, 32), 3, False), ((64, 48, 1), 3, True), ((1, 64, 48), 3, False),
    ((64, 64, 5), 5, True), ((5, 64, 64), 5, False), ((3, 32, 3), 3, False),  # ambiguous: as stored
])
def test_channels_last_is_inferred_from_the_axes(shape, channels, last):
    assert is_channels_last(shape, channels) == last
    assert image_array(np.zeros(shape, np.uint8), channels).shape[0] == (shape[-1] if last else shape[0])

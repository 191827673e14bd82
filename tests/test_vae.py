"""Latents in and out: `nag-engine encode` (image folder / ADM npz -> latents through a
diffusers AutoencoderKL), the latents data set, decoding sampled latents (grid, shards), and
the errors a wrong path, folder or shape gets. The VAE is a tiny random AutoencoderKL saved to a
temp folder (nothing is downloaded)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import nag_engine as ne
from nag_engine.training import TrainConfig, Trainer, load_dataset
from nag_engine.vae import (
    VAE,
    ImageSource,
    center_crop,
    encode_images,
    part_generator,
    read_class_list,
    to_uint8,
)

diffusers = pytest.importorskip("diffusers")
Image = pytest.importorskip("PIL.Image")


def save_tiny_vae(folder, scaling_factor=0.5):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=16,
        scaling_factor=scaling_factor,
    )
    vae.save_pretrained(folder)
    return vae.eval()


def save_image_folder(folder, per_class=3, classes=("cat", "dog")):
    """Class subfolders of small RGB images of different sizes (the crop must handle them)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 4 * i, 18 + 8 * c)  # width, height
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    save_tiny_vae(folder)
    return folder


def test_center_crop_is_adms_resize_then_centre_square():
    pixels = np.zeros((10, 40, 3), dtype=np.uint8)
    pixels[:, 18:22] = 255  # a white band in the middle of a wide image
    out = center_crop(Image.fromarray(pixels), 8)
    assert out.shape == (8, 8, 3)
    assert out[:, 4].min() > 200 and out[:, 0].max() < 60 and out[:, 7].max() < 60
    big = Image.fromarray(np.full((100, 64, 3), 7, dtype=np.uint8))  # halved twice first
    assert (center_crop(big, 16) == 7).all()


def test_encode_writes_what_the_vae_gives(tmp_path, vae_dir):
    images = save_image_folder(tmp_path / "images")
    out = tmp_path / "latents.npz"
    encode_images(images, out, vae_dir, size=16, batch_size=4, seed=3)
    saved = np.load(out)
    assert saved["latents"].shape == (6, 4, 8, 8) and saved["latents"].dtype == np.float32
    assert saved["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert saved["class_names"].tolist() == ["cat", "dog"] and float(saved["scaling_factor"]) == 0.5
    assert not list(tmp_path.glob(".*.tmp"))
    # the same as the VAE's own encode of the cropped images, in the same batches and draws
    vae = VAE.load(vae_dir)
    source = ImageSource(images)
    generator = part_generator(3, 0, "cpu")  # (one part: 6 images)
    expected = []
    for batch in source.batches(16, 4):
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1
        posterior = vae.autoencoder.encode(pixels).latent_dist
        expected.append(posterior.sample(generator=generator) * 0.5)
    torch.testing.assert_close(torch.from_numpy(saved["latents"]), torch.cat(expected))
    encode_images(images, tmp_path / "again.npz", vae_dir, size=16, batch_size=4, seed=3)
    again = np.load(tmp_path / "again.npz")["latents"]
    assert np.array_equal(again, saved["latents"])  # seeded: reproducible


def test_encode_into_parts_resumes_and_equals_the_single_file(tmp_path, vae_dir):
    images = save_image_folder(tmp_path / "images", per_class=3)
    whole = encode_images(images, tmp_path / "all.npz", vae_dir, size=16, part_size=4, seed=1)
    assert whole == {
        "images": 6,
        "latent_shape": [4, 8, 8],
        "classes": 2,
        "parts_written": None,
        "parts_on_disk": None,
    }
    parts = tmp_path / "parts"
    first = encode_images(images, parts, vae_dir, size=16, part_size=4, seed=1)
    assert (first["parts_written"], first["parts_on_disk"]) == (2, 0)
    assert sorted(p.name for p in parts.iterdir()) == ["encode.json", "part_00000.npz",
                                                       "part_00001.npz"]  # fmt: skip
    reference = load_dataset("latents", path=str(tmp_path / "all.npz"))
    split = load_dataset("latents", path=str(parts))
    assert torch.equal(split.x, reference.x) and torch.equal(split.y, reference.y)
    saved = (parts / "part_00001.npz").read_bytes()
    (parts / "part_00001.npz").unlink()  # as if the run died before the last part
    again = encode_images(images, parts, vae_dir, size=16, part_size=4, seed=1)
    assert (again["parts_written"], again["parts_on_disk"]) == (1, 1)
    assert np.array_equal(
        np.load(parts / "part_00001.npz")["latents"], np.load(io.BytesIO(saved))["latents"]
    )
    with pytest.raises(ValueError, match="different encode run .*seed"):
        encode_images(images, parts, vae_dir, size=16, part_size=4, seed=2)


def test_class_lists_and_hidden_folders(tmp_path):
    images = save_image_folder(tmp_path / "images", per_class=1, classes=("n02", "n05"))
    (tmp_path / "images" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "images" / "__MACOSX").mkdir()
    assert ImageSource(images).labels.tolist() == [0, 1]  # hidden folders are no classes
    (tmp_path / "classes.txt").write_text("# ImageNet-style ids\nn01\nn02\nn03\nn04\nn05\n")
    names = read_class_list(tmp_path / "classes.txt")
    source = ImageSource(images, names)
    assert source.labels.tolist() == [1, 4] and source.class_names == names
    with pytest.raises(ValueError, match="n05"):
        ImageSource(images, ["n01", "n02"])


def test_encode_reads_an_adm_npz_and_takes_the_posterior_mean(tmp_path, vae_dir):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=arr, arr_1=np.arange(5) % 2)
    encode_images(tmp_path / "ref.npz", tmp_path / "l.npz", vae_dir, size=16, mode="mean")
    saved = np.load(tmp_path / "l.npz")
    vae = VAE.load(vae_dir)
    pixels = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        expected = vae.autoencoder.encode(pixels).latent_dist.mean * 0.5
    torch.testing.assert_close(torch.from_numpy(saved["latents"]), expected)
    assert saved["labels"].tolist() == [0, 1, 0, 1, 0]


def test_decode_divides_by_the_scale_and_clamps(vae_dir):
    vae = VAE.load(vae_dir)
    latents = torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        expected = vae.autoencoder.decode(latents / 0.5).sample.clamp(-1, 1)
    torch.testing.assert_close(vae.decode(latents, batch_size=2), expected)
    assert vae.decode_seconds > 0
    assert to_uint8(expected).shape == (3, 16, 16, 3)


def test_bad_vae_folders_and_shapes_say_what_is_wrong(tmp_path, vae_dir):
    with pytest.raises(FileNotFoundError, match="no VAE folder .*huggingface-cli download"):
        VAE.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VAE.load(tmp_path / "empty")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel, not an AutoencoderKL"):
        VAE.load(tmp_path / "unet")
    vae = VAE.load(vae_dir)
    with pytest.raises(ValueError, match="4 channels"):
        vae.decode(torch.randn(2, 3, 8, 8))
    with pytest.raises(FileNotFoundError, match="no images"):
        encode_images(tmp_path / "nothing", tmp_path / "o.npz", vae_dir)
    with pytest.raises(ValueError, match=".npz file or a folder"):
        encode_images(tmp_path, tmp_path / "o.pt", vae_dir)


def test_the_latents_data_set(tmp_path):
    latents = np.random.default_rng(0).normal(size=(6, 4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", latents=latents[:4], labels=np.array([0, 1, 2, 1]))
    data = load_dataset("latents", path=str(tmp_path / "a.npz"))
    assert data.sample_shape == (4, 8, 8) and data.num_classes == 3 and len(data) == 4
    assert data.info == {"name": "latents", "path": str((tmp_path / "a.npz").resolve())}
    parts = tmp_path / "parts"
    parts.mkdir()
    np.savez(parts / "0.npz", latents=latents[:4], labels=np.zeros(4, dtype=np.int64))
    np.savez(parts / "1.npz", latents=latents[4:], labels=np.ones(2, dtype=np.int64))
    both = load_dataset("latents", path=str(parts))
    assert torch.equal(both.x, torch.from_numpy(latents)) and both.y.tolist() == [0] * 4 + [1] * 2
    np.savez(tmp_path / "bad.npz", latents=latents[:2, :, :4])
    np.savez(parts / "2.npz", latents=latents[:2, :, :4])
    with pytest.raises(ValueError, match="one shape"):
        load_dataset("latents", path=str(parts))
    nan = latents.copy()
    nan[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", latents=nan)
    with pytest.raises(ValueError, match="NaN"):
        load_dataset("latents", path=str(tmp_path / "nan.npz"))
    with pytest.raises(FileNotFoundError, match="nag-engine encode"):
        load_dataset("latents", path=str(tmp_path / "none.npz"))


def test_data_that_does_not_fit_the_model_is_refused_before_training(tmp_path):
    from conftest import small_dit

    model = small_dit()  # [2, 8, 8] inputs, 4 classes
    np.savez(tmp_path / "wrong.npz", latents=np.zeros((4, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"shape \[4, 8, 8\], the model expects \[2, 8, 8\]"):
        Trainer(model, load_dataset("latents", path=str(tmp_path / "wrong.npz")), TrainConfig())
    labels = np.array([0, 1, 7, 2])
    np.savez(tmp_path / "labels.npz", latents=np.zeros((4, 2, 8, 8), np.float32), labels=labels)
    with pytest.raises(ValueError, match=r"labels lie in \[0, 7\] but the model has 4 classes"):
        Trainer(model, load_dataset("latents", path=str(tmp_path / "labels.npz")), TrainConfig())
    np.savez(tmp_path / "none.npz", latents=np.zeros((4, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="has no labels: training would teach it the null class"):
        Trainer(model, load_dataset("latents", path=str(tmp_path / "none.npz")), TrainConfig())


def test_sample_to_disk_decodes_each_shard(tmp_path, vae_dir):
    from conftest import small_dit

    model = small_dit(in_channels=4)
    sampler = ne.Sampler(model, 3)
    vae = VAE.load(vae_dir)
    paths = ne.sample_to_disk(
        sampler, 5, tmp_path / "run", y=1, shard_size=2, format="png", decoder=vae, progress=False
    )
    assert len(paths) == 3 and sorted(p.name for p in paths[0].iterdir())[0] == "0000000.png"
    with Image.open(paths[2] / "0000004.png") as image:
        assert image.size == (16, 16) and image.mode == "RGB"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["decoder"]["scaling_factor"] == 0.5
    npz = ne.sample_to_disk(sampler, 2, tmp_path / "npz", y=1, decoder=vae, progress=False)
    shard = np.load(npz[0])
    assert shard["samples"].shape == (2, 4, 8, 8) and shard["images"].shape == (2, 16, 16, 3)
    torch.testing.assert_close(
        torch.from_numpy(shard["images"]),
        torch.from_numpy(to_uint8(vae.decode(torch.from_numpy(shard["samples"])))),
    )
    other = VAE.load(vae_dir)
    other.scaling_factor = 0.18215
    with pytest.raises(ValueError, match="decoder"):  # another decoder is another run
        ne.sample_to_disk(sampler, 5, tmp_path / "run", y=1, shard_size=2, format="png",
                          decoder=other, progress=False)  # fmt: skip

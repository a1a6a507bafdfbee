"""src/data/dataset.py and src/data/transforms.py: folders, splits, broken files, CIFAR, RRC with draft."""
from __future__ import annotations

import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import RandomResizedCrop, v2

import src.data.transforms as T
from src.common.errors import BrokenImageWarning
from src.common.preprocess import DatasetError
from src.data.cifar import CIFAR_SOURCES, CifarSource, download_and_extract, load_cifar, md5sum, restricted_unpickle
from src.data.dataset import ImageFolderDataset, collate_skip_broken, count_images, stratified_split
from src.data.sampler import ShardedEvalSampler
from src.data.sources import open_splits
from src.data.transforms import to_device_normalized
from src.common.preprocess import INTERPOLATIONS, Preprocess, eval_image, list_class_folders, load_rgb
from tests.helpers_data import (
    class_name, make_image_folder, smooth_photo, write_broken_file, write_exif_jpeg,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRE = Preprocess(37, 32, "bicubic", MEAN, STD)
SIZE = 32


def eval_tf():
    return T.build_eval_transform(PRE)


def train_tf(augment="light"):
    return T.build_train_transform(T.resolve_augment({"augment": augment}), SIZE, "bicubic")


# ---------------------------------------------------------------- broken files and batching
@pytest.mark.parametrize("workers", [0, 2])
def test_broken_file_is_skipped_and_counted_through_dataloader(tmp_path, workers):
    make_image_folder(tmp_path, classes=3, per_class=3, size=(40, 30))
    bad = write_broken_file(tmp_path / class_name(1) / "zz_broken.jpg", "truncated")
    classes, samples = list_class_folders(tmp_path)
    ds = ImageFolderDataset(samples, classes, train_tf("moderate"))
    loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_skip_broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    labels = torch.cat([b.labels for b in batches])
    broken = [p for b in batches for p in b.broken]
    assert broken == [str(bad)]
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(b.images.dtype == torch.uint8 and b.images.shape[1:] == (3, SIZE, SIZE)
               for b in batches)
    assert all(b.labels.dtype == torch.int64 for b in batches)
    if workers == 0:  # worker processes print their warnings themselves
        assert any(issubclass(w.category, BrokenImageWarning) and "zz_broken.jpg" in str(w.message)
                   for w in caught)


def test_getitem_marks_broken_file_and_collate_handles_all_broken(tmp_path):
    bad = write_broken_file(tmp_path / "c" / "bad.png", "garbage")
    ds = ImageFolderDataset([(str(bad), 4)], ["c"], eval_tf())
    with pytest.warns(BrokenImageWarning, match="bad.png"):
        item = ds[0]
    assert item == (None, 4, str(bad))
    batch = collate_skip_broken([item, item])
    assert batch.images.shape == (0, 3, 0, 0) and batch.images.dtype == torch.uint8
    assert batch.labels.shape == (0,) and batch.labels.dtype == torch.int64
    assert batch.broken == [str(bad), str(bad)]


def test_dataset_returns_uint8_chw_equal_to_eval_preprocessing(tmp_path):
    make_image_folder(tmp_path, classes=2, per_class=2, size=(50, 40), fmt="PNG")
    classes, samples = list_class_folders(tmp_path)
    ds = ImageFolderDataset(samples, classes, eval_tf())
    x, label, path = ds[3]
    assert (label, path) == (1, None)
    expected = eval_image(load_rgb(samples[3][0]), PRE).transpose(2, 0, 1)
    assert x.dtype == torch.uint8 and np.array_equal(x.numpy(), expected)
    assert count_images(ds.samples, ds.classes) == {"class_00": 2, "class_01": 2}


# ---------------------------------------------------------------- splits
def test_stratified_split_counts_and_determinism():
    sizes = [1, 2, 5, 10, 21]
    samples = [(f"c{c}/{i}.jpg", c) for c, n in enumerate(sizes) for i in range(n)]
    train, val = stratified_split(samples, 0.2, seed=7)
    val_counts = [sum(1 for _, y in val if y == c) for c in range(len(sizes))]
    assert val_counts == [0, 1, 1, 2, 4]   # round(n * 0.2), >= 1 when n >= 2, never all
    assert sorted(train + val) == sorted(samples) and not set(train) & set(val)
    assert [s for s in samples if s in set(val)] == val   # input order kept
    assert stratified_split(samples, 0.2, seed=7) == (train, val)
    assert stratified_split(samples, 0.2, seed=8) != (train, val)
    _, val_big = stratified_split(samples, 0.9, seed=0)
    assert [sum(1 for _, y in val_big if y == c) for c in range(len(sizes))] == [0, 1, 4, 9, 19]
    with pytest.raises(ValueError, match="val_split"):
        stratified_split(samples, 1.0, seed=0)


def test_open_splits_train_val_layout(tmp_path):
    make_image_folder(tmp_path, classes=3, per_class=2, split="both")
    splits = open_splits(str(tmp_path))
    assert splits.classes == ["class_00", "class_01", "class_02"]
    assert len(splits.train) == 6 and len(splits.val) == 6 and splits.notes == []
    assert all("/train/" in p for p, _ in splits.train.samples)
    assert all("/val/" in p for p, _ in splits.val.samples)
    assert splits.val.eval_dataset(eval_tf()).transform.__class__ is T.EvalTransform
    # the data's own val/ wins over val_split, with a note: one rule for folders, CIFAR and shards
    held_out = open_splits(str(tmp_path), val_split=0.2)
    assert held_out.val.samples == splits.val.samples
    assert held_out.notes == [f"note: val_split 0.2 unused: {tmp_path / 'val'} is the validation set"]


def test_open_splits_mismatched_classes_names_them(tmp_path):
    make_image_folder(tmp_path, classes=3, per_class=1, split="train")
    make_image_folder(tmp_path, classes=2, per_class=1, split="val")
    make_image_folder(tmp_path / "val" / "extra", classes=1, per_class=1)
    os.rename(tmp_path / "val" / "extra" / "class_00", tmp_path / "val" / "zebra")
    (tmp_path / "val" / "extra").rmdir()
    with pytest.raises(DatasetError, match=r"only in train/: \['class_02'\]; "
                                           r"only in val/: \['zebra'\]"):
        open_splits(str(tmp_path))


def test_open_splits_single_folder_uses_val_split(tmp_path):
    make_image_folder(tmp_path / "flat", classes=2, per_class=10)
    splits = open_splits(str(tmp_path / "flat"), val_split=0.3, seed=1)
    assert (len(splits.train), len(splits.val)) == (14, 6)
    assert count_images(splits.val.samples, splits.classes) == {"class_00": 3, "class_01": 3}
    again = open_splits(str(tmp_path / "flat"), val_split=0.3, seed=1)
    assert again.val.samples == splits.val.samples
    assert open_splits(str(tmp_path / "flat"), val_split=0, seed=1).val is None
    make_image_folder(tmp_path / "trainonly", classes=2, per_class=4, split="train")
    only = open_splits(str(tmp_path / "trainonly"), val_split=0.25)
    assert (len(only.train), len(only.val)) == (6, 2)


def test_open_splits_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_splits(str(tmp_path / "nope"))
    make_image_folder(tmp_path / "valonly", classes=2, per_class=1, split="val")
    with pytest.raises(DatasetError, match="has val/ but no train/"):
        open_splits(str(tmp_path / "valonly"))
    make_image_folder(tmp_path / "single", classes=2, per_class=1)
    with pytest.raises(DatasetError, match="left no validation images"):
        open_splits(str(tmp_path / "single"), val_split=0.1)
    make_image_folder(tmp_path / "hole", classes=2, per_class=2)
    (tmp_path / "hole" / "no_pics").mkdir()
    with pytest.raises(DatasetError, match="no images .*no_pics"):
        open_splits(str(tmp_path / "hole"))


# ---------------------------------------------------------------- CIFAR
def _cifar_batch(n: int, seed: int, label_key: str, num_classes: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": "fake", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, num_classes, n)],
            "filenames": [f"img_{i}.png" for i in range(n)]}


def write_fake_cifar10(root: Path, per_batch: int = 3) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(per_batch, i, "labels", 10), 2))
    meta = {"label_names": [f"name{k}" for k in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, 2))
    return folder


def test_cifar10_loads_with_channel_order_and_labels(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    train_x, train_y, test_x, test_y, classes = load_cifar(tmp_path, "cifar10")
    assert train_x.shape == (15, 32, 32, 3) and test_x.shape == (3, 32, 32, 3)
    assert classes == [f"name{k}" for k in range(10)]
    assert train_y[:3] == first["labels"]
    row = first["data"][1]   # 1024 red, then 1024 green, then 1024 blue, row-major
    assert train_x[1, 0, 5, 0] == row[5] and train_x[1, 2, 3, 1] == row[1024 + 2 * 32 + 3]
    assert train_x[1, 31, 31, 2] == row[3071]
    splits = open_splits(str(tmp_path))  # auto-detect
    assert (len(splits.train), len(splits.val), splits.classes) == (15, 3, classes)
    with pytest.raises(DatasetError, match="holds cifar10 files.*--dataset cifar10"):
        open_splits(str(tmp_path), "folder")
    x, y, path = splits.val.eval_dataset(eval_tf())[2]
    assert x.shape == (3, SIZE, SIZE) and y == test_y[2] and path is None
    expected = eval_image(Image.fromarray(test_x[2]), PRE).transpose(2, 0, 1)
    assert np.array_equal(x.numpy(), expected)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for i, name in enumerate(["train", "test"]):
        batch = _cifar_batch(4, i, "fine_labels", 100)
        batch["coarse_labels"] = [0] * 4
        (folder / name).write_bytes(pickle.dumps(batch, 2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{k}" for k in range(100)],
                                                "coarse_label_names": ["c"]}, 2))
    splits = open_splits(str(tmp_path), "cifar100")
    expected = pickle.loads((folder / "test").read_bytes())["fine_labels"]
    assert [y for _, y in splits.val.samples] == expected and len(splits.classes) == 100


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Hostile(marker)}, 2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global (posix|os).system"):
        restricted_unpickle(payload)
    assert not marker.exists()
    folder = write_fake_cifar10(tmp_path / "evil")
    (folder / "data_batch_3").write_bytes(payload)
    with pytest.raises(DatasetError, match="data_batch_3.*refusing"):
        load_cifar(tmp_path / "evil", "cifar10")
    assert not marker.exists()
    # plain numpy arrays are fine, under both pickle protocols
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for protocol in (2, 5):
        assert np.array_equal(restricted_unpickle(pickle.dumps(arr, protocol)), arr)


def _fake_cifar_tarball(tmp_path: Path) -> tuple[Path, str]:
    write_fake_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, md5sum(archive)


def test_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    archive, md5 = _fake_cifar_tarball(tmp_path)
    url = archive.as_uri()
    with pytest.raises(DatasetError, match=f"md5 mismatch .*expected {'0' * 32}, got {md5}"):
        download_and_extract(url, tmp_path / "bad", "0" * 32)
    assert list((tmp_path / "bad").iterdir()) == []
    saved = download_and_extract(url, tmp_path / "data", md5)
    assert saved == tmp_path / "data" / "cifar-10-python.tar.gz" and md5sum(saved) == md5
    assert len(load_cifar(tmp_path / "data", "cifar10")[0]) == 15
    fake = CifarSource(**{**CIFAR_SOURCES["cifar10"].__dict__, "url": url, "md5": md5})
    monkeypatch.setitem(CIFAR_SOURCES, "cifar10", fake)
    assert len(open_splits(str(tmp_path / "fresh"), "cifar10", download=True).train) == 15
    with pytest.raises(DatasetError, match="--download True"):
        open_splits(str(tmp_path / "none"), "cifar10")


# ---------------------------------------------------------------- device side, sampler
def test_to_device_normalized_matches_reference():
    images = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    out = to_device_normalized(images, MEAN, STD, "cpu")
    ref = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    cl = to_device_normalized(images, MEAN, STD, "cpu", channels_last=True, dtype=torch.bfloat16)
    assert cl.dtype == torch.bfloat16 and cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.float(), ref, rtol=1e-2, atol=1e-2)


def test_sharded_eval_sampler_covers_each_index_once():
    shards = [list(ShardedEvalSampler(10, rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert [len(ShardedEvalSampler(10, r, 3)) for r in range(3)] == [4, 3, 3]
    assert list(ShardedEvalSampler(2, 2, 4)) == []
    with pytest.raises(ValueError, match="rank"):
        ShardedEvalSampler(10, 3, 3)


# ---------------------------------------------------------------- transforms
def test_rrc_boxes_are_torchvisions_for_the_same_seed(tmp_path, monkeypatch):
    """The box is drawn on the file's header geometry before decoding, exactly as torchvision's
    RandomResizedCrop draws it on the decoded image (its classic get_params, a separate code path)."""
    path = tmp_path / "geometry.jpg"
    Image.new("RGB", (2000, 1500), (90, 120, 150)).save(path)
    boxes = []
    monkeypatch.setattr(T, "decode_crop_resize",
                        lambda source, box, *a, **k: boxes.append(box) or torch.zeros(3, 1, 1))
    crop = T.RandomResizedCropDraft(224, scale=(0.08, 1.0), interpolation="bicubic")
    header = Image.new("L", (2000, 1500))
    theirs = []
    for seed in range(300):
        torch.manual_seed(seed)
        crop(str(path))
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(header, [0.08, 1.0], [3 / 4, 4 / 3])
        theirs.append((left, top, w, h))
    assert boxes == theirs
    assert len(set(boxes)) == 300 and min(w * h for _, _, w, h in boxes) < 0.2 * 2000 * 1500


@pytest.fixture(scope="module")
def big_jpegs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("big")
    photo = smooth_photo((2000, 1500), seed=5)
    plain = folder / "plain.jpg"
    photo.save(plain, quality=90)
    rotated = write_exif_jpeg(folder / "rot6.jpg", photo, 6, quality=90)   # upright 1500x2000
    return {"plain": plain, "rotated": rotated}


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy().astype(np.int16)


@pytest.mark.parametrize("name,box,size,expected_factor", [
    ("plain", (100, 200, 1600, 1200), 112, 4),    # 1200 / 4 = 300 >= 2 * 112
    ("plain", (700, 300, 1000, 1100), 224, 2),
    ("rotated", (150, 400, 1200, 900), 112, 4),   # box on the upright (EXIF-rotated) geometry
])
def test_draft_crop_matches_full_decode(big_jpegs, monkeypatch, name, box, size, expected_factor):
    factors = []
    real_apply = T.apply_draft
    monkeypatch.setattr(T, "apply_draft", lambda img, f: factors.append(real_apply(img, f)) or factors[-1])
    fast_t = T.decode_crop_resize(big_jpegs[name], box, size, "bicubic", True)
    full_t = T.decode_crop_resize(big_jpegs[name], box, size, "bicubic", False)
    assert factors == [float(expected_factor)]
    assert fast_t.dtype == full_t.dtype == torch.uint8 and fast_t.shape == full_t.shape == (3, size, size)
    fast, full = _hwc(fast_t), _hwc(full_t)
    diff = np.abs(fast - full)
    assert diff.mean() < 0.5 and diff.max() <= 6
    # The full-size path is Pillow's crop-then-resize of the upright image, up to torch's
    # resampling arithmetic: never more than one grey level apart.
    left, top, w, h = box
    upright = load_rgb(big_jpegs[name]).crop((left, top, left + w, top + h))
    pillow = np.asarray(upright.resize((size, size), Image.Resampling.BICUBIC), np.int16)
    assert np.abs(full - pillow).max() <= 1 and np.abs(full - pillow).mean() < 0.01


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_rrc_on_small_image_never_drafts_and_equals_torchvisions_rrc(tmp_path, interpolation):
    """Without draft decoding our crop is torchvision's v2 RandomResizedCrop on the uint8 tensor,
    to the bit; and within one grey level of Pillow's crop + resize."""
    path = tmp_path / "small.jpg"
    smooth_photo((64, 48), seed=2).save(path)
    image = load_rgb(path)
    mode = v2.InterpolationMode(interpolation)
    theirs = v2.RandomResizedCrop(32, interpolation=mode, antialias=True)
    for seed in range(5):
        torch.manual_seed(seed)
        out = T.RandomResizedCropDraft(32, interpolation=interpolation)(str(path))
        torch.manual_seed(seed)
        expected = theirs(v2.functional.pil_to_tensor(image))
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
        assert torch.equal(out, expected), seed
        torch.manual_seed(seed)
        box = theirs.make_params([image])
        pillow = image.crop((box["left"], box["top"], box["left"] + box["width"], box["top"] + box["height"]))
        pillow = np.asarray(pillow.resize((32, 32), INTERPOLATIONS[interpolation]), np.int16)
        assert np.abs(_hwc(out) - pillow).max() <= 1, seed


def test_flip_and_pillow_policies_share_one_image(tmp_path):
    path = tmp_path / "photo.jpg"
    smooth_photo((80, 60), seed=4).save(path)
    aug = T.resolve_augment({"augment": "custom", "hflip": 1.0, "color_jitter": 0.1})
    tf = T.build_train_transform(aug, SIZE, "bilinear")
    crop = tf.transforms[0]
    torch.manual_seed(5)
    cropped = crop(str(path))
    seen = []
    record = lambda img: seen.append(type(img)) or img            # noqa: E731  (a Pillow-only policy)
    tf.transforms[3] = record                                     # in place of the colour jitter
    torch.manual_seed(5)
    out = tf(str(path))
    # the flip runs on the tensor, the policy gets a Pillow image, the round trip is lossless
    assert seen == [Image.Image] and out.dtype == torch.uint8 and torch.equal(out, cropped.flip(-1))


def test_train_transform_presets_and_explicit_overrides():
    names = lambda t: [type(op).__name__ for op in t.transforms]  # noqa: E731
    crop_flip, to_pil, to_tensor = ["RandomResizedCropDraft", "RandomHorizontalFlip"], "ToPILImage", "PILToTensor"
    assert names(train_tf("none")) == ["ResizeCenterCrop"]
    assert names(train_tf("light")) == [*crop_flip, to_pil, "ColorJitter", to_tensor]
    assert names(train_tf("moderate")) == [*crop_flip, to_pil, "RandAugment", "ColorJitter", to_tensor,
                                           "RandomErasing"]
    assert names(train_tf("strong")) == [*crop_flip, to_pil, "AutoAugment", "ColorJitter", to_tensor,
                                         "RandomErasing"]
    assert train_tf("strong").transforms[-1].p == 0.25
    no_flip = T.resolve_augment({"augment": "custom", "hflip": 0.0})
    assert names(T.build_train_transform(no_flip, SIZE, "bilinear")) == ["RandomResizedCropDraft"]
    strong = T.resolve_augment({"augment": "strong", "color_jitter": 0.0}, explicit={"augment"})
    assert (strong.color_jitter, strong.auto_augment, strong.random_erasing) == (0.4, "imagenet", 0.25)
    mine = T.resolve_augment({"augment": "strong", "color_jitter": 0.2, "crop_scale_min": 0.25},
                             explicit={"color_jitter"})
    assert (mine.color_jitter, mine.crop_scale_min) == (0.2, 0.25)
    moderate = T.resolve_augment({"augment": "moderate"})
    assert (moderate.auto_augment, moderate.randaug_num_ops, moderate.randaug_magnitude) == (
        "randaugment", 2, 9)
    custom = T.resolve_augment({"augment": "custom", "rotation": 10.0, "randaug_num_ops": 1,
                                "auto_augment": "randaugment"})
    assert (custom.color_jitter, custom.rotation, custom.random_erasing) == (0.0, 10.0, 0.0)
    custom_tf = T.build_train_transform(custom, SIZE, "bilinear")
    assert names(custom_tf)[2:] == ["ToPILImage", "RandAugment", "RandomRotation", "PILToTensor"]
    assert custom_tf.transforms[3].num_ops == 1
    assert names(train_tf("custom")) == crop_flip
    from src.config import load_config   # the real Config records explicit keys
    cfg = load_config(["--augment", "strong", "--color_jitter", "0.2"])
    real = T.resolve_augment(cfg.to_dict(), cfg.explicit)
    assert (real.color_jitter, real.auto_augment, real.random_erasing) == (0.2, "imagenet", 0.25)
    with pytest.raises(ValueError, match="augment must be one of"):
        T.resolve_augment({"augment": "extreme"})
    with pytest.raises(ValueError, match="random_erasing"):
        T.resolve_augment({"augment": "custom", "random_erasing": 1.5})


def test_train_transform_output_is_seeded_uint8(tmp_path):
    make_image_folder(tmp_path, classes=1, per_class=1, size=(60, 45))
    path = str(tmp_path / "class_00" / "img_000.jpg")
    for augment in ("none", "light", "moderate", "strong"):
        tf = train_tf(augment)
        torch.manual_seed(11)
        a = tf(path)
        torch.manual_seed(11)
        b = tf(path)
        assert a.dtype == torch.uint8 and a.shape == (3, SIZE, SIZE), augment
        assert torch.equal(a, b), augment
    plain = train_tf("none")(path)
    expected = eval_image(load_rgb(path), Preprocess(SIZE, SIZE, "bicubic", MEAN, STD))
    assert np.array_equal(plain.numpy(), expected.transpose(2, 0, 1))


def test_random_erasing_uint8_replaces_one_rectangle():
    x = torch.full((3, 40, 50), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    out = T.random_erasing(1.0)(x)
    changed = (out != 200).any(dim=0)
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert 0.02 * 0.9 <= h * w / 2000 <= 1 / 3 * 1.1
    assert int(changed.sum()) == h * w and (out[:, changed] == 0).all()
    assert torch.equal(x, torch.full((3, 40, 50), 200, dtype=torch.uint8))   # input untouched
    assert torch.equal(T.random_erasing(0.0)(x), x)

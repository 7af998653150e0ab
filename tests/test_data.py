"""Tests for compnn_index.data: palettes, the three dataset layouts, and their errors."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compnn_index.data import (
    FACADES_PALETTE,
    MATERIALS,
    Sample,
    colorize,
    jet_palette,
    labels_from_colors,
    open_dataset,
)
from compnn_index.errors import DataError

# --------------------------------------------------------------------------- helpers


def block_labels(rng: np.random.Generator, h: int, w: int, block: int = 8, k: int = 12) -> np.ndarray:
    """A label map of ``block``-pixel squares of random classes."""
    coarse = rng.integers(0, k, (h // block, w // block))
    return np.kron(coarse, np.ones((block, block), dtype=np.int64))


def write_ab(path: Path, labels: np.ndarray, *, seed: int = 0, fmt: str | None = None) -> np.ndarray:
    """Write an AB file: A = random photo, B = ``labels`` drawn with the Facades palette."""
    rng = np.random.default_rng(seed)
    h, w = labels.shape
    photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ab = np.concatenate([photo, colorize(labels, FACADES_PALETTE)], axis=1)
    Image.fromarray(ab).save(path, format=fmt)
    return ab


def make_pix2pix(root: Path, split: str = "train", stems=(1, 2, 10), hw: int = 32) -> Path:
    (root / split).mkdir(parents=True)
    for i, stem in enumerate(stems):
        write_ab(root / split / f"{stem}.png", block_labels(np.random.default_rng(i), hw, hw), seed=i)
    return root


def make_annotated(root: Path, split: str = "train", n: int = 3, h: int = 32, w: int = 64,
                   top: int = 4) -> Path:
    """Images of size (h, w) and 'L' annotations with labels 0..top-1 plus void 11."""
    (root / split).mkdir(parents=True)
    (root / f"{split}annot").mkdir()
    rng = np.random.default_rng(7)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / f"f{i}.png")
        labels = block_labels(rng, h, w, k=top).astype(np.uint8)
        labels[0, :] = 11
        Image.fromarray(labels).save(root / f"{split}annot" / f"f{i}.png")
    return root


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Network float (3, H, W) in [-1, 1] back to uint8 (H, W, 3)."""
    return np.round((arr.transpose(1, 2, 0) + 1.0) * 127.5).astype(np.uint8)


# --------------------------------------------------------------------------- palettes


def test_jet_palette_matches_readme_nominal_colours():
    expected = [[0, 0, 128], [0, 0, 220], [0, 58, 255], [0, 151, 255], [0, 243, 255],
                [81, 255, 174], [174, 255, 81], [255, 243, 0], [255, 151, 0], [255, 58, 0],
                [220, 0, 0], [128, 0, 0]]
    np.testing.assert_array_equal(jet_palette(12), np.array(expected, np.uint8))


def test_labels_from_colors_is_exact_nearest_colour():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    d = ((rgb[:, :, None, :].astype(np.int64) - FACADES_PALETTE.astype(np.int64)) ** 2).sum(-1)
    out = labels_from_colors(rgb, FACADES_PALETTE)
    assert out.dtype == np.int64 and out.shape == (40, 50)
    np.testing.assert_array_equal(out, d.argmin(-1))


def test_colorize_round_trips_and_draws_ignore_black():
    labels = block_labels(np.random.default_rng(1), 32, 48)
    np.testing.assert_array_equal(labels_from_colors(colorize(labels, FACADES_PALETTE), FACADES_PALETTE), labels)
    labels[0, 0] = 255
    drawn = colorize(labels, FACADES_PALETTE, ignore_index=255)
    assert drawn.dtype == np.uint8 and drawn.shape == (32, 48, 3)
    np.testing.assert_array_equal(drawn[0, 0], [0, 0, 0])
    with pytest.raises(DataError, match=r"Expected labels in 0..11 for a 12-colour palette, but found label 255"):
        colorize(labels, FACADES_PALETTE)


@pytest.mark.parametrize(("quality", "subsampling", "min_accuracy"), [(75, 2, 0.9), (90, 2, 0.9), (75, 0, 0.99)])
def test_labels_from_jpeg_compressed_colour_map(quality, subsampling, min_accuracy):
    # The real Facades JPEGs use 4:2:0 chroma subsampling (subsampling=2), which smears colour
    # across block edges by a pixel or two; 4:4:4 keeps edges too.
    labels = block_labels(np.random.default_rng(2), 128, 128, block=16)
    buf = io.BytesIO()
    Image.fromarray(colorize(labels, FACADES_PALETTE)).save(
        buf, format="JPEG", quality=quality, subsampling=subsampling)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    recovered = labels_from_colors(decoded, FACADES_PALETTE)
    assert (recovered == labels).mean() > min_accuracy
    # Away from block edges JPEG noise never changes the class.
    inner = np.zeros_like(labels, dtype=bool)
    for y in range(0, 128, 16):
        for x in range(0, 128, 16):
            inner[y + 4:y + 12, x + 4:x + 12] = True
    np.testing.assert_array_equal(recovered[inner], labels[inner])


def test_palette_functions_reject_bad_arrays():
    with pytest.raises(DataError, match=r"Expected an RGB label map of shape \(H, W, 3\), got shape \(4, 4\)"):
        labels_from_colors(np.zeros((4, 4), np.uint8), FACADES_PALETTE)
    with pytest.raises(DataError, match="Expected a uint8 RGB label map, got dtype float32"):
        labels_from_colors(np.zeros((4, 4, 3), np.float32), FACADES_PALETTE)
    with pytest.raises(DataError, match=r"Expected a palette of shape \(K, 3\) with K >= 1, got shape \(3,\)"):
        colorize(np.zeros((2, 2), np.int64), np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="Expected integer class labels, got dtype float64"):
        colorize(np.zeros((2, 2)), FACADES_PALETTE)


# --------------------------------------------------------------------------- pix2pix layout


def test_pix2pix_reads_in_numeric_order_with_limit(tmp_path):
    root = make_pix2pix(tmp_path / "ab")
    ds = open_dataset(root)
    assert ds.names == ["1.png", "2.png", "10.png"]
    assert len(open_dataset(root, limit=2)) == 2 and open_dataset(root, limit=2).names == ["1.png", "2.png"]
    s = ds[2]
    assert isinstance(s, Sample) and (s.id, s.name, s.meta) == (2, "10.png", {"file": "train/10.png"})
    assert s.input.dtype == np.float32 and s.input.shape == (3, 32, 32) and s.input.flags.c_contiguous
    assert -1.0 <= s.input.min() and s.input.max() <= 1.0
    assert (ds.task, ds.in_channels, ds.out_channels, ds.num_classes, ds.palette) == ("translate", 3, 3, None, None)
    assert ds.image_size == (32, 32)
    assert ds[-1].name == "10.png"
    json.dumps(ds.identity)
    assert ds.identity["kind"] == "pix2pix" and ds.identity["path"] == str(root.resolve())


def test_pix2pix_direction_swaps_halves_and_values_are_exact(tmp_path):
    root = tmp_path / "ab"
    (root / "train").mkdir(parents=True)
    ab = write_ab(root / "train" / "1.png", block_labels(np.random.default_rng(3), 32, 32))
    a2b, b2a = open_dataset(root)[0], open_dataset(root, direction="BtoA")[0]
    np.testing.assert_array_equal(to_uint8(a2b.input), ab[:, :32])
    np.testing.assert_array_equal(to_uint8(a2b.target), ab[:, 32:])
    np.testing.assert_array_equal(b2a.input, a2b.target)
    np.testing.assert_array_equal(b2a.target, a2b.input)


def test_pix2pix_segment_converts_label_half_and_resizes_nearest(tmp_path):
    root = tmp_path / "ab"
    (root / "train").mkdir(parents=True)
    labels = block_labels(np.random.default_rng(4), 64, 64, block=16)
    write_ab(root / "train" / "1.jpg", labels, fmt="JPEG")
    ds = open_dataset(root, task="segment")
    assert (ds.num_classes, ds.out_channels) == (12, 12) and ds.palette is FACADES_PALETTE
    target = ds[0].target
    assert target.dtype == np.int64 and target.shape == (64, 64)
    assert (target == labels).mean() > 0.9  # JPEG 4:2:0 smears a pixel or two at edges
    small = open_dataset(root, task="segment", size=32)[0]
    assert small.input.shape == (3, 32, 32) and small.target.shape == (32, 32)
    assert (small.target == labels[::2, ::2]).mean() > 0.9
    assert open_dataset(root, size=(32, 64))[0].target.shape == (3, 32, 64)


def test_pix2pix_segment_reads_another_palette_from_classes_txt(tmp_path):
    root = tmp_path / "city"
    (root / "train").mkdir(parents=True)
    palette = np.array([(128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35)], np.uint8)
    labels = block_labels(np.random.default_rng(6), 32, 32, k=4)
    photo = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([photo, colorize(labels, palette)], axis=1)).save(root / "train" / "1.png")
    # Facades colours would snap road / sidewalk / building / vegetation to some jet colour: refused
    with pytest.raises(DataError, match=r"city/train/1.png: its label half is on average \d+ RGB units from "
                                        r"the nearest colour of the Facades palette .* add classes.txt"):
        open_dataset(root, task="segment")
    (root / "classes.txt").write_text("road 128 64 128\nsidewalk 244 35 232\nbuilding 70 70 70\nvegetation 107 142 35\n")
    ds = open_dataset(root, task="segment")
    assert ds.num_classes == 4 and ds.class_names == ("road", "sidewalk", "building", "vegetation")
    np.testing.assert_array_equal(ds.palette, palette)
    np.testing.assert_array_equal(ds[0].target, labels)
    (root / "classes.txt").write_text("road\nsidewalk\n")
    with pytest.raises(DataError, match=r"classes.txt: a pix2pix label half is read by colour, so every class "
                                        r"line needs one \('name R G B'\); 'road' has none"):
        open_dataset(root, task="segment")


def test_pix2pix_segment_refuses_a_photo_half_read_as_labels(tmp_path):
    root = make_pix2pix(tmp_path / "ab", stems=(1,))
    assert open_dataset(root, task="segment").num_classes == 12  # AtoB: B is the label map
    with pytest.raises(DataError, match=r"ab/train/1.png: its label half is on average \d+ RGB units .* "
                                        r"Is the direction right"):
        open_dataset(root, task="segment", direction="BtoA")


def test_pix2pix_bad_width_at_construction_and_at_read(tmp_path):
    root = tmp_path / "x"
    (root / "train").mkdir(parents=True)
    Image.new("RGB", (301, 256)).save(root / "train" / "3.jpg")
    odd = r"x/train/3.jpg: expected an AB image, two halves of equal width side by side \(an even width\), got 256×301"
    with pytest.raises(DataError, match=odd):
        open_dataset(root)
    Image.new("RGB", (64, 32)).save(root / "train" / "1.png")
    ds = open_dataset(root)  # the first file is fine; 3.jpg fails when read
    with pytest.raises(DataError, match=odd):
        ds[1]
    Image.new("RGB", (128, 32)).save(root / "train" / "3.jpg")  # even, but halves of another size
    with pytest.raises(DataError, match=r"3.jpg: expected halves of 32×32 \(H×W\) like 1.png, got 32×64"):
        ds[1]


def test_pix2pix_halves_need_not_be_square(tmp_path):
    """pix2pix splits an AB image's width in two whatever its aspect: 64×192 files are 64×96 pairs,
    and a query file of that geometry is cut the same way."""
    from compnn_index.data.query_image import dataset_image

    root = tmp_path / "wide"
    (root / "train").mkdir(parents=True)
    a = np.zeros((64, 96, 3), np.uint8)
    a[:, :, 0] = 200
    b = np.zeros((64, 96, 3), np.uint8)
    b[:, :, 2] = 200
    Image.fromarray(np.concatenate([a, b], axis=1)).save(root / "train" / "1.png")
    ds = open_dataset(root, task="translate")
    assert ds.image_size == (64, 96) and ds.identity["source_size"] == [64, 192]
    s = ds[0]
    assert s.input.shape == (3, 64, 96) and s.input[0].mean() > 0.5 and s.target[2].mean() > 0.5
    back = open_dataset(root, task="translate", direction="BtoA")[0]
    assert back.input[2].mean() > 0.5 and back.target[0].mean() > 0.5
    q = dataset_image(root / "train" / "1.png", ds.identity, (64, 96))
    np.testing.assert_allclose(q, s.input)


def test_pix2pix_truncated_and_unreadable_files_name_the_file(tmp_path):
    root = make_pix2pix(tmp_path / "ab", stems=(1,))
    buf = io.BytesIO()
    Image.new("RGB", (64, 32), (200, 10, 10)).save(buf, format="JPEG")
    (root / "train" / "2.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "train" / "3.png").write_bytes(b"not an image at all")
    ds = open_dataset(root)
    with pytest.raises(DataError, match=r"ab/train/2.jpg: unreadable or truncated image"):
        ds[1]
    with pytest.raises(DataError, match=r"ab/train/3.png: unreadable or truncated image"):
        ds[2]


def test_pix2pix_size_must_be_multiple_of_32_unless_resized(tmp_path):
    root = make_pix2pix(tmp_path / "ab", hw=48, stems=(1,))
    with pytest.raises(DataError, match=r"ab/train/1.png: each half is 48×48 \(H×W\); height and width must be "
                                        r"multiples of 32: pass size= to resize, e.g. size=\(64, 64\)"):
        open_dataset(root)
    assert open_dataset(root, size=32)[0].input.shape == (3, 32, 32)


def test_pix2pix_mixed_sizes_and_modes(tmp_path):
    root = make_pix2pix(tmp_path / "ab", stems=(1,))
    write_ab(root / "train" / "2.png", block_labels(np.random.default_rng(0), 64, 64))
    Image.new("I;16", (64, 32)).save(root / "train" / "3.png")
    ds = open_dataset(root)
    with pytest.raises(DataError, match=r"ab/train/2.png: expected halves of 32×32 \(H×W\) like 1.png, got 64×64; pass size="):
        ds[1]
    with pytest.raises(DataError, match=r"ab/train/3.png: expected an image of mode .*RGB.*, got mode I;16"):
        ds[2]
    assert open_dataset(root, size=32, limit=2)[1].input.shape == (3, 32, 32)


def test_missing_folder_split_and_empty_split(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder '.*nowhere' does not exist"):
        open_dataset(tmp_path / "nowhere")
    root = make_pix2pix(tmp_path / "ab", stems=(1, 2))
    (root / "test").mkdir()
    (root / "test" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"ab/val does not exist; found splits: test \(0 images\), train \(2 images\)"):
        open_dataset(root, split="val")
    with pytest.raises(DataError, match=r"ab/test contains no .jpg/.jpeg/.png images; found notes.txt \(1 entries\)"):
        open_dataset(root, split="test")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "AB"}, r"Unknown direction 'AB'; expected one of AtoB, BtoA"),
        ({"task": "seg"}, r"Unknown task 'seg'; expected one of translate, segment"),
        ({"size": 33}, r"multiples of 32, but size = 33"),
        ({"size": (64, 0)}, r"multiples of 32, but size = \(64, 0\)"),
        ({"limit": 0}, r"Expected limit >= 1, but limit = 0"),
        ({"limit": "3"}, r"Expected limit to be an integer, but limit = '3'"),
        ({"seed": -1}, r"Expected seed >= 0, but seed = -1"),
        ({"seed": True}, r"Expected seed to be an integer, but seed = True"),
        ({"split": "../x"}, r"Expected split to be a folder name such as 'train', but split = '../x'"),
        ({"ignore_index": 3}, r"ignore_index only applies to task='segment', but task = 'translate'"),
    ],
)
def test_option_validation(tmp_path, kwargs, message):
    root = make_pix2pix(tmp_path / "ab", stems=(1,))
    with pytest.raises(DataError, match=message):
        open_dataset(root, **kwargs)


def test_natural_order_reads_only_ascii_digit_runs_as_numbers():
    """A file named with a superscript digit sorts as text (str.isdigit passed it to int(): a crash)."""
    from compnn_index.data.images import natural_key

    names = ["10.jpg", "2.jpg", "².jpg", "x²3.png", "a1"]
    assert sorted(names, key=natural_key) == ["2.jpg", "10.jpg", "a1", "x²3.png", "².jpg"]


def test_open_dataset_numpy_ints_become_ints():
    ds = open_dataset("synthetic", split="test", limit=np.int64(2), seed=np.int64(3), size=64)
    assert len(ds) == 2 and type(ds.identity["seed"]) is int and type(ds.identity["limit"]) is int


def test_index_errors():
    ds = open_dataset("synthetic", size=32, limit=2)
    with pytest.raises(IndexError, match="dataset index 2 out of range for 2 images"):
        ds[2]
    with pytest.raises(TypeError, match="dataset indices must be integers, got str"):
        ds["0"]
    assert [s.id for s in ds] == [0, 1]


# --------------------------------------------------------------------------- image + annotation layout


def test_annotated_layout_infers_classes_and_keeps_void(tmp_path):
    root = make_annotated(tmp_path / "camvid")
    ds = open_dataset(root)
    assert (ds.task, ds.num_classes, ds.out_channels, ds.ignore_index) == ("segment", 4, 4, 11)
    assert ds.image_size == (32, 64) and ds.palette.shape == (4, 3)
    s = ds[0]
    expected = np.asarray(Image.open(root / "trainannot" / "f0.png")).astype(np.int64)
    np.testing.assert_array_equal(s.target, expected)
    assert s.target.dtype == np.int64 and s.input.shape == (3, 32, 64)
    assert s.meta == {"file": "train/f0.png", "annotation": "trainannot/f0.png"}
    assert open_dataset(root, size=(32, 32))[0].target.shape == (32, 32)


def test_annotated_classes_txt_and_range_check(tmp_path):
    root = make_annotated(tmp_path / "camvid", top=4)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    ds = open_dataset(root)
    assert ds.num_classes == 3 and ds.class_names == ("sky", "road", "car")
    bad = next(i for i in range(len(ds)) if (np.asarray(Image.open(root / "trainannot" / f"f{i}.png")) == 3).any())
    with pytest.raises(DataError, match=rf"trainannot/f{bad}.png: found label 3, expected 0..2 or ignore_index = 11"):
        ds[bad]


def test_annotated_palette_mode_annotation_is_read_as_indices(tmp_path):
    root = make_annotated(tmp_path / "camvid", n=1)
    labels = np.asarray(Image.open(root / "trainannot" / "f0.png"))
    img = Image.fromarray(labels).convert("P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    img.save(root / "trainannot" / "f0.png")
    np.testing.assert_array_equal(open_dataset(root)[0].target, labels)


def test_annotated_errors(tmp_path):
    root = make_annotated(tmp_path / "camvid", n=3)
    with pytest.raises(DataError, match=r"only supports task='segment', but task = 'translate'"):
        open_dataset(root, task="translate")
    with pytest.raises(DataError, match=r"only supports direction='AtoB' \(image to labels\), but direction = 'BtoA'"):
        open_dataset(root, direction="BtoA")
    Image.new("RGB", (64, 32)).save(root / "trainannot" / "f1.png")
    with pytest.raises(DataError, match=r"trainannot/f1.png: expected an image of mode I / I;16 / L / P, got mode RGB"):
        open_dataset(root)  # scanning for the number of classes reads every annotation
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(DataError, match=r"trainannot/f1.png: expected an image of mode I / I;16 / L / P, got mode RGB"):
        open_dataset(root)[1]
    Image.new("L", (32, 32)).save(root / "trainannot" / "f1.png")
    with pytest.raises(DataError, match=r"trainannot/f1.png: annotation is 32×32 \(H×W\) but its image f1.png is 32×64"):
        open_dataset(root)[1]
    (root / "trainannot" / "f2.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images in .*camvid/train have no annotation in .*camvid/trainannot "
                                        r"\(expected a PNG with the same stem\): f2.png"):
        open_dataset(root)


def test_annotated_non_multiple_of_32_needs_size(tmp_path):
    root = make_annotated(tmp_path / "camvid", h=40, w=64, n=1)
    with pytest.raises(DataError, match=r"image is 40×64 \(H×W\); .* e\.g\. size=\(32, 64\) \(--size 32x64\)"):
        open_dataset(root)
    assert open_dataset(root, size=(32, 64))[0].target.shape == (32, 64)


# --------------------------------------------------------------------------- synthetic facades


def test_synthetic_is_deterministic_and_independent_of_limit():
    a = open_dataset("synthetic", size=64, limit=3)
    b = open_dataset("synthetic", size=64, limit=10)
    for i in range(3):
        np.testing.assert_array_equal(a[i].input, b[i].input)
        np.testing.assert_array_equal(a[i].target, b[i].target)
        assert a.meta(i) == b.meta(i)
    other_seed = open_dataset("synthetic", size=64, limit=3, seed=1)
    test_split = open_dataset("synthetic", split="test", size=64, limit=3)
    for i in range(3):
        assert not np.array_equal(a[i].input, other_seed[i].input)
        assert not np.array_equal(a[i].input, test_split[i].input)
    assert len(open_dataset("synthetic", size=32)) == 400
    assert len(open_dataset("synthetic", size=32, split="test")) == 100


def test_synthetic_pair_layout_and_classes():
    translate = open_dataset("synthetic", size=64, limit=4)
    segment = open_dataset("synthetic", size=64, limit=4, task="segment")
    assert translate.image_size == (64, 64) and segment.num_classes == 12
    assert segment.class_names[2] == "facade" and segment.class_names[3] == "window"
    for i in range(4):
        t, s = translate[i], segment[i]
        assert t.input.dtype == np.float32 and t.input.shape == (3, 64, 64)
        np.testing.assert_array_equal(t.input, s.input)
        # B (the drawn label map) reads back as exactly the segmentation target.
        np.testing.assert_array_equal(labels_from_colors(to_uint8(t.target), FACADES_PALETTE), s.target)
        assert s.target.dtype == np.int64 and 0 <= s.target.min() and s.target.max() < 12
        present = set(np.unique(s.target).tolist())
        assert {1, 2, 3, 9} <= present  # background, facade, window, cornice in every facade
    wide = open_dataset("synthetic", size=(64, 96), limit=1)[0]
    assert wide.input.shape == (3, 64, 96)


def test_synthetic_layouts_vary_and_meta_is_json():
    ds = open_dataset("synthetic", size=32, limit=40)
    metas = [ds.meta(i) for i in range(40)]
    json.dumps(metas)
    assert set(m["material"] for m in metas) == set(MATERIALS)
    assert len(set(m["floors"] for m in metas)) >= 3 and len(set(m["columns"] for m in metas)) >= 3
    assert len(set(round(m["window_width"], 2) for m in metas)) >= 20
    assert any(m["shop_units"] for m in metas) and any(not m["shop_units"] for m in metas)


def test_synthetic_materials_are_visibly_distinct():
    ds = open_dataset("synthetic", size=64, limit=60)
    wall: dict[str, list[np.ndarray]] = {m: [] for m in MATERIALS}
    for i in range(len(ds)):
        photo, labels = ds.generate(i)
        wall[ds.meta(i)["material"]].append(photo[labels == 2].astype(np.float64).mean(axis=0))
    means = {m: np.mean(v, axis=0) for m, v in wall.items()}
    assert all(len(v) >= 5 for v in wall.values())
    for i, m1 in enumerate(MATERIALS):
        for m2 in MATERIALS[i + 1:]:
            assert np.linalg.norm(means[m1] - means[m2]) > 30, (m1, m2, means[m1], means[m2])
    # Brick is red, stone grey: channel balance, not only brightness, tells them apart.
    assert means["brick"][0] - means["brick"][2] > 60 and abs(means["stone"][0] - means["stone"][2]) < 25


def test_synthetic_errors():
    with pytest.raises(DataError, match=r"multiples of 32, but size = 48"):
        open_dataset("synthetic", size=48)
    with pytest.raises(DataError, match=r"Unknown split 'extra'; expected one of test, train, val"):
        open_dataset("synthetic", split="extra")
    with pytest.raises(DataError, match=r"task='segment' reads the label map \(B\) as the target, so it needs "
                                        r"direction='AtoB', but direction = 'BtoA'"):
        open_dataset("synthetic", task="segment", direction="BtoA")
    with pytest.raises(DataError, match=r"Expected data = 'synthetic', a folder path, .* but data = 3"):
        open_dataset(3)


# --------------------------------------------------------------------------- real Facades data


def test_real_facades_first_three_images(facades_dir):
    ds = open_dataset(facades_dir, task="segment", limit=3)
    assert ds.names == ["1.jpg", "2.jpg", "3.jpg"] and ds.image_size == (256, 256)
    counts = np.zeros(12)
    for s in ds:
        assert s.input.shape == (3, 256, 256) and s.input.dtype == np.float32
        assert -1.0 <= s.input.min() < -0.5 and 0.5 < s.input.max() <= 1.0
        assert s.target.shape == (256, 256) and s.target.dtype == np.int64
        assert 0 <= s.target.min() and s.target.max() <= 11
        counts += np.bincount(s.target.ravel(), minlength=12)
    fractions = counts / counts.sum()
    # The README's dominant classes: 2 (wall, ~38%), 1 (~20%), 3 (windows, ~12%).
    assert fractions.argmax() == 2 and fractions[2] > 0.2
    assert fractions[1] > 0.05 and fractions[3] > 0.05
    photo = open_dataset(facades_dir, split="test", direction="BtoA", limit=1)[0]
    assert photo.target.shape == (3, 256, 256) and len(open_dataset(facades_dir, split="test")) == 106

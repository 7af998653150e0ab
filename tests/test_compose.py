"""Compositor: identity reconstruction, hand-computed pastes, source maps, validation."""
from types import SimpleNamespace

import numpy as np
import pytest

from compnn_index.compose import paste, source_coords, source_map, used_mask
from compnn_index.errors import QueryError
from compnn_index.metrics import psnr
from compnn_index.search.field import NNField

STRIDE, REGION, GRID = 2, 4, 64  # 64x64 feature grid of a 2x2-window layer at stride 2
SIZE = (GRID + 1) * STRIDE  # 130: valid windows of a 65x65 map reach every pixel


def identity_field(n: int, grid: int = GRID) -> NNField:
    yy, xx = np.mgrid[0:grid, 0:grid]
    return NNField(np.full((grid, grid), n), yy, xx, np.ones((grid, grid)))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (3, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 12, (3, SIZE, SIZE))


# Hand-made 2x2 field over two 3x3 one-channel images, stride 1, region 2 (output 3x3).
HAND_FIELD = NNField(
    image=np.array([[0, 1], [0, 1]]),
    y=np.array([[0, 1], [1, 0]]),
    x=np.array([[0, 1], [0, 0]]),
    similarity=np.ones((2, 2)),
)


def test_identity_field_reproduces_images_exactly(images):
    out = paste(identity_field(2), source=images, stride=STRIDE, region=REGION, out_size=(SIZE, SIZE))
    assert out.dtype == np.float32 and out.shape == (3, SIZE, SIZE)
    assert np.array_equal(out, images[2])
    assert psnr(out, images[2]) == float("inf")


def test_identity_field_reproduces_labels_exactly(labels):
    out = paste(identity_field(1), source=labels, stride=STRIDE, region=REGION, out_size=(SIZE, SIZE),
                mode="vote", num_classes=12)
    assert out.dtype == np.int64
    assert np.array_equal(out, labels[1])


def test_spec_object_gives_same_result_as_stride_region(images):
    spec = SimpleNamespace(stride=STRIDE, region=REGION, k=2)
    a = paste(identity_field(0), spec, images, out_size=(SIZE, SIZE))
    b = paste(identity_field(0), spec=SimpleNamespace(stride=STRIDE, region=None, k=2), source=images,
              out_size=(SIZE, SIZE))
    assert np.array_equal(a, images[0]) and np.array_equal(b, images[0])


class _IndexSpy(np.memmap):
    """A read-only memmap that records every index it is read at."""

    keys: list = []

    def __getitem__(self, key):
        _IndexSpy.keys.append(key)
        return super().__getitem__(key)


def test_memmap_source_is_read_only_at_used_images(tmp_path, images):
    path = tmp_path / "imgs.npy"
    np.save(path, images)
    mm = np.load(path, mmap_mode="r").view(_IndexSpy)
    _IndexSpy.keys = []
    out = paste(identity_field(1), source=mm, stride=STRIDE, region=REGION, out_size=(SIZE, SIZE))
    assert np.array_equal(out, images[1])
    # reads of image 1 only (the covered pixels, not whole planes): other images are never touched
    firsts = [np.unique(np.asarray(k[0] if isinstance(k, tuple) else k)) for k in _IndexSpy.keys]
    assert firsts and all(np.array_equal(f, [1]) for f in firsts)
    assert not mm.flags.writeable


def test_hand_made_field_averages_overlaps():
    src = np.stack([np.arange(9.0).reshape(3, 3), 10.0 * (np.arange(9.0).reshape(3, 3) + 1)])[:, None]
    out = paste(HAND_FIELD, source=src.astype(np.float32), stride=1, region=2, out_size=(3, 3))
    expected = [[0, 25.5, 60], [3, 24.5, 55], [6, 23.5, 50]]
    np.testing.assert_allclose(out[0], expected)


LAB0 = [[1, 2, 0], [3, 9, 0], [9, 1, 0]]
LAB1 = [[3, 1, 0], [3, 9, 0], [0, 2, 1]]


def test_hand_made_field_votes_with_ignore_index_and_ties():
    src = np.array([LAB0, LAB1])
    out = paste(HAND_FIELD, source=src, stride=1, region=2, out_size=(3, 3), mode="vote",
                num_classes=4, ignore_index=9)
    # (1,1): votes 2 and 3 once each once the two 9s are ignored -> tie -> lowest (2);
    # (2,0) and (2,2): only ignored source pixels -> ignore_index.
    assert out.tolist() == [[1, 2, 0], [3, 2, 1], [9, 1, 9]]


def test_hand_made_field_votes_without_ignore_index():
    src = np.array([LAB0, LAB1])
    out = paste(HAND_FIELD, source=src, stride=1, region=2, out_size=(3, 3), mode="vote", num_classes=10)
    assert out.tolist() == [[1, 2, 0], [3, 9, 1], [9, 1, 9]]


def test_uncovered_pixels_copy_nearest_covered_pixel():
    src = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    field = identity_field(0, grid=2)  # stride 2 region 2 reaches rows/cols 0..3 of a 5x5 output
    out = paste(field, source=src, stride=2, region=2, out_size=(5, 5))[0]
    np.testing.assert_array_equal(out[:4, :4], src[0, 0])
    np.testing.assert_array_equal(out[4, :4], src[0, 0, 3])
    np.testing.assert_array_equal(out[:4, 4], src[0, 0, :, 3])
    assert out[4, 4] == src[0, 0, 3, 3]


def test_blocks_clipped_at_source_border():
    # Position (0, 0) matched to source position (1, 1) at stride 2 region 4: block rows 2..5 of a
    # 4-row source -> only rows/cols 2..3 exist, the rest of the output is filled from them.
    src = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    field = NNField(np.zeros((1, 1)), np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1)))
    out = paste(field, source=src, stride=2, region=4, out_size=(4, 4))[0]
    np.testing.assert_array_equal(out[:2, :2], src[0, 0, 2:, 2:])
    assert out[3, 3] == src[0, 0, 3, 3]


def test_source_map_of_identity_field_is_that_image():
    sm = source_map(identity_field(5), stride=STRIDE, region=REGION, out_size=(SIZE, SIZE))
    assert sm.dtype == np.int64 and sm.shape == (SIZE, SIZE) and (sm == 5).all()


def test_source_map_votes_ties_to_lowest_id():
    sm = source_map(HAND_FIELD, stride=1, region=2, out_size=(3, 3))
    # (0,1) is covered by images 0 and 1 once each -> 0; (1,1) by 0,1,0,1 -> 0; (1,2) only by 1.
    assert sm.tolist() == [[0, 0, 1], [0, 0, 1], [0, 0, 1]]


def test_source_coords_of_identity_field_are_the_pixel_grid():
    sc = source_coords(identity_field(4), stride=STRIDE, region=REGION, out_size=(SIZE, SIZE))
    assert (sc.image == 4).all()
    assert np.array_equal(sc.y, np.broadcast_to(np.arange(SIZE)[:, None], (SIZE, SIZE)))
    assert np.array_equal(sc.x, np.broadcast_to(np.arange(SIZE)[None, :], (SIZE, SIZE)))


def test_source_coords_pick_most_similar_block_and_centre():
    field = NNField(
        image=np.array([[0, 0]]), y=np.array([[0, 3]]), x=np.array([[0, 5]]), similarity=np.array([[0.2, 0.9]])
    )
    sc = source_coords(field, stride=1, region=2, out_size=(2, 3))
    # output pixel (0, 1) is covered by both blocks; the second (similarity 0.9) wins: offset (0, 0).
    assert (sc.y[0, 1], sc.x[0, 1]) == (3, 5)
    assert (sc.y[1, 0], sc.x[1, 0]) == (1, 0)
    centre = source_coords(field, stride=1, region=2, out_size=(2, 3), at="centre")
    assert (centre.y[0, 1], centre.x[0, 1]) == (4, 6)
    assert (centre.y[0, 0], centre.x[0, 0]) == (1, 1)


def test_used_mask_is_union_of_matched_blocks():
    mask = used_mask(HAND_FIELD, 1, stride=1, region=2, source_size=(3, 3))
    # image 1 is matched at (1, 1) and (0, 0): blocks rows/cols 1..2 and 0..1.
    assert mask.tolist() == [[True, True, False], [True, True, True], [False, True, True]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="mean", source=np.zeros((2, 3, 3), np.int64)), r"mode='mean' expects a float source.*use mode='vote'"),
        (dict(mode="vote", source=np.zeros((2, 1, 3, 3), np.float32)), r"mode='vote' expects integer labels"),
        (dict(mode="median", source=np.zeros((2, 1, 3, 3), np.float32)), r"Expected mode 'mean' or 'vote', got mode = 'median'"),
        (dict(source=np.zeros((1, 1, 3, 3), np.float32)), r"max image id = 1, source images = 1"),
        (dict(source=np.zeros((2, 1, 3, 3), np.float32), out_size=(1, 3)), r"outside out_size = \(1, 3\)"),
        (dict(source=np.zeros((2, 1, 3, 3), np.float32), out_size=(3,)), r"Expected out_size = \(H, W\)"),
        (dict(source=np.zeros((2, 1, 3, 3), np.float32), spec=SimpleNamespace(stride=1, region=2)),
         r"either spec or stride/region, not both"),
        (dict(source=np.zeros((2, 1, 3, 3), np.float32), stride=0), r"stride to be a positive int, got stride = 0"),
        (dict(source=np.array([LAB0, LAB1]), mode="vote", num_classes=4), r"labels in \[0, 4\).*got labels in \[0, 9\]"),
        (dict(source=None), r"got None"),
    ],
)
def test_paste_rejects_bad_input(kwargs, match):
    args = dict(stride=1, region=2, out_size=(3, 3))
    args.update(kwargs)
    with pytest.raises(QueryError, match=match):
        paste(HAND_FIELD, **args)


def test_paste_rejects_positions_outside_source():
    field = NNField(np.zeros((1, 1)), np.full((1, 1), 2), np.zeros((1, 1)), np.ones((1, 1)))
    with pytest.raises(QueryError, match=r"outside the source images of size \(3, 3\)"):
        paste(field, source=np.zeros((1, 1, 3, 3), np.float32), stride=2, region=2, out_size=(3, 3))


# --------------------------------------------------------------------------- pictures

from compnn_index.pictures import (  # noqa: E402
    correspondence_map,
    OTHER_COLOUR,
    class_legend,
    correspondence_pairs,
    default_palette,
    grid,
    image_to_uint8,
    label_picture,
    label_to_rgb,
    outline_region,
    source_colours,
)
from compnn_index.data.palette import FACADES_CLASSES, FACADES_PALETTE


def test_image_to_uint8_and_label_to_rgb():
    img = np.array([[[-1.0, 0.0, 1.0, 2.0]]] * 3, np.float32)  # (3, 1, 4)
    assert image_to_uint8(img)[0, :, 0].tolist() == [0, 128, 255, 255]
    palette = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    rgb = label_to_rgb(np.array([[0, 1, 255]]), palette)
    assert rgb.tolist() == [[[10, 20, 30], [40, 50, 60], [0, 0, 0]]]
    with pytest.raises(QueryError, match=r"float \(3, H, W\) image.*got dtype uint8"):
        image_to_uint8(np.zeros((3, 4, 4), np.uint8))


def test_outline_region_draws_mask_boundary_in_colour():
    mask = np.zeros((12, 12), bool)
    mask[2:10, 3:9] = True
    out = outline_region(np.full((12, 12, 3), 100, np.uint8), mask, (255, 0, 0), width=2)
    red = (out == [255, 0, 0]).all(axis=-1)
    ring = mask.copy()
    ring[4:8, 5:7] = False  # the 2-px inner boundary of the rectangle
    assert np.array_equal(red, ring)
    assert (out[~mask] > 100).all()  # outside faded towards white


def two_source_field(grid_size: int = 15) -> NNField:
    yy, xx = np.mgrid[0:grid_size, 0:grid_size]
    image = (xx >= grid_size // 2 + 1).astype(int)  # left columns from image 0, right from image 1
    return NNField(image, yy, xx, np.ones_like(yy, float))


def test_correspondence_map_colours_pixels_by_source_and_outlines_used_regions():
    field = two_source_field()
    db = {0: np.full((32, 32, 3), 90, np.uint8), 1: np.full((32, 32, 3), 60, np.uint8)}
    pic = correspondence_map(field, stride=2, region=4, out_size=(32, 32), db_images=db,
                             thumb_height=32, min_size=32)
    colours = source_colours(2)
    assert [(e.kind, e.key, e.colour) for e in pic.legend] == [
        ("source", 0, tuple(colours[0])), ("source", 1, tuple(colours[1]))]
    assert sum(e.share for e in pic.legend) == pytest.approx(1.0)
    arr = np.asarray(pic)
    top = next(y for y in range(arr.shape[0]) if (arr[y, 6:38] == colours[0]).all(axis=-1).sum() > 8)
    left = arr[top:top + 32, 6:38]  # the map is the first grid cell (pad 6), under its title
    assert (left[:, :15] == colours[0]).all() and (left[:, 18:] == colours[1]).all()
    assert (left[:, 15:18] == 40).all(axis=-1).any()  # the border between the two sources
    right = arr[:, 38:]
    for c in colours:
        assert (right == c).all(axis=-1).sum() > 4 * 32  # outline and colour frame of each thumbnail


def test_correspondence_map_enlarges_greys_the_stage_and_lists_other_sources():
    field = two_source_field()
    db = {0: np.zeros((32, 32, 3), np.uint8), 1: np.zeros((32, 32, 3), np.uint8)}
    query = np.zeros((32, 32, 3), np.uint8)
    pic = correspondence_map(field, stride=2, region=4, out_size=(32, 32), db_images=db,
                             query_image=query, max_sources=1, alpha=1.0)
    assert [e.kind for e in pic.legend] == ["source", "other"]
    assert pic.legend[1].share == pytest.approx(1 - pic.legend[0].share)
    arr = np.asarray(pic)
    assert arr.shape[0] >= 256 and arr.shape[1] >= 256 + 32  # 32 px enlarged 8× to 256
    c0 = source_colours(1)[0]
    rows = np.nonzero((arr[:, 6:262] == c0).all(axis=-1).sum(axis=1) > 64)[0]
    assert len(rows) >= 200
    left = arr[rows[0]:rows[0] + 256, 6:262]
    assert (left[:, :100] == c0).all()
    assert (left[:, 160:] == 150).all()  # "other": the grey stage (black query → lightest grey 150)
    classes = class_legend(np.array([[255, 0, 0], [0, 0, 255]], np.uint8), ["wall", "sky"])
    pic = correspondence_map(field, stride=2, region=4, out_size=(32, 32), db_images=db,
                             class_entries=classes)
    assert [e.label for e in pic.legend if e.kind == "class"] == ["wall", "sky"]


def test_label_picture_has_a_legend_of_present_classes():
    labels = np.zeros((8, 8), np.int64)
    labels[:, 6:] = 3
    pic = label_picture(labels, FACADES_PALETTE, FACADES_CLASSES, scale=4)
    assert [(e.key, e.label) for e in pic.legend] == [(0, FACADES_CLASSES[0]), (3, FACADES_CLASSES[3])]
    assert [e.share for e in pic.legend] == [0.75, 0.25]
    arr = np.asarray(pic)
    assert arr.shape[0] >= 32 and arr.shape[1] > 32 + 40  # map 4× plus the legend beside it
    assert (arr[:32, :24] == FACADES_PALETTE[0]).all() and (arr[:32, 24:32] == FACADES_PALETTE[3]).all()
    every = label_picture(labels, None, None, num_classes=5, all_classes=True)
    assert [e.label for e in every.legend] == [f"class {i}" for i in range(5)]
    assert len({e.colour for e in every.legend}) == 5  # the default palette: distinct colours


def test_default_palette_and_source_colours_are_distinct():
    for n in (5, 12, 20, 40):
        pal = default_palette(n).astype(int)
        assert pal.shape == (n, 3) and len({tuple(c) for c in pal}) == n
        d = np.abs(pal[:, None] - pal[None]).sum(-1) + np.eye(n, dtype=int) * 999
        assert d.min() >= 30, n
    cols = source_colours(12)
    assert len({tuple(c) for c in cols}) == 12 and tuple(cols[0]) != (31, 119, 180)  # not tab10 blue first
    assert tuple(OTHER_COLOUR) not in {tuple(c) for c in cols}


def test_correspondence_pairs_size_and_lines():
    a = np.zeros((32, 40, 3), np.uint8)
    b = np.full((24, 30, 3), 255, np.uint8)
    field = two_source_field(15)
    plain = np.asarray(correspondence_pairs(a, b, field, stride=2, region=4, n_lines=0, gap=8))
    assert plain.shape == (32, 40 + 8 + 30, 3)
    assert (plain[:, :40] == 0).all() and (plain[:24, 48:] == 255).all()
    drawn = np.asarray(correspondence_pairs(a, b, field, stride=2, region=4, n_lines=10, gap=8))
    assert (drawn != plain).any()


def test_grid_layout_size_and_column_headers():
    tiles = [[np.zeros((10, 10, 3), np.uint8)] * 2] * 2
    assert grid(tiles, pad=6).size == (6 + 2 * 16, 6 + 2 * 16)
    with_headers = grid(tiles, ["a", "b"], pad=6)
    assert with_headers.size[1] > 38
    with pytest.raises(QueryError, match=r"one caption row per image row, got 1 caption rows for 2 rows"):
        grid(tiles, [["a", "b"]])


def test_paste_reads_covered_pixels_not_whole_images(tmp_path):
    """A field spread over many images must not copy each image's whole plane (whole-set
    queries match hundreds of images): the bytes read stay near one output's worth."""
    import tracemalloc

    n, size = 256, 64
    labels = np.random.default_rng(0).integers(0, 5, size=(n, size, size))
    path = tmp_path / "labels.npy"
    np.save(path, labels)
    mm = np.load(path, mmap_mode="r")
    g = size // STRIDE - 1
    rng = np.random.default_rng(1)
    field = NNField(rng.integers(0, n, (g, g)), rng.integers(0, g, (g, g)).astype(np.int32),
                    rng.integers(0, g, (g, g)).astype(np.int32), np.ones((g, g), np.float32))
    expected = paste(field, source=labels, stride=STRIDE, region=REGION, out_size=(size, size), mode="vote")
    tracemalloc.start()
    out = paste(field, source=mm, stride=STRIDE, region=REGION, out_size=(size, size), mode="vote")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(out, expected)
    used = np.unique(field.image)
    assert len(used) > n // 2
    assert peak < labels[used].nbytes / 4  # copying the used images' planes would exceed it

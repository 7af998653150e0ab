"""Metrics against scikit-learn and hand-computed values."""
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from compnn_index.errors import DataError
from compnn_index.metrics import (
    confusion_matrix,
    iou_per_class,
    l1,
    mean_iou,
    mean_pixel_accuracy,
    pixel_accuracy,
    psnr,
    recall_at_1,
    similarity_ratio,
)
from compnn_index.search.field import NNField


def test_confusion_matrix_and_accuracy_match_sklearn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (2, 40, 30))
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 5, target.shape))
    cm = confusion_matrix(pred, target, 5)
    expected = sk_confusion_matrix(target.ravel(), pred.ravel(), labels=range(5))
    assert cm.dtype == np.int64 and np.array_equal(cm, expected)
    assert pixel_accuracy(cm) == pytest.approx(accuracy_score(target.ravel(), pred.ravel()))


def test_ignore_index_skips_pixels_of_target_and_abstentions():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 4, (50, 50))
    target[:5] = 255
    pred = rng.integers(0, 4, (50, 50))
    pred[-3:] = 255
    keep = (target != 255) & (pred != 255)
    cm = confusion_matrix(pred, target, 4, ignore_index=255)
    assert np.array_equal(cm, sk_confusion_matrix(target[keep], pred[keep], labels=range(4)))


def test_iou_and_mean_accuracy_hand_computed():
    # target: 0 0 1 1 2 ; pred: 0 1 1 1 0  (class 3 absent everywhere)
    cm = confusion_matrix(np.array([0, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 2]), 4)
    # class 0: inter 1, union (pred 2 + target 2 - 1) = 3; class 1: 2 / (3 + 2 - 2) = 2/3;
    # class 2: 0 / (0 + 1 - 0) = 0; class 3 absent -> NaN and left out of the mean.
    iou = iou_per_class(cm)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)
    assert mean_pixel_accuracy(cm) == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_empty_confusion_matrix_gives_nan():
    cm = np.zeros((3, 3), np.int64)
    assert math.isnan(pixel_accuracy(cm)) and math.isnan(mean_iou(cm)) and math.isnan(mean_pixel_accuracy(cm))


def test_psnr_and_l1_known_values():
    a = np.zeros((3, 8, 8), np.float32)
    b = np.full((3, 8, 8), 0.1, np.float32)
    assert psnr(a, b) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-6)  # 26.02 dB
    assert psnr(a, b, data_range=1.0) == pytest.approx(20.0, rel=1e-6)
    assert psnr(a, a) == float("inf")
    assert l1(a, b) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 2),
         r"pred and target of one shape, got pred \(2, 3\) and target \(3, 2\)"),
        (lambda: psnr(np.zeros(4), np.zeros(5)), r"got a \(4,\) and b \(5,\)"),
        (lambda: l1(np.zeros((1, 2)), np.zeros((2, 1))), r"got a \(1, 2\) and b \(2, 1\)"),
        (lambda: confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3),
         r"pred labels in \[0, 3\) or ignore_index = None, got values in \[0, 5\]"),
        (lambda: confusion_matrix(np.array([0.5]), np.array([0]), 3), r"integer class labels for pred"),
        (lambda: confusion_matrix(np.array([0]), np.array([0]), 0), r"num_classes = 0"),
        (lambda: pixel_accuracy(np.zeros((2, 3))), r"square \(K, K\) confusion matrix, got shape \(2, 3\)"),
        (lambda: psnr(np.zeros(2), np.ones(2), data_range=0), r"data_range > 0"),
    ],
)
def test_bad_input_raises_value_error_naming_shapes(call, match):
    with pytest.raises(DataError, match=match):
        call()
    assert issubclass(DataError, ValueError)


def test_recall_and_similarity_ratio_count_ties_as_hits():
    exact = NNField(np.array([[0, 1, 2]]), np.zeros((1, 3)), np.zeros((1, 3)), np.array([[0.9, 0.8, 0.5]]))
    # position 0: same match; position 1: other id, equal similarity (a tie); position 2: worse.
    approx = NNField(np.array([[0, 3, 4]]), np.zeros((1, 3)), np.zeros((1, 3)), np.array([[0.9, 0.8, 0.25]]))
    assert recall_at_1(approx, exact) == pytest.approx(2 / 3)
    assert similarity_ratio(approx, exact) == pytest.approx((1 + 1 + 0.5) / 3)

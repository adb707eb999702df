"""Metrics: hand-computed small cases, and scikit-learn as the reference on random data with ties."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score, top_k_accuracy_score

from mbt.engine.metrics import (
    average_precision,
    classification_metrics,
    d_prime,
    joint_accuracy,
    joint_topk_accuracy,
    mean_auc,
    mean_average_precision,
    roc_auc,
    topk_accuracy,
    write_per_class_ap,
)

# 5 clips x 3 classes. Class 2 has no positive.
SCORES = np.array([[0.9, 0.1, 0.3],
                   [0.8, 0.7, 0.2],
                   [0.4, 0.6, 0.2],
                   [0.3, 0.2, 0.9],
                   [0.1, 0.5, 0.8]])
TARGETS = np.array([[1, 0, 0],
                    [0, 0, 0],
                    [1, 1, 0],
                    [0, 0, 0],
                    [0, 1, 0]])


def test_average_precision_matches_a_hand_computation():
    # Class 0, by score: clip0 0.9 (+), clip1 0.8 (-), clip2 0.4 (+), clip3 0.3 (-), clip4 0.1 (-).
    #   The recall rises at rank 1 (precision 1/1) and rank 3 (precision 2/3): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # Class 1, by score: clip1 0.7 (-), clip2 0.6 (+), clip4 0.5 (+), clip3 0.2 (-), clip0 0.1 (-).
    #   The recall rises at rank 2 (precision 1/2) and rank 3 (precision 2/3): AP = 1/4 + 1/3 = 7/12.
    # Class 2 has no positive: NaN.
    ap = average_precision(SCORES, TARGETS)
    assert ap[0] == pytest.approx(5 / 6)
    assert ap[1] == pytest.approx(7 / 12)
    assert math.isnan(ap[2])
    # The mean leaves class 2 out rather than counting it as 0.
    assert mean_average_precision(SCORES, TARGETS) == pytest.approx((5 / 6 + 7 / 12) / 2)


def test_tied_scores_form_one_threshold():
    # Three clips tie at 0.5 (two positives, one negative), then a positive at 0.1; 3 positives in all.
    #   Threshold 0.5: 2 true positives among 3 clips -> precision 2/3 at recall 2/3.
    #   Threshold 0.1: 3 among 4 -> precision 3/4 at recall 1.
    # AP = 2/3 * 2/3 + 1/3 * 3/4 = 25/36 (positives first would give 11/12, negatives first 23/36).
    scores = np.array([[0.5], [0.5], [0.5], [0.1]])
    targets = np.array([[1], [1], [0], [1]])
    assert average_precision(scores, targets)[0] == pytest.approx(25 / 36)


def test_roc_auc_matches_a_hand_computation():
    # Class 0: positives 0.9, 0.4 vs negatives 0.8, 0.3, 0.1 -> 3 + 2 of 6 pairs ordered right: 5/6.
    # Class 1: positives 0.6, 0.5 vs negatives 0.7, 0.2, 0.1 -> 2 + 2 of 6: 2/3.
    auc = roc_auc(SCORES, TARGETS)
    assert auc[:2] == pytest.approx([5 / 6, 2 / 3])
    assert math.isnan(auc[2])
    assert mean_auc(SCORES, TARGETS) == pytest.approx(3 / 4)


def test_roc_auc_counts_a_tie_between_positive_and_negative_as_half():
    # Positives 0.5, 0.2; negatives 0.5, 0.9: only the 0.5 / 0.5 pair scores, as 1/2 -> AUC = 0.5 / 4.
    assert roc_auc([[0.5], [0.5], [0.2], [0.9]], [[1], [0], [1], [0]])[0] == pytest.approx(1 / 8)


def test_roc_auc_is_nan_for_a_class_with_only_positives():
    assert math.isnan(roc_auc([[0.1], [0.2]], [[1], [1]])[0])


def test_average_precision_and_auc_agree_with_sklearn_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (300, 8)) / 5  # six distinct values: ties everywhere
    targets = (rng.random((300, 8)) < np.linspace(0.02, 0.6, 8)).astype(int)
    targets[:, 3] = 0  # a class without positives
    ap, auc = average_precision(scores, targets), roc_auc(scores, targets)
    for c in range(8):
        if c == 3:
            assert math.isnan(ap[c]) and math.isnan(auc[c])
            continue
        assert ap[c] == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)
        assert auc[c] == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]), abs=1e-12)
    with_positives = [c for c in range(8) if c != 3]
    reference = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in with_positives])
    assert mean_average_precision(scores, targets) == pytest.approx(reference, abs=1e-12)


def test_continuous_scores_agree_with_sklearn():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(500, 5))
    targets = (rng.random((500, 5)) < 0.2).astype(int)
    expected = [average_precision_score(targets[:, c], scores[:, c]) for c in range(5)]
    assert average_precision(torch.from_numpy(scores).float(), targets) == pytest.approx(expected, abs=1e-6)


def test_d_prime_inverts_the_auc_of_two_unit_gaussians():
    # Two unit-variance Gaussians d apart give AUC = Phi(d / sqrt(2)).
    for d in (0.0, 0.5, 1.7, 2.5):
        assert d_prime(norm.cdf(d / math.sqrt(2))) == pytest.approx(d, abs=1e-9)
    assert d_prime(0.75) == pytest.approx(math.sqrt(2) * 0.6744897501960817)


def test_topk_accuracy_on_a_hand_example():
    logits = np.array([[3.0, 1.0, 0.0, 2.0],   # label 0: rank 1
                       [3.0, 1.0, 0.0, 2.0],   # label 3: rank 2
                       [0.0, 1.0, 3.0, 2.0],   # label 0: rank 4
                       [0.0, 5.0, 1.0, 2.0]])  # label 1: rank 1
    labels = [0, 3, 0, 1]
    assert topk_accuracy(logits, labels, ks=(1, 2, 3, 4)) == {1: 0.5, 2: 0.75, 3: 0.75, 4: 1.0}


def test_top5_with_fewer_than_five_classes_counts_every_clip():
    logits = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert topk_accuracy(logits, [0, 0], ks=(1, 5)) == {1: 0.5, 5: 1.0}


def test_tied_logits_are_not_all_counted_as_right():
    # A zero-initialised head gives equal logits: like argmax, only class 0 wins the tie.
    logits = torch.zeros(4, 10)
    assert topk_accuracy(logits, [0, 1, 2, 9], ks=(1, 5)) == {1: 0.25, 5: 0.75}


def test_topk_agrees_with_sklearn_on_random_logits():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(200, 12))
    labels = rng.integers(0, 12, 200)
    result = topk_accuracy(logits, labels, ks=(1, 5))
    for k in (1, 5):
        assert result[k] == pytest.approx(top_k_accuracy_score(labels, logits, k=k, labels=range(12)))


def test_joint_accuracy_needs_verb_and_noun_right_together():
    verb = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    noun = np.array([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    verbs, nouns = [0, 1, 1], [1, 2, 2]
    # Argmax pairs: (0, 1) right; (1, 0) noun wrong; (0, 2) verb wrong. Each head alone is right 2 of 3 times.
    assert joint_accuracy(verb, noun, verbs, nouns) == pytest.approx(1 / 3)


def test_joint_topk_ranks_pairs_by_the_product_of_probabilities():
    verb = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    noun = np.array([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    # Clip 0: (0, 1) is the top pair.
    # Clip 1: p(verb) = (0.27, 0.73), p(noun) = (0.91, 0.045, 0.045): (1, 0) 0.66, (0, 0) 0.24, then (1, 1) and
    #   the true (1, 2) tie at 0.033 and the lower index goes first: the true pair is 4th.
    # Clip 2: p(verb) = (0.73, 0.27), p(noun) = (0.007, 0.007, 0.987): (0, 2) 0.72, then the true (1, 2) 0.27.
    result = joint_topk_accuracy(verb, noun, [0, 1, 1], [1, 2, 2], ks=(1, 2, 3, 4))
    assert result == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3, 4: 1.0})


def test_single_label_metrics_hold_top1_top5_and_the_clip_count():
    logits = torch.tensor([[3.0, 1.0, 0.0, 2.0, -1.0, -2.0], [0.0, 1.0, 3.0, 2.0, 0.5, -1.0]])
    metrics = classification_metrics(logits, torch.tensor([0, 5]), multi_label=False,
                                     class_names=list("abcdef"))
    assert metrics == {"num_videos": 2, "top1": 0.5, "top5": 0.5}


def test_top5_is_reported_only_with_five_classes_or_more():
    for num_classes, has_top5 in ((2, False), (4, False), (5, True)):
        logits = np.eye(num_classes)[[0, 1]]
        metrics = classification_metrics(logits, [0, 1], multi_label=False)
        assert metrics["top1"] == 1.0 and ("top5" in metrics) == has_top5, num_classes


def test_multi_label_metrics_hold_map_auc_and_dprime():
    metrics = classification_metrics(SCORES, TARGETS, multi_label=True)
    assert metrics["num_videos"] == 5
    assert metrics["mAP"] == pytest.approx((5 / 6 + 7 / 12) / 2)
    assert metrics["AUC"] == pytest.approx(3 / 4)
    assert metrics["dprime"] == pytest.approx(math.sqrt(2) * 0.6744897501960817)
    assert "top1" not in metrics


def test_class_split_metrics_report_each_head_and_the_action():
    verb = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    noun = np.array([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    targets = np.array([[0, 1], [1, 2], [1, 2]])
    metrics = classification_metrics(np.concatenate([verb, noun], axis=1), targets, multi_label=False,
                                     class_splits=(2, 3))
    assert metrics["verb_top1"] == pytest.approx(2 / 3)
    assert metrics["noun_top1"] == pytest.approx(2 / 3)
    assert "verb_top5" not in metrics and "noun_top5" not in metrics  # 2 verbs, 3 nouns: top 5 is always right
    assert metrics["action_top1"] == metrics["top1"] == pytest.approx(1 / 3)
    assert metrics["action_top5"] == metrics["top5"] == 1.0  # 6 pairs; the true pair is at worst 4th
    named = classification_metrics(np.concatenate([verb, noun], axis=1), targets, multi_label=False,
                                   class_splits=(2, 3), split_names=("colour", "shape"))
    assert named["colour_top1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: average_precision(np.zeros((3, 2)), np.zeros((3, 3))), "do not match"),
    (lambda: topk_accuracy(np.array([[0.0, np.nan]]), [0]), "NaN"),
    (lambda: topk_accuracy(np.zeros((2, 3)), [0, 3]), "class index 3"),
    (lambda: classification_metrics(np.zeros((2, 3)), [0, 1], multi_label=False, class_names=["a", "b"]),
     "2 class names for 3 logit columns"),
    (lambda: classification_metrics(np.zeros((2, 5)), np.zeros((2, 2)), multi_label=False, class_splits=(2, 2)),
     "do not sum"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_per_class_ap_csv_lists_every_class_with_its_positives(tmp_path):
    path = tmp_path / "eval" / "per_class_ap.csv"
    ap = average_precision(SCORES, TARGETS)
    write_per_class_ap(path, ap, ["dog", "cat", "owl"], num_positives=TARGETS.sum(axis=0))
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class"] for row in rows] == ["dog", "cat", "owl"]
    assert [float(row["ap"]) for row in rows[:2]] == pytest.approx([5 / 6, 7 / 12], abs=1e-6)
    assert rows[2]["ap"] == "nan"
    assert [int(row["num_positives"]) for row in rows] == [2, 2, 0]

"""evaluation.proposals: recall against the number of proposals, on a case computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mnc_teach.evaluation.proposals import best_overlaps, proposal_recall


def boxes(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


# Image 0: two 10 x 10 objects. Its proposals, best first:
#   p0 = [0, 0, 10, 5]    IoU 50 / 100 = 0.5 with object a, 0 with b
#   p1 = [20, 0, 30, 10]  IoU 1 with object b
#   p2 = [0, 0, 10, 8]    IoU 80 / 100 = 0.8 with object a
# Image 1: one object and no proposal at all.
GT = [boxes([[0, 0, 10, 10], [20, 0, 30, 10]]), boxes([[0, 0, 4, 4]])]
PROPOSALS = [boxes([[0, 0, 10, 5], [20, 0, 30, 10], [0, 0, 10, 8]]), boxes([])]


def test_best_overlaps_by_hand():
    best = best_overlaps(GT[0], PROPOSALS[0], counts=[1, 2, 3, 100])
    expected = torch.tensor([[0.5, 0.0], [0.5, 1.0], [0.8, 1.0], [0.8, 1.0]])
    torch.testing.assert_close(best, expected)
    assert best_overlaps(GT[1], PROPOSALS[1], counts=[1, 5]).tolist() == [[0.0], [0.0]]


def test_proposal_recall_by_hand():
    recall = proposal_recall(GT, PROPOSALS, counts=[1, 2, 3], thresholds=(0.5, 0.7))
    # 3 objects: top-1 covers a at 0.5; top-2 also b; top-3 raises a to 0.8; image 1's never
    assert recall[0.5] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert recall[0.7] == pytest.approx([0.0, 1 / 3, 2 / 3])


def test_proposal_recall_edge_cases():
    assert all(math.isnan(r) for r in proposal_recall([boxes([])], [boxes([])], [1, 2])[0.5])
    with pytest.raises(ValueError, match="one of each per image"):
        proposal_recall(GT, PROPOSALS[:1], [1])
    proposals = PROPOSALS[0].clone().requires_grad_(True)  # the RPN's boxes keep their graph
    assert proposal_recall(GT[:1], [proposals], [3])[0.7] == [1.0]

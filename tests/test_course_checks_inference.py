"""The checks of notebook 07 (stage bridge, per-class NMS, mask voting) pass the library, fail
planted mistakes naming the case, report a stub in one line, hide their inputs in hidden tests;
the notebook's solution cells pass them. Notebook 06's check: test_course_checks_cascade.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision

from mnc_teach.boxes import batched_nms, box_iou, clip_boxes, decode_boxes, nms
from mnc_teach.cascade import refine_boxes
from mnc_teach.course.catalog import Exercise
from mnc_teach.course.checks_inference import (
    check_batched_nms,
    check_mask_voting_weights,
    check_refine_boxes,
)
from mnc_teach.course.exercise import Case, ExerciseFailed, rows_tensor, tensor_mismatch
from mnc_teach.course.solutions import collect_solutions
from mnc_teach.postprocess import mask_voting_weights
from mnc_teach.stage1_rpn import clamp_gradient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = "07_five_stages_and_inference"
EXERCISES = (
    Exercise(NOTEBOOK, check_refine_boxes),
    Exercise(NOTEBOOK, check_batched_nms),
    Exercise(NOTEBOOK, check_mask_voting_weights),
)


def test_the_library_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_refine_boxes(refine_boxes).status == "passed"
    assert check_batched_nms(batched_nms).status == "passed"
    assert check_batched_nms(torchvision.ops.batched_nms).status == "passed"
    assert check_mask_voting_weights(mask_voting_weights).status == "passed"
    assert capsys.readouterr().out.count("✓") == 4


def test_the_shared_helpers_build_rows_and_say_why_tensors_differ() -> None:
    assert rows_tensor([], 5).shape == (0, 5)
    rows = rows_tensor([[1, 2], [3, 4]], 2, grad=True)
    assert rows.dtype == torch.float32 and rows.requires_grad and rows.is_leaf
    assert tensor_mismatch(rows * 1.0, rows_tensor([[1, 2], [3, 4.00001]], 2), atol=1e-4) == []
    assert tensor_mismatch(3.0, rows, atol=0.0) == [
        "expected a tensor of shape (2, 2), got float"]
    assert tensor_mismatch(rows[:1], rows, atol=0.0)[0].endswith("got (1, 2)")
    assert tensor_mismatch(rows + 1, rows, atol=1e-3) == [
        "expected = [[1.0, 2.0], [3.0, 4.0]]", "got      = [[2.0, 3.0], [4.0, 5.0]]"]


# ------------------------------------------------------------------ planted wrong solutions
def _bridge(logits, deltas, boxes, *, image_size, weights, delta_grad_clip=None,
            background=False, clip=True, detach=False, honour_clip=True):
    if boxes.shape[0] == 0:
        return boxes
    scores = logits.detach() if background else logits.detach()[:, 1:]
    best = scores.argmax(dim=1) + (0 if background else 1)
    chosen = deltas.view(len(boxes), -1, 4)[torch.arange(len(boxes)), best]
    chosen = chosen.detach() if detach else chosen
    clamp_gradient(chosen, delta_grad_clip if honour_clip else None)
    out = decode_boxes(chosen, boxes, weights=weights)
    return clip_boxes(out, image_size) if clip else out


def _nms_per_label(boxes, scores, labels, *, iou_threshold, sort=True):
    keep = [i[nms(boxes[i], scores[i], iou_threshold)]
            for i in (torch.nonzero(labels == v).flatten() for v in labels.unique())]
    keep = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64)
    return keep[scores[keep].argsort(descending=True)] if sort else keep


def _voting(kept, labels, boxes, fg_scores, *, vote_iou, itself=True, column=-1, normalise=True,
            strict=False):
    iou = box_iou(boxes[kept], boxes)
    similar = iou > vote_iou if strict else iou >= vote_iou
    if itself:
        similar[torch.arange(len(kept)), kept] = True
    weights = similar * fg_scores[:, labels + column].T
    return weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12) if normalise else weights


WRONG = [  # (check, the learner's function, what the diagnosis must say)
    (check_refine_boxes, (lambda *a, **k: _bridge(*a, **k, background=True),),
     ["✗ background is the most likely class\n"]),
    (check_refine_boxes, (lambda *a, **k: _bridge(*a, **k, clip=False),),
     ["✗ a box pushed out of the image\n"]),
    (check_refine_boxes,
     (lambda *a, image_size, **k: _bridge(*a, image_size=image_size[::-1], **k),),
     ["✗ a box pushed out of the image\n"]),
    (check_refine_boxes, (lambda *a, **k: _bridge(*a, **k, detach=True),),
     ["✗ the gradient reaches the deltas and the boxes\n", "w.r.t. box_deltas", "no gradient"]),
    (check_refine_boxes, (lambda *a, **k: _bridge(*a, **k, honour_clip=False),),
     ["✗ delta_grad_clip clamps the gradient of the deltas\n"]),
    (check_batched_nms, (lambda b, s, labels, *, iou_threshold: nms(b, s, iou_threshold),),
     ["✗ the same box in two classes: both kept\n"]),
    (check_batched_nms, (lambda *a, **k: _nms_per_label(*a, **k, sort=False),),
     ["✗ kept indices by decreasing score over all labels\n"]),
    (check_batched_nms,
     (lambda b, s, labels, *, iou_threshold: nms(b + 1000.0 * labels[:, None], s, iou_threshold),),
     ["✗ boxes beyond 1000 px\n"]),
    (check_mask_voting_weights, (lambda *a, **k: _voting(*a, **k, normalise=False),),
     ["✗ a row sums to 1\n", "your rows sum to [1.2"]),
    (check_mask_voting_weights, (lambda *a, **k: _voting(*a, **k, column=0),),
     ["✗ voters weighted by their score for the detection's class\n"]),
    (check_mask_voting_weights, (lambda *a, **k: _voting(*a, **k, itself=False),),
     ["✗ a zero-area box votes for itself\n"]),
    (check_mask_voting_weights, (lambda *a, **k: _voting(*a, **k, strict=True),),
     ["✗ IoU exactly vote_iou counts\n"]),
]


@pytest.mark.parametrize(("check", "functions", "expected"), WRONG)
def test_a_planted_mistake_fails_naming_its_case(check, functions, expected, capsys) -> None:
    result = check(*functions)
    out = capsys.readouterr().out
    assert result.status == "wrong" and not result
    assert out.startswith("✗") and all(part in out for part in expected), out
    assert "hint: " in out


def test_a_hidden_failure_raises_and_shows_no_inputs(capsys) -> None:
    hidden = [Case("secret pair", (torch.tensor([[0.0, 0, 5, 5]] * 2), torch.tensor([0.3, 0.2]),
                                   torch.tensor([4, 5]), 0.5), "labels apart")]
    with pytest.raises(ExerciseFailed, match="fails a hidden test: secret pair"):
        check_batched_nms(lambda b, s, labels, *, iou_threshold: nms(b, s, iou_threshold),
                          cases=hidden, hidden=True)
    out = capsys.readouterr().out
    assert out == "✗ secret pair\n  hint: labels apart\n"


def test_the_notebooks_solution_cells_pass_and_their_stubs_are_missing(tmp_path: Path) -> None:
    found = collect_solutions(NOTEBOOKS, exercises=EXERCISES, quiet=True)
    assert not found.problems
    assert {name: r.status for name, r in found.results.items()} == dict.fromkeys(
        ("stage_bridge", "per_class_nms", "mask_voting"), "passed")
    assert set(found.implementations()) == {"refine_boxes", "batched_nms", "mask_voting_weights"}
    region = re.compile(r"### BEGIN SOLUTION.*?### END SOLUTION", re.S)
    notebook = json.loads((NOTEBOOKS / f"{NOTEBOOK}.ipynb").read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        cell["source"] = region.sub("raise NotImplementedError()", "".join(cell["source"]))
    (tmp_path / f"{NOTEBOOK}.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    stubs = collect_solutions(tmp_path, exercises=EXERCISES, quiet=True)
    assert {r.status for r in stubs.results.values()} == {"missing"}
    assert stubs.implementations() == {}

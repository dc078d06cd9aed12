"""The check of notebook 02's exercise (``my_generate_proposals``) passes the library and a
hand-written solution, and diagnoses typical mistakes by the case they fail, including the
gradient that must reach the anchor deltas."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from mnc_teach.boxes import clip_boxes, decode_boxes, nms, remove_small_boxes
from mnc_teach.course.checks_proposals import check_generate_proposals, proposal_cases
from mnc_teach.course.exercise import Case, ExerciseFailed
from mnc_teach.stage1_rpn import clamp_gradient, generate_proposals


def _proposals(
    anchors, objectness_logits, anchor_deltas, *, image_size, pre_nms_top_n, post_nms_top_n,
    nms_iou, min_size, delta_grad_clip=None, clip=True, small_after_clip=True, sigmoid=True,
    detach_deltas=False, decode_without_grad=False, clamp=True,
):
    """The pipeline written out; the flags plant the mistakes learners make."""
    if detach_deltas:
        anchor_deltas = anchor_deltas.detach()
    top = objectness_logits.topk(min(pre_nms_top_n, objectness_logits.numel())).indices
    deltas = anchor_deltas[top]  # (k, 4)
    if clamp:
        clamp_gradient(deltas, delta_grad_clip)
    with torch.set_grad_enabled(not decode_without_grad):
        boxes = decode_boxes(deltas, anchors[top])
    scores = torch.sigmoid(objectness_logits[top]) if sigmoid else objectness_logits[top]
    if clip and small_after_clip:
        boxes = clip_boxes(boxes, image_size)
    keep = remove_small_boxes(boxes, min_size)
    boxes, scores = boxes[keep], scores[keep]
    if clip and not small_after_clip:
        boxes = clip_boxes(boxes, image_size)
    keep = nms(boxes.detach(), scores, nms_iou)[:post_nms_top_n]
    return boxes[keep], scores[keep]


def _old_positional_signature(
    anchors, objectness_logits, anchor_deltas, image_size, pre_nms_top_n, post_nms_top_n,
    nms_iou, min_size,
):
    return _proposals(anchors, objectness_logits, anchor_deltas, image_size=image_size,
                      pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n,
                      nms_iou=nms_iou, min_size=min_size)


def _not_implemented(*args, **kwargs):
    raise NotImplementedError


def test_the_library_and_a_hand_written_solution_pass(capsys: pytest.CaptureFixture[str]) -> None:
    result = check_generate_proposals(generate_proposals)
    assert result.status == "passed" and result.choose() is generate_proposals
    assert check_generate_proposals(_proposals).status == "passed"
    out = capsys.readouterr().out
    assert out.count("✓ my_generate_proposals matches") == 2
    assert "using your my_generate_proposals" in out


@pytest.mark.parametrize(
    ("wrong", "failing_case", "diagnosis"),
    [
        (partial(_proposals, detach_deltas=True), "one anchor, zero deltas",
         "later stages could not train the RPN's boxes"),
        (partial(_proposals, decode_without_grad=True), "one anchor, zero deltas",
         "sends no gradient to anchor_deltas"),
        (partial(_proposals, clamp=False), "delta_grad_clip = 0.5",
         "the largest gradient on anchor_deltas is 80"),
        (partial(_proposals, sigmoid=False), "one anchor, zero deltas", "sigmoid(logit)"),
        (partial(_proposals, clip=False), "a box pushed out of the image", "clip x to [0, W]"),
        (partial(_proposals, small_after_clip=False), "a box that is small only after clipping",
         "AFTER clipping"),
        (_old_positional_signature, "one anchor, zero deltas", "raised TypeError"),
    ],
)
def test_planted_mistakes_fail_naming_the_case(
    wrong, failing_case: str, diagnosis: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = check_generate_proposals(wrong)
    out = capsys.readouterr().out
    assert result.status == "wrong" and not result
    assert out.startswith(f"✗ {failing_case}") and diagnosis in out


def test_a_stub_is_missing_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    result = check_generate_proposals(_not_implemented)
    assert result.status == "missing"
    assert capsys.readouterr().out == "✗ my_generate_proposals is not implemented yet\n"
    assert result.choose() is generate_proposals
    assert "using the library's generate_proposals: yours is not implemented yet" in (
        capsys.readouterr().out
    )


def test_a_hidden_test_raises_and_shows_no_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 50.0, 50.0]])
    hidden = [Case("two anchors, large deltas", (anchors, torch.tensor([0.3, 0.1]),
                   torch.full((2, 4), 0.4), (64, 64), 2, 2, 0.7, 1.0, 0.01), "the hidden hint")]
    assert check_generate_proposals(generate_proposals, cases=hidden, hidden=True)
    assert capsys.readouterr().out == ""
    with pytest.raises(
        ExerciseFailed, match="exercise 'proposals' fails a hidden test: two anchors, large deltas"
    ):
        check_generate_proposals(partial(_proposals, clamp=False), cases=hidden, hidden=True)
    out = capsys.readouterr().out
    assert out.startswith("✗ two anchors, large deltas")  # then the hint of a gradient failure
    assert "must be clamped to [-delta_grad_clip" in out
    assert "gradient on anchor_deltas is" not in out  # the diagnosis would show values
    with pytest.raises(ExerciseFailed):
        check_generate_proposals(lambda *a, **k: 1 / 0, cases=hidden, hidden=True)
    out = capsys.readouterr().out
    assert "raised ZeroDivisionError" in out and "inputs" not in out


def test_under_nbgrader_a_stub_raises(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NBGRADER_EXECUTION", "validate")
    with pytest.raises(ExerciseFailed, match="exercise 'proposals' is not done yet"):
        check_generate_proposals(_not_implemented)
    assert capsys.readouterr().out == "✗ my_generate_proposals is not implemented yet\n"


def test_the_visible_cases_use_the_library_keywords() -> None:
    for case in proposal_cases():
        assert len(case.args) == 9  # 3 tensors, then the six keyword-only settings
        anchors, logits, deltas = case.args[:3]
        assert anchors.shape == deltas.shape and logits.shape == anchors.shape[:1]

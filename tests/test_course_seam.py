"""The seam reaches the model: every replaceable function is called by training, inference or
evaluation when plugged in; the library's own functions plugged in change nothing; a wrong one
changes the losses; and the package is restored afterwards."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_cascade import small_config

from mnc_teach import boxes, cascade, roi_warp, stage1_rpn, stage3_classify
from mnc_teach.config import override
from mnc_teach.course.seam import LIBRARY, use_implementation
from mnc_teach.engine.batches import build_datasets
from mnc_teach.engine.inference import predict
from mnc_teach.engine.loop import train
from mnc_teach.evaluation.sds import evaluate_sds
from mnc_teach.roi_warp import roi_warp_reference


def _config(root: Path, steps: int = 2):
    cfg = override(small_config(5), "data.root", str(root))
    for name, value in {
        "train.max_steps": steps, "train.images_per_batch": 2, "train.log_every": 1,
        "data.num_workers": 0, "rpn.pre_nms_top_n_train": 200, "inference.num_stages": 5,
        "data.min_size": 64, "data.max_size": 64,
    }.items():
        cfg = override(cfg, name, value)
    return cfg


def _train_predict_evaluate(cfg, out_dir: Path) -> tuple[list[float], dict]:
    """Train (seeded), predict the validation set, evaluate: the losses per step and mAP^r."""
    torch.manual_seed(0)
    history = train(cfg, out_dir, callbacks=())
    _, val = build_datasets(cfg)
    model = cascade.build_mnc(cfg)
    model.load_state_dict(torch.load(out_dir / "checkpoint.pt", weights_only=False)["model"])
    results = predict(model, val, progress=False)
    ground_truth = [val[i][1] for i in range(len(val))]
    sds = evaluate_sds(results, ground_truth, val.class_names)
    return [entry["total"] for entry in history.steps], sds.mean_ap


def test_every_replaceable_function_is_called_through_the_seam(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    calls: Counter[str] = Counter()

    def spy(name: str):
        library = LIBRARY[name]

        @functools.wraps(library)
        def counted(*args, **kwargs):
            calls[name] += 1
            return library(*args, **kwargs)

        return counted

    with use_implementation(**{name: spy(name) for name in LIBRARY}):
        _train_predict_evaluate(_config(tiny_shapes), tmp_path / "run")
    never = sorted(set(LIBRARY) - set(calls))
    assert not never, f"plugged in but never called by the package: {never}"


def test_library_functions_plugged_in_give_the_same_run(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_shapes)
    reference = _train_predict_evaluate(cfg, tmp_path / "library")
    # the readable RoI warp stands in for a learner's vectorised one (a different implementation)
    same = dict(LIBRARY, roi_warp=roi_warp_reference)
    with use_implementation(**same):
        plugged = _train_predict_evaluate(cfg, tmp_path / "plugged")
    assert plugged[0] == pytest.approx(reference[0], rel=1e-5, abs=1e-6)
    assert plugged[1] == reference[1]  # the same detections and the same matching


def test_a_wrong_function_changes_the_losses(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_shapes, steps=1)
    reference, _ = _train_predict_evaluate(cfg, tmp_path / "library")
    with use_implementation(mask_pool=lambda roi_features, mask_probs: roi_features):
        wrong, _ = _train_predict_evaluate(cfg, tmp_path / "wrong")
    assert abs(wrong[0] - reference[0]) > 1e-4


def test_the_package_is_restored_and_names_are_checked() -> None:
    before = (boxes.nms, stage1_rpn.nms, roi_warp.roi_warp_pool, stage3_classify.mask_pool)
    with pytest.raises(RuntimeError), use_implementation(nms=lambda b, s, t: None):
        assert stage1_rpn.nms is not before[1]
        raise RuntimeError("the block fails")
    assert (boxes.nms, stage1_rpn.nms, roi_warp.roi_warp_pool, stage3_classify.mask_pool) == before
    with pytest.raises(ValueError, match="unknown name.*roi_wrap.*the seam knows"):
        with use_implementation(roi_wrap=roi_warp_reference):
            pass
    with pytest.raises(TypeError, match="mask_pool must be a function"):
        with use_implementation(mask_pool=3):
            pass
    with use_implementation(mask_pool=None) as plugged:  # None keeps the library's
        assert plugged == {} and stage3_classify.mask_pool is before[3]

"""Where the time of mAP^r goes: mask IoU on RLEs against decoded masks, and checking predictions.

    python benchmarks/evaluation.py [--images N] [--detections D] [--repeats R]

Setting: N VOC-sized images (375 x 500) with 3 ground-truth instances each and D detections
per image (100: MNC's detections per image). Printed, as medians over R repeats:
    mask IoU     ``rle_mask_iou`` (pycocotools on runs, what ``evaluate_sds`` uses) against
                 ``mask_iou`` on the decoded masks, for one image; the ratio is decoded / RLE
    checking     ``check_result`` on every prediction of the set, against ``evaluate_sds`` with
                 ``check=False``: the share of the evaluation that validating would add, which is
                 why callers that validated already (``load_predictions``) pass ``check=False``
Nothing is asserted: this prints figures, it does not test them (DESIGN.md §2, benchmarks/).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnc_teach.boxes import masks_to_boxes  # noqa: E402
from mnc_teach.evaluation.coco import check_result, decode_mask, encode_masks  # noqa: E402
from mnc_teach.evaluation.sds import evaluate_sds, mask_iou, rle_mask_iou  # noqa: E402

IMAGE_SIZE = (375, 500)  # (H, W): a typical VOC image
NUM_GT = 3  # instances per image
CLASS_NAMES = ("background", "a", "b", "c")


def random_masks(count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` random rectangles as uint8 masks [count, H, W]."""
    height, width = IMAGE_SIZE
    masks = torch.zeros(count, height, width, dtype=torch.uint8)
    for mask in masks:
        y1, x1 = (int(v) for v in torch.randint(0, height // 2, (2,), generator=gen))
        h, w = (int(v) for v in torch.randint(20, height // 2, (2,), generator=gen))
        mask[y1 : y1 + h, x1 : x1 + w] = 1
    return masks


def make_set(num_images: int, num_detections: int) -> tuple[list[dict], list[dict]]:
    """COCO-format predictions and Targets of ``num_images`` synthetic images."""
    gen = torch.Generator().manual_seed(0)
    predictions, ground_truth = [], []
    for i in range(num_images):
        gt_masks = random_masks(NUM_GT, gen)
        labels = torch.randint(1, len(CLASS_NAMES), (NUM_GT,), generator=gen)
        ground_truth.append({"image_id": f"im{i}", "masks": gt_masks, "labels": labels,
                             "boxes": masks_to_boxes(gt_masks)})
        rles = encode_masks(random_masks(num_detections, gen))
        scores = torch.rand(num_detections, generator=gen).tolist()
        categories = torch.randint(1, len(CLASS_NAMES), (num_detections,), generator=gen).tolist()
        predictions += [
            {"image_id": f"im{i}", "category_id": c, "segmentation": rle, "score": s}
            for rle, c, s in zip(rles, categories, scores, strict=True)
        ]
    return predictions, ground_truth


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="images in the set (default: 20)")
    parser.add_argument("--detections", type=int, default=100, help="per image (default: 100)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default: 5)")
    args = parser.parse_args()
    predictions, ground_truth = make_set(args.images, args.detections)
    print(f"{args.images} images of {IMAGE_SIZE[0]} x {IMAGE_SIZE[1]}, {NUM_GT} GT and "
          f"{args.detections} detections each; medians of {args.repeats} repeats")

    first = [p["segmentation"] for p in predictions[: args.detections]]
    gt_rles = encode_masks(ground_truth[0]["masks"])
    decoded = torch.stack([torch.from_numpy(decode_mask(rle)) for rle in first])
    rle_s = median_seconds(lambda: rle_mask_iou(first, gt_rles), args.repeats)
    dense_s = median_seconds(lambda: mask_iou(decoded, ground_truth[0]["masks"]), args.repeats)
    print(f"mask IoU, one image: RLE {1e3 * rle_s:.2f} ms, decoded {1e3 * dense_s:.2f} ms "
          f"(decoded / RLE = {dense_s / rle_s:.0f})")

    image_ids = {target["image_id"] for target in ground_truth}

    def check_all() -> None:
        for p, entry in enumerate(predictions):
            where = f"prediction {p}"
            check_result(entry, where, image_ids=image_ids, num_classes=len(CLASS_NAMES) - 1)

    check_s = median_seconds(check_all, args.repeats)
    evaluate_s = median_seconds(
        lambda: evaluate_sds(predictions, ground_truth, CLASS_NAMES, check=False), args.repeats
    )
    per_prediction_us = 1e6 * check_s / len(predictions)
    print(f"checking {len(predictions)} predictions: {check_s:.3f} s ({per_prediction_us:.0f} µs "
          f"each); evaluate_sds(check=False): {evaluate_s:.3f} s "
          f"(checking / evaluating = {check_s / evaluate_s:.2f})")


if __name__ == "__main__":
    main()

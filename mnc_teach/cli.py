"""Command line: ``python -m mnc_teach <command> --help``.

Commands:
    shapes    generate the synthetic shapes dataset (VOC 2012 layout) and print its fingerprint
    download  download and verify PASCAL VOC 2012 or SBD
    evaluate  mAP^r at 0.5 / 0.7 (SDS protocol, two AP variants) and COCO-style AP of a predictions file
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm


def _cmd_shapes(args: argparse.Namespace) -> int:
    from mnc_teach.data.shapes import generate_shapes

    fingerprint = generate_shapes(
        args.root,
        seed=args.seed,
        num_train=args.train,
        num_val=args.val,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    print(f"shapes dataset in {Path(args.root) / 'VOCdevkit' / 'VOC2012'}")
    print(f"fingerprint (sha256): {fingerprint}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from mnc_teach.data.download import download_dataset

    folder = download_dataset(args.name, Path(args.root), url=args.url)
    print(f"{args.name} is ready in {folder}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mnc_teach.data.voc import VOCInstanceSegmentation
    from mnc_teach.evaluate import evaluate_predictions
    from mnc_teach.fileio import write_text_atomically
    from mnc_teach.predictions import load_predictions

    dataset = VOCInstanceSegmentation(args.dataset_root, split=args.split, format=args.format)
    # validated once, here, so that errors name the file
    predictions = load_predictions(args.predictions, set(dataset.image_ids), dataset.num_classes)
    ground_truth = [
        dataset.load_target(i)
        for i in tqdm(range(len(dataset)), desc=f"reading {args.split} ground truth", leave=False)
    ]
    report = evaluate_predictions(predictions, ground_truth, dataset.class_names, check=False)
    print(report["table"])
    for threshold in ("0.5", "0.7"):
        aps = report[f"mAP_r@{threshold}"]
        print(f"mAP^r@{threshold}: {aps['area']:.4f} (area)  {aps['voc07']:.4f} (VOC07 11-point)")
    coco = report["coco"]
    print(f"COCO segm: AP {coco['AP']:.4f}  AP50 {coco['AP50']:.4f}  AP75 {coco['AP75']:.4f}")
    if args.json:
        numbers = {key: value for key, value in report.items() if key != "table"}
        out = write_text_atomically(args.json, json.dumps(numbers, indent=2))
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mnc_teach", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    shapes = commands.add_parser("shapes", help="generate the synthetic shapes dataset")
    shapes.add_argument("--root", default="data/shapes", help="output folder (default: data/shapes)")
    shapes.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    shapes.add_argument("--train", type=int, default=1000, help="number of train images (default: 1000)")
    shapes.add_argument("--val", type=int, default=200, help="number of val images (default: 200)")
    shapes.add_argument("--image-size", type=int, default=128, help="image side in pixels (default: 128)")
    shapes.add_argument("--overwrite", action="store_true", help="replace an existing dataset made with other settings")
    shapes.set_defaults(run=_cmd_shapes)

    download = commands.add_parser("download", help="download and verify VOC 2012 or SBD")
    download.add_argument("name", choices=["voc2012", "sbd"])
    download.add_argument("--root", default="data", help="folder to download into (default: data)")
    download.add_argument("--url", default=None, help="mirror URL of the archive (default: the official one)")
    download.set_defaults(run=_cmd_download)

    evaluate = commands.add_parser("evaluate", help="mAP^r and COCO AP of a COCO-results JSON file")
    evaluate.add_argument("--dataset-root", required=True, help="VOC 2012 / SBD / shapes dataset folder")
    evaluate.add_argument("--format", choices=["voc", "sbd"], default="voc", help="annotation format (default: voc)")
    evaluate.add_argument("--split", default="val", help="image list to evaluate on (default: val)")
    evaluate.add_argument("--predictions", required=True, help="COCO results JSON (list of {image_id, category_id, segmentation, score})")
    evaluate.add_argument("--json", default=None, metavar="OUT", help="also write the numbers to this JSON file")
    evaluate.set_defaults(run=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        # Expected user errors (missing data, bad files, failed downloads) get one clear line, not a traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m mnc_teach <command> --help``.

Commands:
    shapes    generate the synthetic shapes dataset (VOC 2012 layout) and print its fingerprint
    download  download and verify PASCAL VOC 2012 or SBD
    evaluate  mAP^r at 0.5 / 0.7 (SDS protocol, two AP variants) and COCO-style AP of a
              predictions file
    train     train MNC from a preset (checkpoints, resume, Ctrl-C stops cleanly)
    predict   run a trained checkpoint on a dataset split and write a COCO results JSON for
              `evaluate`
    assignments  the course as an nbgrader assignment: list the points, build, grade

Each command imports what it needs when it runs (the one place of the package that imports
lazily), so that ``--help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from mnc_teach.config import PRESETS

__all__ = ["build_parser", "main"]

DEFAULT_PRESET = "shapes-cpu"


def _check_output_file(path: str, *, flag: str, inputs: dict[str, str | None]) -> None:
    """Refuse, before any work, an output file that is a folder, sits in a file, or is one of
    the command's ``inputs`` (flag -> path): writing it would lose the input."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise ValueError(
            f"{flag} {path} is a folder; give a file name, e.g. {out / 'predictions.json'}"
        )
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    for input_flag, input_path in inputs.items():
        if input_path is None:
            continue
        same = out.resolve() == Path(input_path).expanduser().resolve()
        if same or (out.exists() and Path(input_path).exists() and out.samefile(input_path)):
            raise ValueError(
                f"{flag} {path} is the {input_flag} input: writing it would replace that file; "
                f"choose another {flag}"
            )


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
    from mnc_teach.evaluation.coco import load_predictions
    from mnc_teach.evaluation.report import evaluate_predictions
    from mnc_teach.fileio import write_text_atomically

    if args.json:
        _check_output_file(args.json, flag="--json", inputs={"--predictions": args.predictions})
    dataset = VOCInstanceSegmentation(args.dataset_root, split=args.split, format=args.format)
    # (closed before an error propagates, so that the error line comes last)
    with tqdm(total=len(dataset), desc=f"reading {args.split} ground truth", leave=False) as bar:
        ground_truth = []
        for index in range(len(dataset)):
            ground_truth.append(dataset.load_target(index))
            bar.update()
    # validated once, here, so that errors name the file; masks must have their image's size
    sizes = {target["image_id"]: tuple(target["masks"].shape[-2:]) for target in ground_truth}
    predictions = load_predictions(
        args.predictions, set(sizes), dataset.num_classes, image_sizes=sizes
    )
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


def _apply_setting(cfg, assignment: str):
    """``cfg`` with ``NAME=VALUE`` applied, e.g. ``train.lr=0.01``; VALUE is a Python literal
    (or a bare string). The config checks the value's type and range (``check_config``)."""
    from mnc_teach.config import override

    name, sep, text = assignment.partition("=")
    current = cfg
    for part in name.split("."):
        if not sep or not dataclasses.is_dataclass(current) or not hasattr(current, part):
            raise ValueError(f"--set {assignment!r}: expected NAME=VALUE with NAME a setting of "
                             "mnc_teach/config.py, e.g. train.lr=0.01 or data.flip=False")
        current = getattr(current, part)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        # a bare string, or true / false / none in any case
        value = {"true": True, "false": False, "none": None}.get(text.lower(), text)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, float) and type(value) is int:
        value = float(value)
    try:
        return override(cfg, name, value)
    except ValueError as error:
        raise ValueError(f"--set {assignment}: {error}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    from mnc_teach.config import MNCConfig, get_preset, override
    from mnc_teach.engine.checkpoint import load_checkpoint
    from mnc_teach.engine.distributed import current_world
    from mnc_teach.engine.loop import train
    from mnc_teach.engine.state import CHECKPOINT_NAME, HISTORY_NAME

    out = Path(args.out)
    checkpoint = out / CHECKPOINT_NAME
    if args.resume and args.preset is None:  # the checkpoint's own settings
        cfg = MNCConfig.from_dict(load_checkpoint(checkpoint)["config"])
    else:
        cfg = get_preset(args.preset or DEFAULT_PRESET)
    if args.steps is not None:
        try:
            cfg = override(cfg, "train.max_steps", args.steps)
        except ValueError as error:
            raise ValueError(f"--steps {args.steps}: {error}") from None
    if args.data_root is not None:
        cfg = override(cfg, "data.root", args.data_root)
    for assignment in args.set:
        cfg = _apply_setting(cfg, assignment)
    history = train(cfg, out, resume=args.resume, device=args.device, overwrite=args.overwrite)
    last_step = history.steps[-1]["step"] if history.steps else 0
    diverged = history.divergence()
    if not current_world().is_main:  # under torchrun, process 0 says how the run ended
        return 1 if diverged else 0
    if diverged:
        print(
            f"error: {diverged}. The checkpoint {checkpoint} (step {last_step}) holds the "
            "diverged weights; train again with --overwrite",
            file=sys.stderr,
        )
        return 1
    if last_step < cfg.train.max_steps:
        print(f"stopped at step {last_step} of {cfg.train.max_steps}; checkpoint {checkpoint}")
        print(f"resume with: python -m mnc_teach train --out {out} --resume")
    else:
        print(f"done: {checkpoint} (step {last_step}), loss curves in {out / HISTORY_NAME}")
        print(
            f"predict with: python -m mnc_teach predict --checkpoint {checkpoint} "
            f"--dataset-root {cfg.data.root} --split {cfg.data.val_split} "
            f"--out {out / 'predictions.json'}"
        )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from mnc_teach.data.transforms import ResizeShortestSide
    from mnc_teach.data.voc import VOCInstanceSegmentation
    from mnc_teach.engine.checkpoint import load_model
    from mnc_teach.engine.inference import cpu_threads, predict
    from mnc_teach.evaluation.coco import save_predictions
    from mnc_teach.stage3_classify import compress_fc_layers

    _check_output_file(args.out, flag="--out", inputs={"--checkpoint": args.checkpoint})
    model, cfg = load_model(args.checkpoint, device=args.device)
    if args.svd:  # after loading: the compressed model has other state-dict keys
        compress_fc_layers(model, fc6_rank=args.fc6_rank, fc7_rank=args.fc7_rank)
        print(f"fc6/fc7 compressed by truncated SVD (ranks: {args.fc6_rank or 'fc width / 4'}, "
              f"{args.fc7_rank or 'fc width / 16'})")
    # the scale the model was trained at
    resize = ResizeShortestSide(cfg.data.min_size, cfg.data.max_size)
    dataset = VOCInstanceSegmentation(
        args.dataset_root, split=args.split, format=args.format, transforms=resize
    )
    if dataset.num_classes != cfg.num_classes:
        raise ValueError(
            f"{args.checkpoint} predicts {cfg.num_classes} classes but {dataset.root} has "
            f"{dataset.num_classes} ({', '.join(dataset.class_names[1:])}); "
            "is it the right dataset?"
        )
    on_cpu = next(model.parameters()).device.type == "cpu"
    # on a CPU, the threads the model trained fastest with
    with cpu_threads(cfg.train.cpu_threads if on_cpu else None):
        results = predict(model, dataset)
    save_predictions(results, args.out)
    print(f"wrote {len(results)} detections on {len(dataset)} images to {args.out}")
    print(
        f"evaluate with: python -m mnc_teach evaluate --dataset-root {args.dataset_root} "
        f"--format {args.format} --split {args.split} --predictions {args.out}"
    )
    return 0


def _cmd_assignments(args: argparse.Namespace) -> int:
    try:
        from mnc_teach.course import assignments
    except ModuleNotFoundError as missing:
        raise RuntimeError(
            f"assignments needs nbgrader ({missing}); install the instructor extra: "
            "pip install -e '.[instructor]'"
        ) from None
    # the course's own cell time limit (assignments.CELL_TIMEOUT_S) unless --cell-timeout
    seconds = getattr(args, "cell_timeout", None)  # `list` has no --cell-timeout
    timeout = {} if seconds is None else {"cell_timeout_s": seconds}
    if args.action == "list":
        print(assignments.points_table())
    elif args.action == "build":
        out = assignments.build_course(args.out, force=args.force, **timeout)
        print(f"course folder {out}: student version in release/{assignments.ASSIGNMENT}, "
              f"instructions in {out / 'README.md'}")
    else:
        outcomes = assignments.grade_course(
            args.course_dir, students=args.student or None, notebook=args.notebook, **timeout
        )
        for o in outcomes:
            print(f"{o.student}: {o.score:g} / {o.max_score:g} points of the exercises, "
                  f"{o.seconds:.0f} s{'; ' + o.error if o.error else ''}")
        print(f"scores of every graded cell: {Path(args.course_dir) / assignments.GRADES_CSV}; "
              f"feedback in {Path(args.course_dir) / 'feedback'}")
        if any(o.error for o in outcomes):
            return 1
    return 0


DATASET_ROOT_HELP = "VOC 2012 / SBD / shapes dataset folder"
FORMAT_HELP = "annotation format (default: voc)"
DEVICE_HELP = "default: cuda when available"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m mnc_teach``: one sub-command per ``_cmd_*`` function."""
    description = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m mnc_teach", description=description)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_shapes(commands)
    _add_download(commands)
    _add_evaluate(commands)
    _add_train(commands)
    _add_predict(commands)
    _add_assignments(commands)
    return parser


def _add_shapes(commands: argparse._SubParsersAction) -> None:
    shapes = commands.add_parser("shapes", help="generate the synthetic shapes dataset")
    shapes.add_argument(
        "--root", default="data/shapes", help="output folder (default: data/shapes)"
    )
    shapes.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    shapes.add_argument(
        "--train", type=int, default=1000, help="number of train images (default: 1000)"
    )
    shapes.add_argument("--val", type=int, default=200, help="number of val images (default: 200)")
    shapes.add_argument(
        "--image-size", type=int, default=128, help="image side in pixels (default: 128)"
    )
    shapes.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing dataset made with other settings",
    )
    shapes.set_defaults(run=_cmd_shapes)


def _add_download(commands: argparse._SubParsersAction) -> None:
    download = commands.add_parser("download", help="download and verify VOC 2012 or SBD")
    download.add_argument("name", choices=["voc2012", "sbd"])
    download.add_argument("--root", default="data", help="folder to download into (default: data)")
    download.add_argument(
        "--url", default=None, help="mirror URL of the archive (default: the official one)"
    )
    download.set_defaults(run=_cmd_download)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="mAP^r and COCO AP of a COCO-results JSON file")
    evaluate.add_argument("--dataset-root", required=True, help=DATASET_ROOT_HELP)
    evaluate.add_argument("--format", choices=["voc", "sbd"], default="voc", help=FORMAT_HELP)
    evaluate.add_argument("--split", default="val", help="image list to evaluate on (default: val)")
    evaluate.add_argument(
        "--predictions", required=True,
        help="COCO results JSON (list of {image_id, category_id, segmentation, score})",
    )
    evaluate.add_argument(
        "--json", default=None, metavar="OUT", help="also write the numbers to this JSON file"
    )
    evaluate.set_defaults(run=_cmd_evaluate)


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train MNC (Ctrl-C: checkpoint and stop; --resume continues)"
    )
    train.add_argument(
        "--preset", choices=list(PRESETS), default=None,
        help=f"default: {DEFAULT_PRESET}; with --resume: the checkpoint's settings",
    )
    train.add_argument(
        "--out", required=True, help="run folder: checkpoint.pt and history.json go there"
    )
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument(
        "--overwrite", action="store_true",
        help="start afresh in an OUT that holds a run (its checkpoint.pt and history.json)",
    )
    train.add_argument(
        "--steps", type=int, default=None, help="optimiser steps in total (train.max_steps)"
    )
    train.add_argument("--device", choices=["cpu", "cuda"], default=None, help=DEVICE_HELP)
    train.add_argument("--data-root", default=None, help="dataset folder (data.root)")
    train.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="change a setting of mnc_teach/config.py, e.g. --set train.lr=0.01 (repeatable)",
    )
    train.set_defaults(run=_cmd_train)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict", help="predictions of a checkpoint as COCO results JSON"
    )
    predict.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `train`")
    predict.add_argument("--dataset-root", required=True, help=DATASET_ROOT_HELP)
    predict.add_argument("--format", choices=["voc", "sbd"], default="voc", help=FORMAT_HELP)
    predict.add_argument("--split", default="val", help="image list to predict (default: val)")
    predict.add_argument("--out", required=True, help="COCO results JSON to write")
    predict.add_argument("--device", choices=["cpu", "cuda"], default=None, help=DEVICE_HELP)
    predict.add_argument(
        "--svd", action="store_true",
        help="compress fc6/fc7 by truncated SVD first (Fast R-CNN 3.1): faster, slightly less "
        "accurate",
    )
    predict.add_argument("--fc6-rank", type=int, default=None,
                         help="with --svd: fc6's rank (default: the fc width / 4)")
    predict.add_argument("--fc7-rank", type=int, default=None,
                         help="with --svd: fc7's rank (default: the fc width / 16)")
    predict.set_defaults(run=_cmd_predict)


def _add_assignments(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "assignments", help="the course as an nbgrader assignment (needs the instructor extra)"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every exercise and answer of the course, with its points")
    build = actions.add_parser("build", help="an nbgrader course folder with the student version")
    build.add_argument("--out", required=True, help="the course folder to create")
    build.add_argument("--force", action="store_true", help="rebuild in a folder that has files")
    grade = actions.add_parser("grade", help="autograde + feedback + grades.csv")
    grade.add_argument("course_dir", help="the course folder made by `assignments build`")
    grade.add_argument("--student", action="append", default=[],
                       help="grade this student only (repeatable; default: every submission)")
    grade.add_argument("--notebook", default="*",
                       help="grade the notebooks matching this glob only (default: all)")
    for action in (build, grade):
        action.add_argument("--cell-timeout", type=int, default=None, metavar="SECONDS",
                            help="time limit of one cell when grading (default: the course's, "
                                 "180)")
    parser.set_defaults(run=_cmd_assignments)


# Expected user errors (missing data, bad files, failed downloads, a full disk, a diverged run):
# one clear line. (OSError covers FileNotFoundError, PermissionError, IsADirectoryError, ...)
USER_ERRORS = (OSError, ValueError, RuntimeError, FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; an expected error prints ``error: ...`` (its first line) and returns 1
    (130 on Ctrl-C)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; checkpoints written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Running the model: the training loop, its state and callbacks, checkpoints, and inference.

    state        TrainState, TrainHistory, callbacks (ProgressPrinter)
    batches      the datasets of a config and the seeded order in which steps see them
    loop         train(cfg, out_dir): optimiser, the steps, validation losses
    checkpoint   atomic save / exact restore, load_model(path)
    inference    predict(model, dataset), predict_images, eval_mode, the device and CPU threads
    distributed  torchrun: the process group, DDP, per-process seeds, the collectives the loop uses
"""

"""Running the model: the training loop, its state and callbacks, checkpoints, and inference.

    state        TrainState, TrainHistory, callbacks (ProgressPrinter)
    loop         train(cfg, out_dir): data order, optimiser, the steps, validation losses
    checkpoint   atomic save / exact restore, load_model(path)
    inference    predict(model, dataset), the device and CPU threads it runs with
"""

"""engine.distributed and the loop under torchrun: 2 CPU processes (gloo) train as 1 process does.

The processes are spawned with torch.multiprocessing and find each other through the environment
variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the engine
meets them as it does under torchrun; the last test runs ``torchrun -m mnc_teach train`` itself.
The model is tests/fakes.py's FakeMNC.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from fakes import (
    DATASETS,
    IMAGE_SIZE,
    FakeMNC,
    assert_same_entries,
    fake_model,
    small_config,
    without_timing,
)

from mnc_teach.data.shapes import generate_shapes
from mnc_teach.engine import loop as loop_module
from mnc_teach.engine.batches import epoch_order
from mnc_teach.engine.checkpoint import load_checkpoint
from mnc_teach.engine.distributed import World, step_seed, world_from_env
from mnc_teach.engine.loop import train
from mnc_teach.engine.state import TrainHistory

WORLD_SIZE = 2
# 2 processes x 2 images vs 1 process x 4 images: the same images, the gradients averaged in
# another order. Measured on this CPU (AdamW, 4 steps, losses about 0.5): the losses (training
# and validation) differ by at most 6.0e-8, the weights by at most 3.0e-8, i.e. float32
# rounding; the tolerance leaves room for other CPUs' kernels.
LOSS_TOLERANCE = 1e-6
SPAWN_TIMEOUT_S = 120


# ----------------------------------------------------------------------------- unit tests


def test_world_from_env_reads_torchruns_variables() -> None:
    assert world_from_env({}) == World()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert world_from_env(env) == World(rank=3, size=4, local_rank=1)
    assert not world_from_env(env).is_main and World().is_main
    with pytest.raises(ValueError, match="RANK 4 of WORLD_SIZE 4"):
        world_from_env({**env, "RANK": "4"})
    with pytest.raises(ValueError, match="must be integers; start the processes with torchrun"):
        world_from_env({**env, "RANK": "one"})


def test_step_seeds_differ_between_processes_and_steps() -> None:
    seeds = {step_seed(3, rank=rank, step=step) for rank in range(4) for step in range(100)}
    assert len(seeds) == 400
    assert step_seed(3, rank=1, step=7) == step_seed(3, rank=1, step=7)
    assert all(0 <= seed < 2**32 for seed in seeds)  # NumPy's seeds are 32-bit


def test_a_step_the_processes_cannot_share_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    cfg = small_config(images_per_batch=1, accumulate=2)
    with pytest.raises(ValueError, match=r"1 x 2 images cannot be shared equally by 4 processes"):
        train(cfg, tmp_path, callbacks=(), model=fake_model(), datasets=DATASETS, device="cpu")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- 2 processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Record:
    """A callback noting every event it gets."""

    def __init__(self) -> None:
        self.events = []

    def on_train_start(self, state) -> None:
        self.events.append(("start", state.step))

    def on_step_end(self, state) -> None:
        self.events.append(("step", state.step))

    def on_validation(self, state) -> None:
        self.events.append(("validation", state.step))

    def on_train_end(self, state) -> None:
        self.events.append(("end", state.step))


class _StopAt(_Record):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_step_end(self, state) -> None:
        super().on_step_end(state)
        state.stop_requested = state.step == self.step


class _NoteDraws(FakeMNC):
    """FakeMNC noting a number it draws from the global RNG in each training forward (as MNC's
    anchor and RoI sampling draws)."""

    def __init__(self) -> None:
        super().__init__(noise=True)
        self.draws = []

    @classmethod
    def from_fake_model(cls) -> _NoteDraws:
        """With fake_model()'s initial weights."""
        model = cls()
        model.load_state_dict(fake_model().state_dict())
        return model

    def forward(self, images, targets=None, detect=None):
        if self.training:
            self.draws.append(torch.rand(()).item())
        return super().forward(images, targets, detect)


def _runs_of_one_process(rank: int, ports: list[int], out: str) -> None:
    """What process ``rank`` of 2 does: the runs the tests compare, saved to out/rank{rank}.pt."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1"
    )
    torch.set_num_threads(1)
    saved_at = []
    save = loop_module.save_checkpoint

    def save_and_note(state):
        saved_at.append(state.step)
        return save(state)

    loop_module.save_checkpoint = save_and_note  # who writes checkpoints
    ports = iter(ports)

    def run(cfg, folder, model, **kwargs):
        os.environ["MASTER_PORT"] = str(next(ports))
        folder = Path(out) / folder
        return train(cfg, folder, model=model, datasets=DATASETS, device="cpu", **kwargs)

    results = {}
    # 1. the same step as 1 process x 4 images
    model, record = fake_model(noise=False), _Record()
    history = run(_four_images(), "compare", model, callbacks=[record])
    results["compare"] = {
        "history": history.to_dict(), "params": [p.detach() for p in model.parameters()],
        "seen": model.seen, "events": record.events,
    }
    # 2. straight, or stopped at step 2 by a callback (process 0's) and resumed: 4 micro-batches
    # of 1 image per step, 2 in each process, each drawing from the global RNG
    for name, kwargs in {
        "straight": {}, "stopped": {"callbacks": [_StopAt(2)]}, "resumed": {"resume": True}
    }.items():
        model = _NoteDraws() if name == "resumed" else _NoteDraws.from_fake_model()
        history = run(_accumulated(), "straight" if name == "straight" else "resumed", model,
                      **{"callbacks": (), **kwargs})
        results[name] = {"history": history.to_dict(), "params": list(model.parameters()),
                         "seen": model.seen, "draws": model.draws}
    # 3. process 1's loss is nan in its 3rd forward (step 2): both stop with the same error
    model = fake_model(nan_at_call=3 if rank == 1 else None)
    try:
        run(_accumulated(checkpoint_every=1), "nan", model, callbacks=())
    except FloatingPointError as error:
        results["nan"] = str(error)
    results["saved_at"] = saved_at
    torch.save(results, Path(out) / f"rank{rank}.pt")


def _four_images(**values):
    return small_config(images_per_batch=4, accumulate=1, max_steps=4, val_every=2, **values)


def _accumulated(**values):
    return small_config(images_per_batch=1, accumulate=4, max_steps=4, val_every=0, **values)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The runs of :func:`_runs_of_one_process` in 2 processes: (their folder, their results)."""
    out = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _runs_of_one_process, args=([_free_port() for _ in range(5)], str(out)),
        nprocs=WORLD_SIZE, join=False, start_method="spawn",
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2 processes did not finish in {SPAWN_TIMEOUT_S} s (a hang?)")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def test_two_processes_of_2_images_train_as_one_process_of_4(
    two_processes, tmp_path: Path
) -> None:
    _, ranks = two_processes
    model = fake_model(noise=False)
    single = train(_four_images(), tmp_path, callbacks=(), model=model, datasets=DATASETS)
    for result in ranks:  # every process returns the whole run's history
        got = result["compare"]["history"]
        assert got["val"] == ranks[0]["compare"]["history"]["val"]
        entries = without_timing(got["steps"]) + got["val"]
        expected = without_timing(single.steps) + single.val
        difference = max(abs(a[k] - b[k]) for a, b in zip(entries, expected, strict=True)
                         for k in a if k.startswith("loss") or k == "total")
        print(f"largest loss difference, 2 x 2 images vs 1 x 4: {difference:.2e}")
        assert [e.keys() for e in entries] == [e.keys() for e in expected]
        assert difference <= LOSS_TOLERANCE
    for a, b in zip(ranks[0]["compare"]["params"], ranks[1]["compare"]["params"], strict=True):
        assert torch.equal(a, b)  # DDP keeps the processes' weights identical
    pairs = zip(ranks[0]["compare"]["params"], model.parameters(), strict=True)
    difference = max((a - b.detach()).abs().max().item() for a, b in pairs)
    print(f"largest weight difference after 4 steps: {difference:.2e}")
    assert difference <= LOSS_TOLERANCE
    # each step's 4 images: process 0 took the first 2, process 1 the other 2
    seen = [ranks[r]["compare"]["seen"][2 * s : 2 * s + 2] for s in range(4) for r in range(2)]
    assert [image for pair in seen for image in pair] == model.seen


def test_only_process_0_writes_checkpoints_and_history_and_gets_callbacks(two_processes) -> None:
    out, ranks = two_processes
    assert ranks[1]["saved_at"] == [] and ranks[1]["compare"]["events"] == []
    assert ranks[0]["saved_at"][:3] == [4, 4, 2]  # compare (step 4), straight, stopped at 2
    assert ranks[0]["compare"]["events"] == [
        ("start", 0), ("step", 1), ("step", 2), ("validation", 2), ("step", 3), ("step", 4),
        ("validation", 4), ("end", 4),
    ]
    assert sorted(p.name for p in (out / "compare").iterdir()) == ["checkpoint.pt", "history.json"]
    history = TrainHistory.load(out / "compare" / "history.json")
    assert history.to_dict() == ranks[0]["compare"]["history"]


def test_a_stop_in_process_0_stops_both_and_the_resumed_run_continues_exactly(
    two_processes,
) -> None:
    _, ranks = two_processes
    for result in ranks:
        assert [e["step"] for e in result["stopped"]["history"]["steps"]] == [1, 2]
        straight, resumed = result["straight"], result["resumed"]
        steps = [without_timing(run["history"]["steps"]) for run in (resumed, straight)]
        assert_same_entries(*steps)
        for a, b in zip(resumed["params"], straight["params"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        # the same images and the same random draws after the resume as straight on
        for key in ("seen", "draws"):
            assert result["stopped"][key] + resumed[key] == straight[key]
    # each step's 4 images (epochs of 8 of the 10): process 0 took the first 2, process 1 the rest
    expected = [
        (f"img{index:03d}", IMAGE_SIZE - (index % 8 + 6) if flip else index % 8)
        for epoch in range(2) for index, flip in epoch_order(10, seed=1, epoch=epoch, flip=True)[:8]
    ]
    for rank, result in enumerate(ranks):
        mine = [expected[4 * step + 2 * rank + i] for step in range(4) for i in range(2)]
        assert result["straight"]["seen"] == mine
    # each process draws its own anchor/RoI samples (here: FakeMNC's noise)
    assert not set(ranks[0]["straight"]["draws"]) & set(ranks[1]["straight"]["draws"])


def test_a_non_finite_loss_in_one_process_stops_both_with_the_same_error(two_processes) -> None:
    _, ranks = two_processes
    message = ranks[0]["nan"]
    assert message == ranks[1]["nan"]
    assert message.startswith("step 2: loss_b is nan (the mean over 2 processes)")
    assert "(step 1, finite weights), is kept" in message


def test_torchrun_trains_with_the_command_line(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 -m mnc_teach train`` on 64 x 64 shapes, the real MNC."""
    root, out = tmp_path / "shapes", tmp_path / "run"
    generate_shapes(root, seed=0, num_train=8, num_val=4, image_size=64, progress=False)
    settings = [
        "data.min_size=64", "data.max_size=64", "train.images_per_batch=2", "train.accumulate=1",
        "train.val_every=2", "train.warmup_steps=0",
    ]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "mnc_teach", "train", "--out", str(out), "--data-root", str(root),
        "--device", "cpu", "--steps", "2", *[arg for s in settings for arg in ("--set", s)],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["step"] == 2
    history = TrainHistory.load(out / "history.json")
    assert [e["step"] for e in history.steps] == [1, 2] and [e["step"] for e in history.val] == [2]
    assert "loss_mask" in history.steps[-1]

"""Kernel clients that look at their channels at least once a second, for every headless run of
the notebooks: the tests, ``make html``, and nbgrader's validate and autograde.

pyzmq's asyncio poll sometimes misses the wake-up of a message that has arrived and sees it
only when its timeout ends (zeromq/pyzmq#1558). nbclient waits for a cell's reply with the
cell timeout, so such a miss stalled notebook 00 here for exactly that timeout (60, 120, 200 s,
or until killed) in about 1 run in 6, and cost ~30 s (nbgrader's cell timeout) in 11 of 15
autograde runs; with one-second slices a miss costs a second.
"""

from __future__ import annotations

import time
from queue import Empty

from nbclient import NotebookClient
from nbclient.util import run_sync

__all__ = ["POLL_SLICE_S", "PollingKernelClientMixin", "PollingNotebookClient", "sliced"]

# the longest wait on a kernel channel before looking again
POLL_SLICE_S = 1.0


def sliced(get_msg):
    """``get_msg(timeout)`` of a kernel channel, waiting in slices of POLL_SLICE_S until
    ``timeout``."""

    async def get_msg_in_slices(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = POLL_SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(timeout=min(POLL_SLICE_S, remaining))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    return get_msg_in_slices


class PollingKernelClientMixin:
    """Mix into a NotebookClient subclass (nbclient's, nbconvert's ExecutePreprocessor,
    nbgrader's Execute): its shell and IOPub channels are read in one-second slices.

    Both the async method and its sync twin are overridden: nbclient binds
    ``start_new_kernel_client = run_sync(async_start_new_kernel_client)`` in its own class, so
    a subclass overriding only the async one would not be called by the sync path."""

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()  # type: ignore[misc]
        for channel in (kc.shell_channel, kc.iopub_channel):
            channel.get_msg = sliced(channel.get_msg)
        return kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)


class PollingNotebookClient(PollingKernelClientMixin, NotebookClient):
    """nbclient's NotebookClient, minus the missed-reply stall."""

"""Kernel channels are read in one-second slices: a missed wake-up costs a second, not the
cell timeout; and the mixin wraps the channels of every kernel client it starts (sync and
async paths)."""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import nbformat
import pytest

from mnc_teach.course.polling import POLL_SLICE_S, PollingNotebookClient, sliced


def test_channel_reads_wait_in_one_second_slices() -> None:
    """A missed wake-up costs at most a slice, not the whole timeout; the timeout still holds."""
    calls: list[float | None] = []

    async def get_msg(timeout=None):
        calls.append(timeout)
        if len(calls) < 3:
            raise Empty  # as when pyzmq's poll misses a message until its timeout ends
        return {"msg_type": "execute_reply"}

    in_slices = sliced(get_msg)
    assert asyncio.run(in_slices(timeout=None)) == {"msg_type": "execute_reply"}
    assert calls == [POLL_SLICE_S] * 3
    calls.clear()
    assert asyncio.run(in_slices(timeout=60))["msg_type"] == "execute_reply" and len(calls) == 3
    assert all(t <= POLL_SLICE_S for t in calls)

    async def never(timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(sliced(never)(timeout=2.5))
    assert 2.4 < time.monotonic() - start < 4


def test_the_client_runs_a_notebook_through_sliced_channels() -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    client = PollingNotebookClient(notebook, timeout=60, kernel_name="python3")
    client.execute()
    assert notebook.cells[0].outputs[0]["text"] == "42\n"
    # the sync twin is the mixin's, not nbclient's
    assert PollingNotebookClient.start_new_kernel_client is not type(client).__mro__[2].__dict__[
        "start_new_kernel_client"
    ]

"""The master's garbage collector policy (server/app.py Collector): everything frozen at
start-up and after, a full collection once the memory grew past its bound, and every object
handed back to Python's collector when the master stops."""

import asyncio
import gc
import re
import sys

import pytest

from dockercomp.server.app import Collector
from tests.masters import MasterProcess


@pytest.fixture(autouse=True)
def unfrozen() -> object:
    yield
    gc.unfreeze()


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_start_up_freezes_what_is_alive_and_stopping_hands_it_back() -> None:
    async def run() -> int:
        task = asyncio.create_task(Collector().run())
        await asyncio.sleep(0)  # the first full collection and freeze
        frozen = gc.get_freeze_count()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return frozen

    assert gc.get_freeze_count() == 0
    assert asyncio.run(run()) > 1000  # this test process's modules and objects
    assert gc.get_freeze_count() == 0


def test_a_step_freezes_and_a_full_collection_frees_the_cycles_frozen() -> None:
    collector = Collector()
    collector.full()
    assert collector.full_collections == 1 and collector.blocks_after_full > 0
    Cycle()  # garbage only a collection frees
    collector.step()  # within the bound: frozen, not collected
    assert collector.full_collections == 1 and gc.get_freeze_count() > 0
    garbage = [Cycle() for _ in range(1000)]
    del garbage
    collector.FLOOR, collector.GROWTH = 0, 0.5  # any growth is past the bound now
    collector.blocks_after_full = sys.getallocatedblocks() + 100_000
    collector.step()  # not past it yet: the memory did not grow by as much
    assert collector.full_collections == 1
    collector.blocks_after_full = 1
    collector.step()
    assert collector.full_collections == 2
    assert not [o for o in gc.get_objects() if isinstance(o, Cycle)]  # nothing of them left, frozen or not


def test_the_bound_is_twice_what_was_left_or_the_floor_more() -> None:
    collector = Collector()
    collector.blocks_after_full = 100
    assert collector.bound() == 100 + Collector.FLOOR
    collector.blocks_after_full = 10 * Collector.FLOOR
    assert collector.bound() == 20 * Collector.FLOOR


def test_a_master_collects_and_freezes_at_start_up(master: MasterProcess) -> None:
    assert re.search(r"garbage: \d+ objects freed, \d+ blocks left, in \d+ ms", master.log())

"""Coarse deadlines: items expire no earlier than asked and about a tick later at most; disarmed ones never."""

from __future__ import annotations

import asyncio

from sidecar.proxy.deadlines import Deadlines


class Item:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.at: float | None = None

    def expired(self) -> None:
        self.at = self.loop.time()


async def test_an_item_expires_after_its_delay_within_about_a_tick() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=0.02)
    item = Item(loop)
    armed = loop.time()
    deadlines.arm(item, 0.1)
    await asyncio.sleep(0.25)
    assert item.at is not None
    assert 0.1 <= item.at - armed <= 0.1 + 0.1  # one tick plus scheduling slack on a busy machine
    assert len(deadlines) == 0


async def test_a_disarmed_item_never_expires_and_the_timer_stops_when_nothing_is_armed() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=0.01)
    item = Item(loop)
    deadlines.disarm(item, deadlines.arm(item, 0.03))
    await asyncio.sleep(0.1)
    assert item.at is None
    assert deadlines._timer is None


async def test_items_expire_in_deadline_order_across_many_buckets() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=0.01)
    items = [Item(loop) for _ in range(5)]
    for index, item in enumerate(items):
        deadlines.arm(item, 0.02 * (5 - index))
    await asyncio.sleep(0.2)
    times = [item.at for item in items]
    assert all(t is not None for t in times)
    assert times == sorted(times, reverse=True)  # type: ignore[type-var]


async def test_an_item_armed_while_others_expire_still_expires() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=0.01)
    late = Item(loop)

    class Rearming(Item):
        def expired(self) -> None:
            super().expired()
            deadlines.arm(late, 0.0)

    first = Rearming(loop)
    deadlines.arm(first, 0.01)
    await asyncio.sleep(0.1)
    assert first.at is not None and late.at is not None and late.at >= first.at

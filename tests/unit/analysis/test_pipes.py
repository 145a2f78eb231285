"""The main process's pipe ends never block the event loop and speak multiprocessing.Connection's framing."""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import threading
from multiprocessing import Pipe

from sidecar.analysis.pipes import FrameReader, FrameWriter, frame_header
from sidecar.messages import batches


async def through_a_pipe(frames: list[bytes]) -> list[bytes]:
    """What a worker's `Connection.recv_bytes` reads, frame by frame, after a `FrameWriter` was given `frames`."""
    receive, send = Pipe(duplex=False)
    received: list[bytes] = []

    def read() -> None:
        for _ in frames:
            received.append(receive.recv_bytes())

    reader = threading.Thread(target=read)
    writer = FrameWriter(os.dup(send.fileno()), asyncio.get_running_loop())
    send.close()
    for frame in frames:
        writer.send(frame)  # returns at once, whatever the pipe can take
    reader.start()
    while reader.is_alive():
        await asyncio.sleep(0.01)
    assert writer.pending_bytes == 0
    writer.close()
    receive.close()
    return received


async def test_a_frame_larger_than_the_pipe_arrives_whole() -> None:
    payload = b"".join(bytes([n % 256]) * 350 for n in range(3001))  # about 1 MB
    assert await through_a_pipe([payload]) == [payload]


async def test_more_frames_than_one_writev_takes_arrive_in_order() -> None:
    frames = [batches.encode(batches.Batch(1, n, 0, n, 1)) for n in range(1500)]  # 3,000 parts with their headers
    assert await through_a_pipe(frames) == frames


async def test_frames_keep_their_order_and_the_stop_message_is_an_empty_frame() -> None:
    frames = await through_a_pipe([b"first", bytes(200_000), batches.STOP, b"last!"])
    assert frames == [b"first", bytes(200_000), b"", b"last!"]


async def test_sending_never_blocks_even_when_nobody_reads() -> None:
    receive, send = Pipe(duplex=False)
    writer = FrameWriter(os.dup(send.fileno()), asyncio.get_running_loop())
    send.close()
    for _ in range(20):
        writer.send(bytes(100_000))  # 2 MB into a pipe that holds 64 KiB
    assert writer.pending_bytes > 1_000_000
    writer.close()
    receive.close()


async def test_a_pipe_whose_reader_is_gone_drops_what_it_holds() -> None:
    receive, send = Pipe(duplex=False)
    writer = FrameWriter(os.dup(send.fileno()), asyncio.get_running_loop())
    send.close()
    receive.close()
    writer.send(b"lost")
    assert writer.pending_bytes == 0
    writer.close()
    writer.send(b"after close")
    assert writer.pending_bytes == 0


def test_the_reader_cuts_frames_the_worker_sent_across_reads_and_sees_the_end() -> None:
    receive, send = Pipe(duplex=False)
    reader = FrameReader(os.dup(receive.fileno()))
    receive.close()
    assert reader.read() == ([], False)  # nothing yet, and no waiting for it
    messages = [["small"], list(range(50_000)), [b"x" * 70_000]]

    def write() -> None:
        for message in messages:
            send.send(message)
        send.close()

    threading.Thread(target=write).start()
    frames: list[bytes] = []
    ended = False
    while not ended:
        more, ended = reader.read(limit=10_000)  # a limit smaller than a frame: frames arrive in pieces
        frames += more
    assert [pickle.loads(frame) for frame in frames] == messages
    reader.close()


def test_the_reader_takes_the_long_header_connection_uses_for_frames_of_2_gib_and_more() -> None:
    read, write = os.pipe()
    reader = FrameReader(read)
    assert frame_header(0x7FFFFFFF) == struct.pack("!i", -1) + struct.pack("!Q", 0x7FFFFFFF)
    long_header = struct.pack("!i", -1) + struct.pack("!Q", 5)
    os.write(write, long_header[:6])
    assert reader.read() == ([], False)  # the 8-byte length is not all there yet
    os.write(write, long_header[6:] + b"hello" + frame_header(2) + b"ok")
    os.close(write)
    assert reader.read() == ([b"hello", b"ok"], True)
    reader.close()

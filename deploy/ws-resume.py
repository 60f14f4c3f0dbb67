"""Resume checks for deploy/scale-test.sh: gateways sharing one Redis
(`--resume-store redis://…`) behind nginx (PROTOCOL.md §3.3).

    python deploy/ws-resume.py hop START_URL URL [URL ...]
        One chat, started on START_URL; its socket is closed after a few
        deltas and the chat resumed on each URL in turn (closed again after a
        few more deltas, the last one read to its end), each resume naming
        the session of the socket before it, as a page does. The text must be
        exactly the answer to the same question asked once without a break
        (the demo upstream is deterministic), every seq once, in order.

    python deploy/ws-resume.py death START_URL RESUME_URL PID
        One chat, started on START_URL (the gateway PID, started by the
        caller, runs it); after a few deltas PID is SIGKILLed and the chat
        resumed on RESUME_URL: every frame after the last one seen, once and
        in order, then `error` `upstream_broken` (retryable) within 10 s of
        the kill.

The Origin of each socket is its URL's own host (the gateways' default
same-host check). Prints one JSON line; exits 1 on any failure. Every wait
is bounded (30 s per socket).
"""

import asyncio
import json
import os
import signal
import sys
import time
from urllib.parse import urlsplit

from websockets.asyncio.client import connect

WAIT = 30.0
QUESTION = ("resume check: one two three four five six seven eight nine ten "
            "eleven twelve thirteen fourteen fifteen sixteen seventeen")
STEP = 6  # deltas read per socket before it is closed


class Fail(Exception):
    pass


def origin_of(url: str) -> str:
    u = urlsplit(url)
    return f"http://{u.netloc}"


async def recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


async def opened(url: str):
    ws = await connect(url, origin=origin_of(url), open_timeout=10, max_size=2**22)
    hello = await recv(ws)
    if hello.get("type") != "hello":
        raise Fail(f"first frame {hello}")
    return ws, hello["session"]


async def read(ws, cid: str, deltas: int | None) -> list:
    """Frames of `cid` until `deltas` deltas (None: until its terminal frame)."""
    frames, n = [], 0
    while True:
        f = await recv(ws)
        if f.get("id") != cid:
            continue
        frames.append(f)
        if f["type"] in ("done", "error"):
            if deltas is not None:
                raise Fail(f"ended early: {f}")
            return frames
        if f["type"] == "delta":
            n += 1
            if deltas is not None and n >= deltas:
                return frames


def chat(cid: str) -> str:
    return json.dumps({"type": "chat", "id": cid,
                       "messages": [{"role": "user", "content": QUESTION}]})


def resume(session: str, cid: str, after: int) -> str:
    return json.dumps({"type": "resume", "session": session, "id": cid, "after": after})


def text_of(frames: list) -> str:
    return "".join(f["content"] for f in frames if f["type"] == "delta")


def check_seqs(frames: list):
    seqs = [f.get("seq") for f in frames]
    if seqs != list(range(1, len(frames) + 1)):
        raise Fail(f"seqs are not 1..{len(frames)} once each: {seqs}")


async def reference(url: str) -> str:
    ws, _ = await opened(url)
    try:
        await ws.send(chat("ref"))
        frames = await read(ws, "ref", None)
    finally:
        await ws.close()
    if frames[-1]["type"] != "done":
        raise Fail(f"reference chat ended {frames[-1]}")
    return text_of(frames)


async def hop(start: str, urls: list) -> dict:
    want = await reference(start)
    ws, session = await opened(start)
    await ws.send(chat("c1"))
    frames = await read(ws, "c1", STEP)
    await ws.close()
    for i, url in enumerate(urls):
        last = i + 1 == len(urls)
        ws, next_session = await opened(url)
        await ws.send(resume(session, "c1", frames[-1]["seq"]))
        frames += await read(ws, "c1", None if last else STEP)
        await ws.close()
        session = next_session
    check_seqs(frames)
    if frames[-1]["type"] != "done":
        raise Fail(f"ended with {frames[-1]}")
    got = text_of(frames)
    if got != want:
        raise Fail(f"text differs:\n got {got!r}\nwant {want!r}")
    return {"ok": True, "hops": len(urls), "frames": len(frames), "chars": len(got)}


async def death(start: str, again: str, pid: int) -> dict:
    want = await reference(again)
    ws, session = await opened(start)
    await ws.send(chat("c1"))
    frames = await read(ws, "c1", STEP)
    # The owner writes a burst to the store right after sending it to its
    # sockets; give it that moment (a client further ahead than the store
    # when its instance dies gets just the terminal frame).
    await asyncio.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    await ws.close()
    ws, _ = await opened(again)
    await ws.send(resume(session, "c1", frames[-1]["seq"]))
    tail = await read(ws, "c1", None)
    took = time.monotonic() - killed
    await ws.close()
    frames += tail
    check_seqs(frames)
    last = frames[-1]
    if last["type"] != "error" or last.get("code") != "upstream_broken" or last.get("retryable") is not True:
        raise Fail(f"expected a retryable upstream_broken, got {last}")
    if took >= 10:
        raise Fail(f"upstream_broken came {took:.1f} s after the kill")
    if not want.startswith(text_of(frames)):
        raise Fail(f"the replay is not a prefix of the answer: {text_of(frames)!r}")
    return {"ok": True, "frames": len(frames), "replayed_after_kill": len(tail) - 1,
            "broken_after_kill_ms": round(took * 1000)}


async def main() -> int:
    mode = sys.argv[1]
    try:
        if mode == "hop":
            result = await hop(sys.argv[2], sys.argv[3:])
        elif mode == "death":
            result = await death(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        else:
            raise Fail(f"unknown mode {mode}")
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        print(json.dumps({"ok": False, "why": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Opens N WebSockets to a netfly gateway (or a proxy in front of it), runs
one chat on each, all at once, and prints a JSON summary.

    python deploy/ws-load.py ws://127.0.0.1:PORT/ws N [ORIGIN]

Each socket: read `hello`, send one `chat`, read frames until its `done` or
`error`, close. A socket counts as ok when the chat ended with `done` and
the deltas concatenate to a non-empty text. Exits 1 unless every socket was
ok. Every wait is bounded (30 s per socket, 90 s in all).
"""

import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect

PER_SOCKET = 30.0
TOTAL = 90.0


async def one(url: str, i: int, origin: str | None) -> dict:
    started = time.monotonic()
    async with connect(url, origin=origin, open_timeout=10, max_size=2**22) as ws:
        hello = json.loads(await ws.recv())
        if hello.get("type") != "hello":
            return {"ok": False, "why": f"first frame {hello}"}
        cid = f"c{i}"
        await ws.send(json.dumps({
            "type": "chat",
            "id": cid,
            "messages": [{"role": "user", "content": f"load test socket {i}"}],
        }))
        text, first = [], None
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("id") != cid:
                continue
            kind = frame.get("type")
            if kind == "delta":
                if first is None:
                    first = time.monotonic() - started
                text.append(frame["content"])
            elif kind == "done":
                body = "".join(text)
                ok = f'"load test socket {i}"' in body
                return {"ok": ok, "why": "" if ok else f"text {body!r}",
                        "first": first, "total": time.monotonic() - started}
            elif kind == "error":
                return {"ok": False, "why": f"error {frame}"}


async def guarded(url: str, i: int, origin: str | None) -> dict:
    try:
        return await asyncio.wait_for(one(url, i, origin), PER_SOCKET)
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        return {"ok": False, "why": f"{type(e).__name__}: {e}"}


def pct(values: list, p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 1)


async def main() -> int:
    url, n = sys.argv[1], int(sys.argv[2])
    origin = sys.argv[3] if len(sys.argv) > 3 else None
    began = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(guarded(url, i, origin) for i in range(n))), TOTAL)
    ok = [r for r in results if r["ok"]]
    failures = [r["why"] for r in results if not r["ok"]]
    firsts = [r["first"] for r in ok if r.get("first") is not None]
    totals = [r["total"] for r in ok]
    print(json.dumps({
        "sockets": n,
        "ok": len(ok),
        "failed": len(failures),
        "first_failures": failures[:5],
        "wall_ms": round((time.monotonic() - began) * 1000, 1),
        "first_delta_ms_p50": pct(firsts, 0.5),
        "first_delta_ms_p99": pct(firsts, 0.99),
        "chat_ms_p50": pct(totals, 0.5),
        "chat_ms_p99": pct(totals, 0.99),
    }))
    return 0 if len(ok) == n else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

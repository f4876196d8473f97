"""Model server throughput: p50/p95 latency and films/s of ``cxr-serve`` at 1, 8 and 32 concurrent clients, with and without micro-batching; /v1/explain's latency.

The shipped starter (EfficientNet-Lite0, 224 px) is served by real ``python -m core.serve`` processes, one with
micro-batching (the default settings) and one with ``--no-batching``, both started once and measured in
interleaved rounds (round r: every mode × every client count), so load from other users of the CPU hits both
alike. The clients are a short async client (``httpx.AsyncClient``, one event loop, N tasks each posting films
back to back) in this process: it shares the CPU with the server, as a client on the same small machine would.
The films are the starter's test films in ``sample/chest_xray/test`` (real JPEGs of 0.1-2 MB), posted as raw
bytes round-robin. While the 32-client rounds run, ``/v1/health`` is polled ten times a second: its latency shows
whether health queues behind inference (it must not). Each figure is the median over rounds with its range.

Targets (2 CPU cores): predict p95 ≤ 300 ms at 8 clients; ≥ 30 films/s at 32 clients; no errors.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, base_parser, finish, machine, table

RUN = "starter-efficientnet-lite0"
MODES = {"batching": [], "no-batching": ["--no-batching"]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _films(limit: int | None) -> list[bytes]:
    metrics = json.loads((REPO / "models" / RUN / "metrics.json").read_text())
    paths = [REPO / p["file"] for p in metrics["predictions"]]
    return [p.read_bytes() for p in paths[:limit]]


def _start(flags: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "core.serve", RUN, "--no-auth", "--port", str(port), "--no-access-log", *flags]
    log = tempfile.TemporaryFile("w+")  # the server's log: read back only if it fails to start
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    proc.log = log  # type: ignore[attr-defined]
    return proc, f"http://127.0.0.1:{port}"


async def _ready(url: str, proc: subprocess.Popen, limit_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + limit_s
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                proc.log.seek(0)  # type: ignore[attr-defined]
                raise SystemExit(f"the server exited: {proc.log.read()[-2000:]}")  # type: ignore[attr-defined]
            try:
                if (await client.get("/v1/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise SystemExit(f"the server at {url} was not ready in {limit_s:g} s")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _load(url: str, films: list[bytes], clients: int, seconds: float, path: str = "/v1/predict",
                poll_health: bool = False) -> dict[str, Any]:
    """``clients`` tasks post films back to back for ``seconds``; latency of each answer, errors, films/s."""
    import httpx

    latencies: list[float] = []
    health: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = (await client.get("/v1/health")).json()["batches"]
        stop = time.perf_counter() + seconds

        async def one_client(index: int) -> None:
            i = index
            while time.perf_counter() < stop:
                film = films[i % len(films)]
                i += clients
                start = time.perf_counter()
                try:
                    response = await client.post(path, content=film, headers={"Content-Type": "image/jpeg"})
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == "200":
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[status] = errors.get(status, 0) + 1

        async def poll() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                response = await client.get("/v1/health")
                if response.status_code == 200:
                    health.append(time.perf_counter() - start)
                else:
                    errors[f"health {response.status_code}"] = errors.get(f"health {response.status_code}", 0) + 1
                await asyncio.sleep(0.1)

        began = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)), *([poll()] if poll_health else []))
        elapsed = time.perf_counter() - began
        after = (await client.get("/v1/health")).json()["batches"]
    batches = after["batches"] - before["batches"]
    return {"clients": clients, "seconds": round(elapsed, 2), "answers": len(latencies), "errors": errors,
            "films_per_s": len(latencies) / elapsed, "p50_ms": 1000 * _percentile(latencies, 0.5),
            "p95_ms": 1000 * _percentile(latencies, 0.95),
            "mean_batch": round((after["films"] - before["films"]) / batches, 2) if batches else None,
            "health_p95_ms": 1000 * _percentile(health, 0.95) if health else None,
            "health_max_ms": 1000 * max(health) if health else None}


def _summary(rounds: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    values = [r[key] for r in rounds if r.get(key) is not None]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def _measure(args, films: list[bytes], servers: dict[str, str]) -> dict[str, Any]:
    clients = [int(c) for c in args.clients.split(",")]
    rounds: dict[str, dict[int, list[dict]]] = {mode: {c: [] for c in clients} for mode in servers}
    explain: list[dict] = []
    for mode, url in servers.items():  # warm-up: one short burst each, not counted
        await _load(url, films, max(clients), 2.0)
    for r in range(args.rounds):
        for mode, url in servers.items():
            for c in clients:
                result = await _load(url, films, c, args.seconds, poll_health=c == max(clients))
                rounds[mode][c].append(result)
                print(f"round {r + 1} {mode:<11} {c:>2} clients: {result['films_per_s']:.1f} films/s, "
                      f"p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, mean batch "
                      f"{result['mean_batch']}, errors {result['errors'] or 0}", flush=True)
        explain.append(await _load(servers["batching"], films, 1, args.seconds / 2, path="/v1/explain"))
        print(f"round {r + 1} explain, 1 client: p50 {explain[-1]['p50_ms']:.0f} ms, "
              f"p95 {explain[-1]['p95_ms']:.0f} ms", flush=True)
    figures = {mode: {str(c): {key: _summary(rs, key) for key in
                               ("films_per_s", "p50_ms", "p95_ms", "mean_batch", "health_p95_ms", "health_max_ms")}
                      | {"errors": sum(sum(r["errors"].values()) for r in rs), "rounds": rs}
                      for c, rs in per_client.items()} for mode, per_client in rounds.items()}
    figures["explain"] = {key: _summary(explain, key) for key in ("p50_ms", "p95_ms", "films_per_s")}
    figures["explain"]["rounds"] = explain
    return figures


async def _ready_then_measure(args, films: list[bytes], started: dict[str, tuple[subprocess.Popen, str]]
                              ) -> dict[str, Any]:
    await asyncio.gather(*(_ready(url, proc) for proc, url in started.values()))
    return await _measure(args, films, {mode: url for mode, (_, url) in started.items()})


def _text(figures: dict[str, Any], clients: list[int]) -> str:
    def cell(entry: dict, key: str, digits: int = 0) -> str:
        s = entry[key]
        if s["median"] is None:
            return "—"
        return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"

    rows = [[mode, c, cell(figures[mode][str(c)], "films_per_s", 1), cell(figures[mode][str(c)], "p50_ms"),
             cell(figures[mode][str(c)], "p95_ms"), cell(figures[mode][str(c)], "mean_batch", 1),
             figures[mode][str(c)]["errors"]] for mode in MODES for c in clients]
    text = table(rows, ["mode", "clients", "films/s", "p50 ms", "p95 ms", "mean batch", "errors"])
    top = figures["batching"][str(max(clients))]
    return (text + f"\n\nexplain (Grad-CAM, 1 client): p50 {cell(figures['explain'], 'p50_ms')} ms, "
            f"p95 {cell(figures['explain'], 'p95_ms')} ms"
            f"\nhealth while {max(clients)} clients predict (batching): p95 {cell(top, 'health_p95_ms')} ms, "
            f"max {cell(top, 'health_max_ms')} ms")


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per measurement (default 20, quick 4)")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated (default %(default)s)")
    p.add_argument("--films", type=int, default=None, help="use the first N of the starter's test films (default all)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (4.0 if args.quick else 20.0)
    from core.jobs.commands.startup import import_tensorflow_quietly  # heavy: TensorFlow, quietly

    import_tensorflow_quietly()  # machine() asks TensorFlow for devices: without its start-up notes
    info = machine()
    films = _films(args.films)
    started = {mode: _start(flags) for mode, flags in MODES.items()}
    try:
        figures = asyncio.run(_ready_then_measure(args, films, started))
    finally:
        for proc, _ in started.values():
            proc.terminate()
        for proc, _ in started.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {"benchmark": "serve", "run": RUN, "films": len(films), "rounds": args.rounds,
              "seconds_per_measurement": args.seconds, "client": "httpx.AsyncClient, one event loop in the "
              "benchmark process, on the same CPU as the server", "machine": info, "figures": figures,
              "targets": {"p95_ms_at_8_clients": 300, "films_per_s_at_32_clients": 30, "errors": 0}}
    finish(result, args.out, _text(figures, [int(c) for c in args.clients.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Engine benchmark: one MoA turn's wall time against its ideal critical path.

Run:  python bench/bench_turns.py            (about two minutes on 2 cores)
      python bench/bench_turns.py --quick    (the 500 ms profile only)
      python bench/bench_turns.py --json     (also print the figures as one JSON object, last line)
      python bench/bench_turns.py --loop asyncio|uvloop   (default: as `moa-gateway run` chooses,
                                             uvloop when installed: pip install -e '.[fast]')

The fake provider runs in a separate process (on uvloop when installed, named in the output)
and answers after the latency its model name carries. Two latency profiles:
  - stress:  references 300 ms, aggregator 200 ms (streamed): critical path 500 ms. Far shorter
             than real models, so the engine's own CPU shows as plainly as it can.
  - typical: references 3 s, aggregator 2 s: critical path 5 s, still short for models that
             write a few hundred tokens of advice and then a streamed answer.
For N references (1, 4, 16) and C concurrent turns (1, 50, 200) of 4 references it prints p50 /
p95 wall time, the ratio to the critical path and the overhead in ms, and a naive baseline
(references asked one after another); for 200 concurrent turns also the CPU seconds one round
of them cost this process and the fake provider's. Then peak RSS, and the CPU time of 1,000
concurrent streamed requests through httpx's default transport vs the aiohttp transport we use.

The process runs as `moa-gateway run` does: the heap settled after start-up (gateway.heap).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Figures  # noqa: E402
from gateway.heap import settle_heap  # noqa: E402
from gateway.loop import choose_loop  # noqa: E402
from moa_core.clock import SystemClock  # noqa: E402
from moa_core.engine import MoaEngine  # noqa: E402
from moa_core.providers.base import CompletionRequest  # noqa: E402
from moa_core.providers.client import ProviderClient  # noqa: E402
from moa_core.providers.http import make_http_client  # noqa: E402
from moa_core.settings import EngineSettings, Preset, ProviderSettings, Slot  # noqa: E402
from moa_core.values import Message  # noqa: E402


@dataclass(frozen=True)
class Profile:
    name: str
    reference_ms: int
    aggregator_ms: int

    @property
    def critical_s(self) -> float:
        return (self.reference_ms + self.aggregator_ms) / 1000


STRESS = Profile("stress", 300, 200)
TYPICAL = Profile("typical", 3000, 2000)


def start_fake() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_provider_process.py"))],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    return process, url


def fake_loop(process: subprocess.Popen) -> str:
    """The event loop the fake provider runs on (its second line: uvloop when installed)."""
    return process.stdout.readline().strip().removeprefix("event loop: ")


def make_engine(url: str, refs: int, http: httpx.AsyncClient, profile: Profile = STRESS) -> MoaEngine:
    provider = ProviderSettings("bench", "openai", url + "/v1", None, price_in_per_mtok=1, price_out_per_mtok=2,
                                max_retries=0)
    preset = Preset("bench", tuple(Slot("bench", f"ref{i}-{profile.reference_ms}") for i in range(refs)),
                    Slot("bench", f"agg-{profile.aggregator_ms}"), max_steps=1)
    settings = EngineSettings({"bench": provider}, {"bench": preset}, max_concurrent_references=64)
    clock = SystemClock()
    return MoaEngine(settings, ProviderClient(http, env={}, clock=clock), tools={}, clock=clock)


async def sequential_turn(engine: MoaEngine, question: str) -> None:
    """Naive baseline: each reference alone, one after another, then the aggregator."""
    preset = engine.preset("bench")
    provider = engine.settings.providers["bench"]
    client = ProviderClient(engine._client._http, env={}, clock=SystemClock())  # noqa: SLF001 - a baseline
    for slot in preset.references:
        await client.complete(CompletionRequest(provider, slot.model, (Message("user", question),)))
    await client.complete(CompletionRequest(provider, preset.aggregator.model, (Message("user", question),),
                                            stream=True))


async def one_turn(engine: MoaEngine, i: int, sequential: bool = False) -> float:
    """Run one turn; the perf_counter() instant it ended."""
    if sequential:
        await sequential_turn(engine, f"q{i}")
    else:
        result = await engine.run_turn("bench", [Message("user", f"question {i}")], session=f"s{i}")
        assert result.error is None, result.error
    return time.perf_counter()


async def batch(engine: MoaEngine, first: int, concurrent: int, sequential: bool = False) -> list[float]:
    """Wall time of each of `concurrent` turns submitted at one instant, counted from that
    instant: a turn that waits for the loop before it even starts is charged for the wait."""
    submitted = time.perf_counter()
    ends = await asyncio.gather(*(one_turn(engine, first + i, sequential) for i in range(concurrent)))
    return [end - submitted for end in ends]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cpu:
    """CPU seconds per round of the last measurement: this process's and the fake provider's;
    and the collector's runs per round in this process (each walks every young object, and in a
    burst those are the calls in flight)."""

    fake_pid: int
    own_s: float = 0.0
    fake_s: float = 0.0
    collections: float = 0.0


async def measure(url: str, refs: int, concurrent: int, rounds: int, profile: Profile = STRESS,
                  sequential: bool = False, cpu: Cpu | None = None) -> list[float]:
    http = make_http_client()
    engine = make_engine(url, refs, http, profile)
    # Warm the connection pool at this concurrency: a running gateway keeps its provider
    # connections alive, so steady state is what a turn sees.
    await batch(engine, -10 * concurrent, concurrent, sequential)
    walls: list[float] = []
    own0, fake0 = time.process_time(), process_cpu_s(cpu.fake_pid) if cpu else 0.0
    collections0 = _collections()
    for r in range(rounds):
        walls += await batch(engine, r * concurrent, concurrent, sequential)
    if cpu is not None:
        cpu.own_s = (time.process_time() - own0) / rounds
        cpu.fake_s = (process_cpu_s(cpu.fake_pid) - fake0) / rounds
        cpu.collections = (_collections() - collections0) / rounds
    await http.aclose()
    return walls


def _collections() -> int:
    """Garbage-collector runs so far, all generations."""
    return sum(generation["collections"] for generation in gc.get_stats())


def row(label: str, walls: list[float], profile: Profile, figures: Figures, key: str) -> str:
    p50 = statistics.median(walls)
    p95 = sorted(walls)[max(0, int(len(walls) * 0.95) - 1)]
    critical = profile.critical_s
    figures[f"p50_ms_{key}_{profile.name}"] = p50 * 1000
    figures[f"ratio_p50_{key}_{profile.name}"] = p50 / critical
    figures[f"overhead_p50_ms_{key}_{profile.name}"] = (p50 - critical) * 1000
    return (f"{label:<34} p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  "
            f"p50/critical {p50 / critical:5.3f}  overhead p50 {(p50 - critical) * 1000:6.1f} ms")


async def transport_cpu(url: str, transport: str, n: int = 1000) -> tuple[float, float]:
    client = make_http_client() if transport == "aiohttp" else httpx.AsyncClient(
        limits=httpx.Limits(max_connections=n), timeout=60)
    body = {"model": "stream-1000", "messages": [{"role": "user", "content": "x"}], "stream": True}

    async def stream_one() -> None:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            async for _ in response.aiter_lines():
                pass

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(stream_one() for _ in range(n)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await client.aclose()
    return cpu, wall


async def fake_floor_ms(url: str, profile: Profile, repeats: int = 5) -> float:
    """How late the fake provider alone answers one turn's path (a reference, then the aggregator)
    to a bare socket with no client: its timers' lateness on this machine, which every turn
    figure above includes; p50 over `repeats`."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))

    async def ask(model: str) -> None:
        body = json.dumps({"model": model, "messages": []}).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: fake\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%b" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        await reader.readexactly(length)

    lateness = []
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            await ask(f"ref0-{profile.reference_ms}")
            await ask(f"agg-{profile.aggregator_ms}")
            lateness.append((time.perf_counter() - started - profile.critical_s) * 1000)
    finally:
        writer.close()
    return statistics.median(lateness)


async def run_profile(url: str, profile: Profile, figures: Figures, *, full: bool, fake_pid: int) -> None:
    print(f"\n[{profile.name}] critical path: slowest reference {profile.reference_ms} ms "
          f"+ aggregator {profile.aggregator_ms} ms = {profile.critical_s * 1000:.0f} ms")
    floor = figures[f"fake_floor_overhead_ms_{profile.name}"] = await fake_floor_ms(url, profile)
    print(f"the fake provider alone (bare socket, no client): one turn's path p50 {floor:.1f} ms over it "
          "(this machine's timer lateness, inside every figure below)")
    if full:
        for refs in (1, 4, 16):
            walls = await measure(url, refs, 1, 9, profile)
            print(row(f"1 turn, {refs} references", walls, profile, figures, f"1x{refs}"))
    for concurrent, rounds in ((1, 9), (50, 3), (200, 3)) if full else ((200, 3),):
        cpu = Cpu(fake_pid)
        walls = await measure(url, 4, concurrent, rounds, profile, cpu=cpu)
        print(row(f"{concurrent} concurrent turns, 4 refs", walls, profile, figures, f"{concurrent}x4"))
        if concurrent == 200:
            figures[f"cpu_s_per_round_200x4_{profile.name}"] = cpu.own_s
            figures[f"fake_cpu_s_per_round_200x4_{profile.name}"] = cpu.fake_s
            figures[f"gc_collections_per_round_200x4_{profile.name}"] = cpu.collections
            print(f"{'':<34} CPU per round of 200 turns: this process {cpu.own_s:.3f} s, "
                  f"fake provider {cpu.fake_s:.3f} s; garbage collections {cpu.collections:.1f}")
    if full:
        walls = await measure(url, 4, 1, 3, profile, sequential=True)
        print(row("naive sequential, 1 turn, 4 refs", walls, profile, figures, "naive_1x4"))


async def main(quick: bool, as_json: bool, loop_name: str) -> None:
    figures = Figures("bench_turns")
    figures.calibrate()
    figures["event_loop"] = loop_name
    print(f"event loop: {loop_name}")
    process, url = start_fake()
    figures["fake_event_loop"] = fake_loop(process)
    print(f"fake provider's event loop: {figures['fake_event_loop']}")
    try:
        settle_heap()
        await run_profile(url, STRESS, figures, full=True, fake_pid=process.pid)
        if not quick:
            await run_profile(url, TYPICAL, figures, full=False, fake_pid=process.pid)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures["peak_rss_mb"] = rss_mb
        print(f"\npeak RSS of the benchmark process: {rss_mb:.0f} MB")
        if not quick:
            for transport in ("aiohttp", "httpx-default"):
                cpu, wall = await transport_cpu(url, transport)
                figures[f"streams_1000_cpu_s_{transport.replace('-', '_')}"] = cpu
                print(f"1,000 concurrent streams (1 s latency), {transport:<14} CPU {cpu:6.2f} s  wall {wall:6.2f} s")
    finally:
        process.stdin.close()
        process.wait(timeout=10)
    # The names the issue tracker and README quote; --quick leaves the typical profile out (null).
    figures["ratio_p50_200x4_typical"] = None if quick else figures["ratio_p50_200x4_typical"]
    figures["alone_overhead_ms"] = figures["overhead_p50_ms_1x4_stress"]
    if as_json:
        print(figures.as_json())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 500 ms (stress) profile only")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON, last line")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=None,
                        help="event loop (default: uvloop when installed, as moa-gateway run)")
    args = parser.parse_args()
    factory, name = choose_loop(args.loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(quick=args.quick, as_json=args.json, loop_name=name))

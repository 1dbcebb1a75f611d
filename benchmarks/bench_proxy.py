"""Proxy-path benchmarks: plain HTTP throughput, HTTPS interception, added latency, memory growth."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import Stats, stats, tree_cpu, tree_rss_mib
from benchmarks.loadgen import curl_https, wrk_count, wrk_for, wrk_script
from benchmarks.report import Section, Target
from benchmarks.servers import BenchContext, ProxyProcess, Upstream, running_proxy
from benchmarks.variants import HTTPS, LATENCY, MEMORY, REFERENCE, THROUGHPUT, Variant, for_section

CONNECTIONS = 8
THROUGHPUT_TARGET = 0.90
ADDED_P50_TARGET_US = 1000.0
RSS_GROWTH_TARGET_MIB = 20.0


@dataclass
class Samples:
    """Per-variant samples of one section, in round order (so round r of A pairs with round r of B)."""

    rate: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, variant: Variant, rate: float, **extra: float) -> None:
        self.rate.setdefault(variant.name, []).append(rate)
        for key, value in extra.items():
            self.extra.setdefault(variant.name, {}).setdefault(key, []).append(value)

    def paired_ratio(self, name: str, reference: str = REFERENCE.name) -> Stats:
        return stats([a / b for a, b in zip(self.rate[name], self.rate[reference], strict=True)])

    def get(self, name: str, key: str) -> Stats | None:
        values = self.extra.get(name, {}).get(key)
        return stats(values) if values else None


def _check_tape(proxy: ProxyProcess, requests: int, samples: Samples) -> None:
    """failcore must have recorded every exchange; a fast proxy that drops evidence would be cheating."""
    if not proxy.variant.failcore:
        return
    recorded = proxy.recorded_network_events()
    dropped = proxy.dropped_markers()
    errors = proxy.internal_errors()
    if recorded < requests or dropped or errors:
        samples.notes.append(
            f"{proxy.variant.name}: tape holds {recorded} network events for {requests} completed requests, "
            f"{dropped} dropped markers, {errors} internal_error lines — this run's numbers do not reflect "
            "full recording"
        )


@dataclass(frozen=True, slots=True)
class ProxyCost:
    """What one measured run cost the proxy: CPU per wall second and per exchange, split between the
    mitmdump process and its children (failcore's DLP evidence worker), and their RSS at the end."""

    share: float
    proxy_us: float
    worker_us: float
    rss_mib: float

    def extra(self) -> dict[str, float]:
        return {
            "proxy_cpu": self.share,
            "proxy_us": self.proxy_us,
            "worker_us": self.worker_us,
            "rss_mib": self.rss_mib,
        }


def _measure_cost[T](
    proxy: ProxyProcess, run: Callable[[], T], exchanges: Callable[[T], int]
) -> tuple[T, ProxyCost]:
    own0, kids0 = tree_cpu(proxy.pid)
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    own1, kids1 = tree_cpu(proxy.pid)
    count = max(exchanges(result), 1)
    # A child that started during the run counts from zero, which is what it used.
    kids = max(kids1 - kids0, 0.0)
    cost = ProxyCost(
        share=(own1 - own0 + kids) / wall,
        proxy_us=(own1 - own0) / count * 1e6,
        worker_us=kids / count * 1e6,
        rss_mib=tree_rss_mib(proxy.pid),
    )
    return result, cost


def _throughput_rows(section: Section, samples: Samples, variants: list[Variant], unit: str) -> None:
    rows: list[list[str]] = []
    for variant in variants:
        rate = stats(samples.rate[variant.name])
        ratio = "1.00" if variant.name == REFERENCE.name else samples.paired_ratio(variant.name).fmt(2)
        proxy_cpu = samples.get(variant.name, "proxy_cpu")
        client_cpu = samples.get(variant.name, "client_cpu")
        p50 = samples.get(variant.name, "p50_us")
        proxy_us = samples.get(variant.name, "proxy_us")
        worker_us = samples.get(variant.name, "worker_us")
        rss = samples.get(variant.name, "rss_mib")
        rows.append(
            [
                f"{variant.name}",
                variant.description,
                rate.fmt(0),
                ratio,
                p50.fmt(0) if p50 else "–",
                f"{proxy_cpu.median:.0%}" if proxy_cpu else "–",
                f"{proxy_us.median:,.0f} + {worker_us.median:,.0f}" if proxy_us and worker_us else "–",
                f"{rss.median:.0f}" if rss else "–",
                f"{client_cpu.median:.0%}" if client_cpu else "–",
            ]
        )
    section.table(
        [
            "variant",
            "what",
            f"{unit}",
            "× bare (per-round)",
            "p50 µs",
            "proxy CPU",
            "CPU µs/exchange (mitmdump + worker)",
            "RSS MiB",
            "client CPU",
        ],
        rows,
    )


def _throughput_targets(section: Section, samples: Samples, variants: list[Variant], what: str) -> None:
    for variant in variants:
        if not variant.failcore:
            continue
        ratio = samples.paired_ratio(variant.name)
        section.targets.append(
            Target(
                f"{what}: {variant.name}",
                f"≥ {THROUGHPUT_TARGET:.2f}× bare",
                f"{ratio.median:.2f}× ({ratio.low:.2f}–{ratio.high:.2f})",
                ratio.median >= THROUGHPUT_TARGET,
            )
        )


def run_throughput(ctx: BenchContext, upstream: Upstream, rounds: int) -> Section:
    seconds = 3.0 if ctx.quick else 10.0
    variants = for_section(THROUGHPUT)
    hostport = f"127.0.0.1:{upstream.plain_port}"
    direct_script = wrk_script(ctx.workdir / "wrk-direct.lua", hostport, through_proxy=False)
    proxy_script = wrk_script(ctx.workdir / "wrk-proxy.lua", hostport, through_proxy=True)
    samples = Samples()
    for round_no in range(rounds):
        for variant in variants:
            print(f"  throughput round {round_no + 1}/{rounds}: {variant.name}", flush=True)
            if variant.direct:
                result = wrk_for(
                    hostport,
                    direct_script,
                    connections=CONNECTIONS,
                    seconds=seconds,
                    log=ctx.log,
                    label="wrk [plain, direct]",
                )
                samples.add(variant, result.rps, client_cpu=result.client_cpu_share, p50_us=result.p50_us)
                continue
            with running_proxy(ctx, variant, upstream) as proxy:
                proxy.settle()
                address = f"127.0.0.1:{proxy.port}"
                warm = wrk_for(
                    address,
                    proxy_script,
                    connections=CONNECTIONS,
                    seconds=1,
                    log=ctx.log,
                    label="wrk [plain, warm-up 1 s]",
                )
                proxy.settle()
                result, cost = _measure_cost(
                    proxy,
                    lambda a=address: wrk_for(
                        a,
                        proxy_script,
                        connections=CONNECTIONS,
                        seconds=seconds,
                        log=ctx.log,
                        label="wrk [plain, through proxy]",
                    ),
                    lambda r: r.requests,
                )
            _check_tape(proxy, warm.requests + result.requests, samples)
            proxy.cleanup()
            if result.errors:
                samples.notes.append(f"{variant.name} round {round_no + 1}: {result.errors} wrk errors")
            samples.add(
                variant, result.rps, client_cpu=result.client_cpu_share, p50_us=result.p50_us, **cost.extra()
            )
    section = Section("throughput", "1. Throughput: plain HTTP keep-alive, 1 KB JSON POST, 8 connections")
    section.text(
        f"wrk, 1 thread, {CONNECTIONS} connections, {seconds:g} s per run after a 1 s warm-up on a fresh "
        "proxy, each preceded by waiting for the proxy to be idle (its start-up work is not counted as "
        "the exchanges' cost); requests are absolute-URI POSTs of a 1 KB JSON body to nginx answering "
        "a 1 KB JSON. "
        "CPU is per wall second (100% = one core), mitmdump and its children (failcore's DLP evidence "
        "worker) together; CPU µs/exchange splits it between the two; RSS is both at the end of the run."
    )
    _throughput_rows(section, samples, variants, "requests/s")
    _throughput_targets(section, samples, variants, "plain HTTP throughput")
    for note in samples.notes:
        section.text(f"Note: {note}")
    return section


def run_https(ctx: BenchContext, upstream: Upstream, rounds: int) -> Section:
    requests = 1000 if ctx.quick else 4000
    variants = for_section(HTTPS)
    url = upstream.url(tls=True)
    samples = Samples()
    for round_no in range(rounds):
        for variant in variants:
            print(f"  https round {round_no + 1}/{rounds}: {variant.name}", flush=True)
            if variant.direct:
                result = curl_https(
                    ctx.workdir,
                    url,
                    requests=requests,
                    parallel=CONNECTIONS,
                    proxy=None,
                    cacert=upstream.cert,
                    log=ctx.log,
                    label="curl [https, direct]",
                )
                samples.add(
                    variant, result.rps, client_cpu=result.client_cpu_share, connections=result.connections
                )
                continue
            with running_proxy(ctx, variant, upstream) as proxy:
                proxy.settle()
                curl_https(
                    ctx.workdir,
                    url,
                    requests=200,
                    parallel=CONNECTIONS,
                    proxy=proxy.url,
                    cacert=proxy.ca_cert,
                    log=ctx.log,
                    label="curl [https, warm-up]",
                )
                proxy.settle()
                result, cost = _measure_cost(
                    proxy,
                    lambda p=proxy: curl_https(
                        ctx.workdir,
                        url,
                        requests=requests,
                        parallel=CONNECTIONS,
                        proxy=p.url,
                        cacert=p.ca_cert,
                        log=ctx.log,
                        label="curl [https, through proxy]",
                    ),
                    lambda r: r.requests - r.failures,
                )
            _check_tape(proxy, 200 + requests - result.failures, samples)
            proxy.cleanup()
            if result.failures:
                samples.notes.append(
                    f"{variant.name} round {round_no + 1}: {result.failures} failed requests"
                )
            samples.add(
                variant,
                result.rps,
                client_cpu=result.client_cpu_share,
                connections=result.connections,
                **cost.extra(),
            )
    section = Section("https", "2. Throughput: HTTPS interception (CONNECT + TLS), 8 connections")
    section.text(
        f"curl --parallel --parallel-max {CONNECTIONS} --http1.1, {requests} POSTs (1 KB JSON) per run "
        "over kept-alive CONNECT tunnels to nginx with a self-signed certificate (mitmproxy verifies it "
        "via ssl_verify_upstream_trusted_ca); 200-request warm-up per fresh proxy, "
        "idle before and after it. The direct row shows "
        "what the client can drive without a proxy, and the client CPU column shows it is not the "
        "bottleneck."
    )
    _throughput_rows(section, samples, variants, "requests/s")
    conns = {v.name: samples.get(v.name, "connections") for v in variants}
    section.text(
        "TLS connections opened per run (median): "
        + ", ".join(f"{name} {value.median:.0f}" for name, value in conns.items() if value)
    )
    _throughput_targets(section, samples, variants, "HTTPS throughput")
    for note in samples.notes:
        section.text(f"Note: {note}")
    return section


def run_latency(ctx: BenchContext, upstream: Upstream, rounds: int) -> Section:
    seconds = 2.0 if ctx.quick else 5.0
    variants = for_section(LATENCY)
    hostport = f"127.0.0.1:{upstream.plain_port}"
    direct_script = wrk_script(ctx.workdir / "wrk-direct.lua", hostport, through_proxy=False)
    proxy_script = wrk_script(ctx.workdir / "wrk-proxy.lua", hostport, through_proxy=True)
    p50: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    counts: dict[str, list[float]] = {}
    for round_no in range(rounds):
        for variant in variants:
            print(f"  latency round {round_no + 1}/{rounds}: {variant.name}", flush=True)
            if variant.direct:
                result = wrk_for(
                    hostport,
                    direct_script,
                    connections=1,
                    seconds=seconds,
                    log=ctx.log,
                    label="wrk [latency, direct]",
                )
            else:
                with running_proxy(ctx, variant, upstream) as proxy:
                    proxy.settle()
                    address = f"127.0.0.1:{proxy.port}"
                    wrk_for(
                        address,
                        proxy_script,
                        connections=1,
                        seconds=1,
                        log=ctx.log,
                        label="wrk [latency, warm-up 1 s]",
                    )
                    proxy.settle()
                    result = wrk_for(
                        address,
                        proxy_script,
                        connections=1,
                        seconds=seconds,
                        log=ctx.log,
                        label="wrk [latency, 1 connection]",
                    )
                proxy.cleanup()
            p50.setdefault(variant.name, []).append(result.p50_us)
            p99.setdefault(variant.name, []).append(result.p99_us)
            counts.setdefault(variant.name, []).append(result.requests)
    section = Section("latency", "3. Added latency per exchange (1 connection, sequential requests)")
    section.text(
        f"wrk -c1 for {seconds:g} s per run (sequential keep-alive POSTs, plain HTTP), after a 1 s "
        "warm-up, the proxy idle before and after it. Added = this variant's p50/p99 minus bare's, "
        "paired per round."
    )
    rows: list[list[str]] = []
    reference = REFERENCE.name
    for variant in variants:
        name = variant.name
        added50 = stats([a - b for a, b in zip(p50[name], p50[reference], strict=True)])
        added99 = stats([a - b for a, b in zip(p99[name], p99[reference], strict=True)])
        rows.append(
            [
                name,
                f"{statistics.median(counts[name]):,.0f}",
                stats(p50[name]).fmt(0),
                stats(p99[name]).fmt(0),
                added50.fmt(0),
                added99.fmt(0),
            ]
        )
        if variant.failcore:
            section.targets.append(
                Target(
                    f"added p50 latency: {name}",
                    f"≤ {ADDED_P50_TARGET_US:.0f} µs",
                    f"{added50.median:,.0f} µs",
                    added50.median <= ADDED_P50_TARGET_US,
                )
            )
    section.table(["variant", "requests/run", "p50 µs", "p99 µs", "added p50 µs", "added p99 µs"], rows)
    return section


def run_memory(ctx: BenchContext, upstream: Upstream, rounds: int) -> Section:
    stages = (1000, 5000) if ctx.quick else (1000, 10_000, 100_000)
    variants = for_section(MEMORY)
    hostport = f"127.0.0.1:{upstream.plain_port}"
    rss: dict[str, dict[int, list[float]]] = {v.name: {stage: [] for stage in stages} for v in variants}
    notes = Samples()
    scripts: dict[int, Path] = {}
    previous = 0
    for stage in stages:
        scripts[stage] = wrk_script(
            ctx.workdir / f"wrk-count-{stage}.lua", hostport, through_proxy=True, limit=stage - previous
        )
        previous = stage
    for round_no in range(rounds):
        proxies = [ProxyProcess(ctx, variant, upstream) for variant in variants]
        try:
            done = {proxy.variant.name: 0 for proxy in proxies}
            for stage in stages:
                for proxy in proxies:  # interleaved: every proxy reaches a stage before any goes further
                    print(
                        f"  memory round {round_no + 1}/{rounds}: {proxy.variant.name} → {stage:,}",
                        flush=True,
                    )
                    result = wrk_count(
                        f"127.0.0.1:{proxy.port}",
                        scripts[stage],
                        connections=CONNECTIONS,
                        log=ctx.log,
                        label="wrk [memory, stop after N responses]",
                    )
                    done[proxy.variant.name] += result.requests
                    time.sleep(1.0)  # let the tape writer drain its queue before reading RSS
                    rss[proxy.variant.name][stage].append(tree_rss_mib(proxy.pid))
        finally:
            for proxy in proxies:
                proxy.stop()
        for proxy in proxies:
            _check_tape(proxy, done[proxy.variant.name], notes)
            proxy.cleanup()
    section = Section("memory", "7. Memory: proxy RSS after N exchanges")
    section.text(
        f"Both proxies run side by side and are driven alternately to each stage (wrk, {CONNECTIONS} "
        f"connections, plain HTTP 1 KB POSTs); VmRSS from /proc/<pid>/status 1 s after each stage. "
        f"{rounds} round(s), fresh proxies per round."
    )
    rows: list[list[str]] = []
    for variant in variants:
        first, last = stages[0], stages[-1]
        growth = stats(
            [b - a for a, b in zip(rss[variant.name][first], rss[variant.name][last], strict=True)]
        )
        rows.append([variant.name] + [stats(rss[variant.name][s]).fmt(1) for s in stages] + [growth.fmt(1)])
        if variant.failcore:
            full_range = last >= 100_000
            section.targets.append(
                Target(
                    f"RSS growth {first:,}→{last:,} exchanges: {variant.name}",
                    f"< {RSS_GROWTH_TARGET_MIB:.0f} MiB over 100k",
                    f"{growth.median:.1f} MiB",
                    growth.median < RSS_GROWTH_TARGET_MIB if full_range else None,
                )
            )
    header = ["variant"] + [f"RSS MiB @ {s:,}" for s in stages] + [f"growth {stages[0]:,}→{stages[-1]:,}"]
    section.table(header, rows)
    for note in notes.notes:
        section.text(f"Note: {note}")
    return section

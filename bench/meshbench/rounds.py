"""Alternating rounds: two variants of mesh-proxy measured one after the other, round after
round, so that a slow drift of the machine (heat, another job) weighs on both alike. Used by
--metrics-cost (with vs without the request metrics) and --ab (an old vs a new build).

Each measurement starts a fresh proxy process and runs the default mode's smoke test, warm-up
and max-throughput test (with the proxy's CPU per request) and nothing else."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .bench import Bench, ThroughputFigures, ThroughputRun, machine_meta, run_mode, write_results
from .common import BenchError, log
from .procfs import peak_rss_kib
from .report import failures_section, fmt


@dataclass(frozen=True)
class Variant:
    """One side of the comparison."""

    side: str  # its key in each round of results.json: "with" / "without", "old" / "new"
    proxy: str  # the proxy started: "mesh-proxy" or "mesh-proxy-no-metrics"
    label: str  # its name in the log and in the "proxy" field of its runs
    log_stem: str  # its process logs are <log_stem>-r<round>.log
    mesh_exe: Path | None = None  # the mesh-proxy executable; None: the run's (--mesh-proxy-bin)


@dataclass
class RoundRun(ThroughputFigures):
    """One variant in one round. A failed run keeps what it measured before failing."""

    proxy: str
    round: int
    ok: bool = False
    error: str | None = None
    throughput: ThroughputRun | None = None
    peak_rss_mib: float | None = None

    def to_dict(self) -> dict:
        d: dict = {"proxy": self.proxy, "round": self.round, "ok": self.ok}
        if self.throughput is not None:
            d |= self.throughput.to_dict()
        if self.ok:
            d["peak_rss_mib"] = self.peak_rss_mib  # read last, once the run has succeeded
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass
class Round:
    """One round: a run of each variant, in order, and the round's own ratios."""

    number: int
    runs: dict[str, RoundRun] = field(default_factory=dict)  # by Variant.side
    ratios: dict[str, float | None] = field(default_factory=dict)  # filled by the mode

    def ok_run(self, side: str) -> RoundRun | None:
        r = self.runs.get(side)
        return r if r is not None and r.ok else None

    def to_dict(self) -> dict:
        return {"round": self.number} | {side: r.to_dict() for side, r in self.runs.items()} | self.ratios


def measure_round(bench: Bench, variant: Variant, rnd: int) -> RoundRun:
    """A fresh proxy process: smoke, warm-up, max throughput (exactly the default mode's)."""
    res = RoundRun(proxy=variant.label, round=rnd)
    stem = f"{variant.log_stem}-r{rnd}"
    try:
        with bench.proxy(variant.proxy, log_name=stem, mesh_exe=variant.mesh_exe) as (p, port):
            res.throughput = bench.max_throughput(variant.label, p, port)
            bench.check_running(p, variant.label, stem)
            res.peak_rss_mib = peak_rss_kib(p.pid) / 1024.0 if p else None
            res.ok = True
    except BenchError as e:
        res.error = str(e)
    return res


def run_rounds(bench: Bench, variants: list[Variant], rounds: int, into: list[Round]) -> None:
    """rounds rounds of every variant in the given order. Fills `into` as it goes: an
    interruption keeps what was measured."""
    for rnd in range(1, rounds + 1):
        rd = Round(rnd)
        into.append(rd)
        for v in variants:
            log(f"=== round {rnd}/{rounds}: {v.label} ===")
            r = measure_round(bench, v, rnd)
            if not r.ok:
                log(f"{v.label} FAILED (round {rnd}): {r.error}")
            rd.runs[v.side] = r


def run_rounds_mode(
    args: argparse.Namespace, mode: str, variants: list[Variant], n_rounds: int,
    summarize: Callable[[list[Round]], object], markdown: Callable[[list[Round], object, dict], str],
    mode_meta: Callable[[], dict], check: Callable[[Bench], None] | None = None,
) -> int:
    """A whole run of --metrics-cost or --ab: n_rounds rounds of the variants over the default
    mode's backends, then results.md and results.json with the rounds and summarize(rounds).
    check(bench) runs first, inside the guarded run; mode_meta() gives the keys of "meta" that
    follow the rounds and their order. Every run of every round must succeed."""
    rounds: list[Round] = []

    def body(bench: Bench) -> None:
        if check is not None:
            check(bench)
        bench.start_backends()
        run_rounds(bench, variants, n_rounds, rounds)

    def write(bench: Bench, stamp: str) -> bool:
        summary = summarize(rounds)
        meta = machine_meta(stamp, mode) | {"rounds": n_rounds, "order": [v.label for v in variants]} | mode_meta()
        md = markdown(rounds, summary, meta)
        write_results(bench.out, md, {"meta": meta, "summary": summary, "rounds": rounds})
        return all_complete(rounds, [v.side for v in variants])

    return run_mode(args, mode, body, lambda: any(rd.runs for rd in rounds), write)


def load_meta(args: argparse.Namespace) -> dict:
    """The keys of "meta" that say how each run of a round was loaded."""
    return {
        "requests": args.requests,
        "warmup": args.warmup,
        "duration_cap_s": args.duration,
        "slow_ms": args.slow_ms,
    }


def ok_values(rounds: list[Round], side: str, attr: str) -> list[float]:
    """attr ("req_per_s", "cpu_us_per_req") of the side's successful runs, where it has one."""
    out = []
    for rd in rounds:
        r = rd.ok_run(side)
        if r is not None and getattr(r, attr) is not None:
            out.append(getattr(r, attr))
    return out


def all_complete(rounds: list[Round], sides: list[str]) -> bool:
    return all(rd.ok_run(side) is not None for rd in rounds for side in sides)


def failed_runs(rounds: list[Round]) -> list[RoundRun]:
    return [r for rd in rounds for r in rd.runs.values() if not r.ok]


def round_failures(rounds: list[Round]) -> list[str]:
    """The failures section of both modes' reports: each failed run with its round."""
    return failures_section([(f"**{r.proxy}**, round {r.round}", [r.error]) for r in failed_runs(rounds)])


# ---- table cells of both modes' reports ----------------------------------------------------


def rps_cell(r: RoundRun | None) -> str:
    """A round's req/s cell: the figure, FAILED with the reason, or "not run"."""
    if r is None:
        return "not run"
    if not r.ok:
        return "FAILED: " + (r.error or "failed").splitlines()[0][:80].replace("|", "/")
    return f"{r.req_per_s:,.0f}"


def cpu_cell(r: RoundRun | None) -> str:
    """A run's CPU µs/req cell; empty when it did not run or failed."""
    return fmt(r.cpu_us_per_req, ".1f") if r and r.ok else ""

"""Alternating rounds: two variants of mesh-proxy measured one after the other, round after
round, so that a slow drift of the machine (heat, another job) weighs on both alike. Used by
--metrics-cost (with vs without the request metrics) and --ab (an old vs a new build).

Each measurement starts a fresh proxy process and runs the default mode's smoke test, warm-up
and max-throughput test (with the proxy's CPU per request) and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .bench import Bench, ThroughputRun
from .common import BenchError, log
from .procfs import peak_rss_kib
from .processes import tail
from .report import fmt


@dataclass(frozen=True)
class Variant:
    """One side of the comparison."""

    side: str  # its key in each round of results.json: "with" / "without", "old" / "new"
    proxy: str  # the proxy started: "mesh-proxy" or "mesh-proxy-no-metrics"
    label: str  # its name in the log and in the "proxy" field of its runs
    log_stem: str  # its process logs are <log_stem>-r<round>.log
    mesh_exe: Path | None = None  # the mesh-proxy executable; None: the run's (--mesh-proxy-bin)


@dataclass
class RoundRun:
    """One variant in one round. A failed run keeps what it measured before failing."""

    proxy: str
    round: int
    ok: bool = False
    error: str | None = None
    throughput: ThroughputRun | None = None
    peak_rss_mib: float | None = None

    @property
    def req_per_s(self) -> float | None:
        return self.throughput.req_per_s if self.throughput else None

    @property
    def cpu_us_per_req(self) -> float | None:
        return self.throughput.cpu_us_per_req if self.throughput else None

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
        p, port = bench.start_proxy(variant.proxy, log_name=stem, mesh_exe=variant.mesh_exe)
    except BenchError as e:
        res.error = str(e)
        return res
    try:
        res.throughput = bench.max_throughput(variant.label, p, port)
        if p and p.poll() is not None:
            raise BenchError(f"{variant.label} exited (code {p.returncode}) during the run\n{tail(bench.logs / f'{stem}.log')}")
        res.peak_rss_mib = peak_rss_kib(p.pid) / 1024.0 if p else None
        res.ok = True
    except BenchError as e:
        res.error = str(e)
    finally:
        if p:
            bench.procs.stop(p)
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

"""--ab OLD NEW: two mesh-proxy builds measured alternately in one run (old, new, old, new, ...),
to show whether a change made mesh-proxy slower. Each measurement is the default mode's
max-throughput test with the proxy's CPU per request, on a fresh process, with the same config,
backends and pinning as the default mode. Nothing is built: both executables are given. Writes
results.md and results.json with the per-round figures, the medians of each build and the
new/old ratios."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from ..bench import MAX_CONNS, MAX_STREAMS, Bench
from ..common import AUTHORITY, LOAD_CORE, PROXY_CORE, BenchError, log
from ..report import fmt
from ..rounds import Round, Variant, cpu_cell, load_meta, ok_values, round_failures, rps_cell, run_rounds_mode
from ..stats import median, ratio
from ..tools import tool_versions

OLD, NEW = "old", "new"


def ab_variants(old_exe: Path, new_exe: Path) -> list[Variant]:
    """Old first in every round, as asked on the command line (--ab OLD NEW)."""
    return [
        Variant(side=OLD, proxy="mesh-proxy", label=OLD, log_stem="mesh-proxy-old", mesh_exe=old_exe),
        Variant(side=NEW, proxy="mesh-proxy", label=NEW, log_stem="mesh-proxy-new", mesh_exe=new_exe),
    ]


@dataclass
class ABSummary:
    """Medians over the rounds. Each per-round ratio compares two runs measured back to back,
    so a slow drift of the machine mostly cancels out of it: the median of those ratios is the
    figure to read, the ratio of the medians a cross-check."""

    rounds_complete: int  # rounds in which both builds ran
    req_per_s_old: float | None
    req_per_s_new: float | None
    req_per_s_ratio: float | None  # median of the per-round new / old; > 1: new is faster
    req_per_s_ratio_of_medians: float | None
    cpu_us_per_req_old: float | None
    cpu_us_per_req_new: float | None
    cpu_us_per_req_ratio: float | None  # median of the per-round new / old; > 1: new costs more
    cpu_us_per_req_ratio_of_medians: float | None
    # (max - min) / median of one build's req/s over the rounds: the noise of the machine. A
    # difference between the builds smaller than this says nothing.
    req_per_s_spread_old: float | None
    req_per_s_spread_new: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def spread(vals: list[float]) -> float | None:
    """(max - min) / median; None with fewer than two values."""
    mid = median(vals)
    if len(vals) < 2 or not mid:
        return None
    return (max(vals) - min(vals)) / mid


def ab_derive(rounds: list[Round]) -> ABSummary:
    """Per-round ratios (new / old, same round) and the medians over the rounds."""
    for rd in rounds:
        old, new = rd.ok_run(OLD), rd.ok_run(NEW)
        both = old is not None and new is not None
        rd.ratios["req_per_s_ratio"] = ratio(new.req_per_s, old.req_per_s) if both else None
        rd.ratios["cpu_us_per_req_ratio"] = ratio(new.cpu_us_per_req, old.cpu_us_per_req) if both else None
    rps_old, rps_new = ok_values(rounds, OLD, "req_per_s"), ok_values(rounds, NEW, "req_per_s")
    cpu_old, cpu_new = median(ok_values(rounds, OLD, "cpu_us_per_req")), median(ok_values(rounds, NEW, "cpu_us_per_req"))
    return ABSummary(
        rounds_complete=sum(1 for rd in rounds if rd.ok_run(OLD) and rd.ok_run(NEW)),
        req_per_s_old=median(rps_old),
        req_per_s_new=median(rps_new),
        req_per_s_ratio=median([rd.ratios["req_per_s_ratio"] for rd in rounds]),
        req_per_s_ratio_of_medians=ratio(median(rps_new), median(rps_old)),
        cpu_us_per_req_old=cpu_old,
        cpu_us_per_req_new=cpu_new,
        cpu_us_per_req_ratio=median([rd.ratios["cpu_us_per_req_ratio"] for rd in rounds]),
        cpu_us_per_req_ratio_of_medians=ratio(cpu_new, cpu_old),
        req_per_s_spread_old=spread(rps_old),
        req_per_s_spread_new=spread(rps_new),
    )


def percent_change(r: float | None) -> str:
    """A new/old ratio as a signed change: 0.987 -> "−1.3 %"."""
    if r is None:
        return "n/a"
    pct = (r - 1) * 100
    return f"{'+' if pct >= 0 else '−'}{abs(pct):.1f} %"


def binary_info(path: Path) -> dict:
    """What identifies a build in the results: its path, size, modification time and digest."""
    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "modified": dt.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds"),
        "sha256": digest.hexdigest(),
    }


def ab_markdown(rounds: list[Round], summary: ABSummary, meta: dict) -> str:
    bins = meta["binaries"]
    sm = summary

    def ratio_cell(v: float | None) -> str:
        return fmt(v, ".3f")

    lines = [
        f"# mesh-proxy A/B comparison {meta['timestamp']}",
        "",
        f"{meta['cpu']} ({meta['cores']} cores), proxy pinned to core {PROXY_CORE} (one worker thread), backends + h2load "
        f"on core {LOAD_CORE}. Max throughput only: {meta['requests']} requests, h2load -c {MAX_CONNS} -m {MAX_STREAMS}, after a "
        f"smoke test and a {meta['warmup']}-request warm-up, each run in a fresh proxy process with the default mode's "
        f"config. Two builds, alternating: {meta['rounds']} rounds, each runs old, then new. Ratio = new / old, same round.",
        "",
    ]
    for side in (OLD, NEW):
        b = bins[side]
        lines.append(f"- **{side}**: `{b['path']}` (sha256 {b['sha256'][:12]}…, {b['size']:,} bytes, modified {b['modified']})")
    if bins[OLD]["sha256"] == bins[NEW]["sha256"]:
        lines.append("- old and new are the **same file contents**: this run measures only the noise of the machine.")
    lines += [
        "",
        "| round | req/s old | req/s new | req/s new/old | CPU µs/req old | CPU µs/req new | CPU new/old |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rd in rounds:
        old, new = rd.runs.get(OLD), rd.runs.get(NEW)
        lines.append(
            f"| {rd.number} | {rps_cell(old)} | {rps_cell(new)} | {ratio_cell(rd.ratios.get('req_per_s_ratio'))} | "
            f"{cpu_cell(old)} | {cpu_cell(new)} | {ratio_cell(rd.ratios.get('cpu_us_per_req_ratio'))} |"
        )
    lines.append(
        f"| **median** | **{fmt(sm.req_per_s_old, ',.0f')}** | **{fmt(sm.req_per_s_new, ',.0f')}** | "
        f"**{ratio_cell(sm.req_per_s_ratio)}** | **{fmt(sm.cpu_us_per_req_old, '.1f')}** | "
        f"**{fmt(sm.cpu_us_per_req_new, '.1f')}** | **{ratio_cell(sm.cpu_us_per_req_ratio)}** |"
    )
    lines += [
        "",
        f"- **Max req/s, new vs old: {percent_change(sm.req_per_s_ratio)}** (median of the per-round ratios "
        f"{ratio_cell(sm.req_per_s_ratio)}; ratio of the medians {ratio_cell(sm.req_per_s_ratio_of_medians)}). "
        "Higher is better.",
        f"- **CPU µs/req, new vs old: {percent_change(sm.cpu_us_per_req_ratio)}** (median of the per-round ratios "
        f"{ratio_cell(sm.cpu_us_per_req_ratio)}; ratio of the medians {ratio_cell(sm.cpu_us_per_req_ratio_of_medians)}). "
        "Lower is better.",
        f"- Noise: over the rounds, the req/s of one build varied by {fmt(sm.req_per_s_spread_old, '.1%')} (old) and "
        f"{fmt(sm.req_per_s_spread_new, '.1%')} (new), max − min over the median. A difference between the builds "
        "smaller than this is within the noise of the machine.",
        f"- {sm.rounds_complete} of {meta['rounds']} rounds complete.",
    ]
    lines += round_failures(rounds)
    lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace, skip: list[str]) -> int:
    old_exe, new_exe = args.ab
    binaries: dict[str, dict] = {}

    def check(bench: Bench) -> None:
        # --ab never builds (the work tree may hold neither build): the backend must exist.
        backend = bench.bin_dir / "mesh-bench-backend"
        if not backend.exists():
            raise BenchError(f"{backend} not found: build it first (cargo build --release -p mesh-bench); --ab builds nothing")
        binaries[OLD], binaries[NEW] = binary_info(old_exe), binary_info(new_exe)
        if binaries[OLD]["sha256"] == binaries[NEW]["sha256"]:
            log("note: OLD and NEW have the same contents; the run measures the noise of the machine")

    return run_rounds_mode(
        args, "ab", ab_variants(old_exe, new_exe), args.rounds, ab_derive, ab_markdown,
        lambda: {"binaries": binaries} | load_meta(args) | {"authority": AUTHORITY, "tools": tool_versions()},
        check,
    )

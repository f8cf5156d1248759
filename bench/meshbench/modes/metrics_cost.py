"""--metrics-cost: what mesh-proxy's request metrics cost in throughput. The same binary and
config with the request-metrics layer (default) and without it (`[metrics] requests = false`),
in alternating rounds of the max-throughput test. Writes results.md and results.json."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from ..bench import MAX_CONNS, MAX_STREAMS
from ..common import AUTHORITY, LOAD_CORE, NO_METRICS, NO_METRICS_TOML, PROXY_CORE, label
from ..report import fmt
from ..rounds import Round, Variant, cpu_cell, load_meta, ok_values, round_failures, rps_cell, run_rounds_mode
from ..stats import median
from ..tools import tool_versions

METRICS_COST_TARGET = 0.95  # acceptance: req/s with metrics >= 0.95 x req/s without, same run
# Run in this order within each round.
MC_VARIANTS = [
    Variant(side="with", proxy="mesh-proxy", label=label("mesh-proxy"), log_stem="mesh-proxy"),
    Variant(side="without", proxy=NO_METRICS, label=label(NO_METRICS), log_stem=NO_METRICS),
]


@dataclass
class MetricsCostSummary:
    rounds_complete: int
    req_per_s_with: float | None  # medians over the rounds
    req_per_s_without: float | None
    ratio: float | None  # median of the per-round ratios (with / without)
    cpu_us_per_req_with: float | None
    cpu_us_per_req_without: float | None
    target: float
    ratio_of_medians: float | None
    meets_target: bool | None  # None: no complete round

    def to_dict(self) -> dict:
        return asdict(self)


def metrics_cost_derive(rounds: list[Round]) -> MetricsCostSummary:
    """Per-round ratio (with / without, same round) and the medians over the rounds."""
    for rd in rounds:
        w, wo = rd.ok_run("with"), rd.ok_run("without")
        rd.ratios["ratio"] = w.req_per_s / wo.req_per_s if w and wo and wo.req_per_s > 0 else None
    per_round = [rd.ratios["ratio"] for rd in rounds if rd.ratios["ratio"] is not None]
    with_rps, without_rps = median(ok_values(rounds, "with", "req_per_s")), median(ok_values(rounds, "without", "req_per_s"))
    mid = median(per_round)
    return MetricsCostSummary(
        rounds_complete=len(per_round),
        req_per_s_with=with_rps,
        req_per_s_without=without_rps,
        ratio=mid,
        cpu_us_per_req_with=median(ok_values(rounds, "with", "cpu_us_per_req")),
        cpu_us_per_req_without=median(ok_values(rounds, "without", "cpu_us_per_req")),
        target=METRICS_COST_TARGET,
        ratio_of_medians=with_rps / without_rps if with_rps is not None and without_rps else None,
        meets_target=mid >= METRICS_COST_TARGET if mid is not None else None,
    )


def metrics_cost_markdown(rounds: list[Round], summary: MetricsCostSummary, meta: dict) -> str:
    lines = [
        f"# mesh-proxy request-metrics cost {meta['timestamp']}",
        "",
        f"{meta['cpu']} ({meta['cores']} cores), proxy pinned to core {PROXY_CORE} (one worker thread), backends + h2load "
        f"on core {LOAD_CORE}. Max throughput only: {meta['requests']} requests, h2load -c {MAX_CONNS} -m {MAX_STREAMS}, after a smoke test "
        f"and a {meta['warmup']}-request warm-up, each run in a fresh proxy process. The same mesh-proxy binary and "
        "config, with the request-metrics layer (default) and without it (`[metrics] requests = false`), alternating: "
        f"{meta['rounds']} rounds, each runs with metrics, then without. Ratio = req/s with / req/s without, same round.",
        "",
        "| round | req/s with metrics | req/s without | ratio | CPU µs/req with | CPU µs/req without |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for rd in rounds:
        w, wo = rd.runs.get("with"), rd.runs.get("without")
        lines.append(
            f"| {rd.number} | {rps_cell(w)} | {rps_cell(wo)} | {fmt(rd.ratios.get('ratio'), '.3f')} | "
            f"{cpu_cell(w)} | {cpu_cell(wo)} |"
        )
    sm = summary
    lines.append(
        f"| **median** | **{fmt(sm.req_per_s_with, ',.0f')}** | **{fmt(sm.req_per_s_without, ',.0f')}** | "
        f"**{fmt(sm.ratio, '.3f')}** | **{fmt(sm.cpu_us_per_req_with, '.1f')}** | **{fmt(sm.cpu_us_per_req_without, '.1f')}** |"
    )
    verdict = {True: "**yes**", False: "**no**", None: "n/a (no complete round)"}[sm.meets_target]
    lines += [
        "",
        f"Acceptance, median ratio ≥ {METRICS_COST_TARGET:g}: {verdict} (median of the per-round ratios "
        f"{fmt(sm.ratio, '.3f')}; ratio of the medians {fmt(sm.ratio_of_medians, '.3f')}; "
        f"{sm.rounds_complete} of {meta['rounds']} rounds complete).",
    ]
    lines += round_failures(rounds)
    lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace, skip: list[str]) -> int:
    return run_rounds_mode(
        args, "metrics-cost", MC_VARIANTS, args.metrics_cost, metrics_cost_derive, metrics_cost_markdown,
        lambda: load_meta(args) | {
            "no_metrics_config": f"mesh-proxy's config plus {NO_METRICS_TOML!r}",
            "authority": AUTHORITY,
            "tools": tool_versions(),
        },
    )

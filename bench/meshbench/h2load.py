"""h2load, the load generator: running it pinned to the load core, parsing its summary, and
reading its per-request log (`--log-file`).

The summary parser understands the end of h2load's report (nghttp2 1.5x):

    finished in 2.34s, 85470.09 req/s, 3.50MB/s
    requests: 200000 total, 200000 started, 200000 done, 200000 succeeded, 0 failed, 0 errored, 0 timeout
    status codes: 200000 2xx, 0 3xx, 0 4xx, 0 5xx

and, over TLS, the session its first connection negotiated, printed before the progress lines:

    TLS Protocol: TLSv1.3
    Cipher: TLS_AES_128_GCM_SHA256
    Server Temp Key: X25519 253 bits
    Application protocol: h2

The per-request log has one line per request: start time (µs since the epoch), HTTP status
(-1 when no response came: stream reset, connection lost) and duration (µs), tab-separated."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import AUTHORITY, LOAD_CORE, BenchError

DURATION_RE = re.compile(r"finished in ([\d.]+)(us|ms|s),")
REQS_RE = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
STATUS_RE = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
UNIT_SECONDS = {"us": 1e6, "ms": 1e3, "s": 1.0}
TLS_PROTOCOL_RE = re.compile(r"^TLS Protocol: (\S+)", re.M)
TLS_CIPHER_RE = re.compile(r"^Cipher: (\S+)", re.M)
TLS_KEY_RE = re.compile(r"^Server Temp Key: (.+?)\s*$", re.M)
ALPN_RE = re.compile(r"^Application protocol: (\S+)", re.M)
# Over TLS (--ingress), every h2load run offers the same single TLS 1.3 suite, so that the
# servers' own preferences (AES-128 or AES-256) do not differ in what they encrypt with.
TLS13_SUITE = "TLS_AES_128_GCM_SHA256"


class H2loadOutputError(ValueError):
    """h2load's output lacks the summary lines (it crashed, or printed only an error)."""


@dataclass
class TlsSession:
    """What h2load's first TLS connection negotiated (over h2c, h2load prints none of it)."""

    protocol: str  # "TLSv1.3"
    cipher: str | None
    key_exchange: str | None  # "X25519 253 bits"
    alpn: str | None  # "h2", "http/1.1"


def parse_tls_session(text: str) -> TlsSession | None:
    """The TLS lines of h2load's output, or None when it has no "TLS Protocol:" line (h2c)."""
    m = TLS_PROTOCOL_RE.search(text)
    if not m:
        return None

    def first(regex: re.Pattern) -> str | None:
        found = regex.search(text)
        return found.group(1) if found else None

    return TlsSession(protocol=m.group(1), cipher=first(TLS_CIPHER_RE), key_exchange=first(TLS_KEY_RE),
                      alpn=first(ALPN_RE))


@dataclass
class H2loadResult:
    """The summary of one h2load run. req_per_s counts 2xx responses only: a proxy that answers
    fast with errors gets no credit for it. tls: the session of a run over TLS, None over h2c."""

    seconds: float
    total: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    ok_2xx: int
    req_per_s: float
    tls: TlsSession | None = None

    @property
    def all_2xx(self) -> bool:
        return self.ok_2xx == self.total

    def to_dict(self) -> dict:
        """The keys results.json has always had; "tls" after them, only for a run over TLS."""
        d = asdict(self)
        if d["tls"] is None:
            del d["tls"]
        return d


@dataclass
class StatusCounts:
    ok_2xx: int
    c3xx: int
    c4xx: int
    c5xx: int


def parse_status_counts(text: str) -> StatusCounts | None:
    """The "status codes:" line of h2load's output, or None when it has none."""
    m = STATUS_RE.search(text)
    return StatusCounts(*(int(x) for x in m.groups())) if m else None


def parse_output(text: str) -> H2loadResult:
    """Parses h2load's stdout (+ stderr). Raises H2loadOutputError, naming the missing lines,
    when the summary is not there."""
    m_dur, m_req = DURATION_RE.search(text), REQS_RE.search(text)
    status = parse_status_counts(text)
    missing = [what for what, m in (("finished in", m_dur), ("requests:", m_req), ("status codes:", status)) if not m]
    if missing:
        raise H2loadOutputError(f"h2load output has no {', '.join(repr(x) for x in missing)} line")
    secs = float(m_dur.group(1)) / UNIT_SECONDS[m_dur.group(2)]
    total, _started, done, succeeded, failed, errored, timeouts = map(int, m_req.groups())
    return H2loadResult(
        seconds=secs,
        total=total,
        done=done,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeouts,
        ok_2xx=status.ok_2xx,
        req_per_s=status.ok_2xx / secs if secs > 0 else 0.0,
        tls=parse_tls_session(text),
    )


def target(port: int, server_name: str | None = None) -> tuple[list[str], str]:
    """h2load's options that say where its requests go, and its URI. Without server_name: h2c
    (prior knowledge) to http://127.0.0.1:port/ with `:authority: bench.local:80`. With one:
    TLS to https://<server_name>:port/, connected to 127.0.0.1:port (--connect-to), so that the
    SNI and the :authority carry the name; ALPN offers h2 then http/1.1, and the one TLS 1.3
    suite TLS13_SUITE. h2load keeps no TLS session between connections: no resumption."""
    if server_name is None:
        return ["-H", f":authority: {AUTHORITY}"], f"http://127.0.0.1:{port}/"
    opts = ["--connect-to", f"127.0.0.1:{port}", "--npn-list", "h2,http/1.1", "--tls13-ciphers", TLS13_SUITE]
    return opts, f"https://{server_name}:{port}/"


def run(port: int, extra: list[str], timeout: float, log_file: Path | None = None,
        server_name: str | None = None) -> H2loadResult:
    """h2load on the load core against http://127.0.0.1:port/ with `:authority: bench.local:80`,
    or, with server_name, over TLS (see target). extra: the load options (-c, -m, -n or -D,
    --rps). Raises BenchError when it fails, times out or prints no summary."""
    opts, uri = target(port, server_name)
    argv = ["taskset", "-c", LOAD_CORE, "h2load"] + opts + extra
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    argv.append(uri)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load did not finish within {timeout:.0f}s: {' '.join(argv)}") from None
    out = r.stdout + r.stderr
    failure = BenchError(f"h2load failed (rc {r.returncode}): {' '.join(argv)}\n{out[-1500:]}")
    if r.returncode != 0:
        raise failure
    try:
        return parse_output(out)
    except H2loadOutputError:
        raise failure from None


@dataclass
class ProbeResult:
    """A few requests that are allowed to fail (the mTLS checks): what came back."""

    ok_2xx: int
    c4xx: int
    c5xx: int
    rc: int | None
    out: str

    def to_dict(self) -> dict:
        return {"ok_2xx": self.ok_2xx, "4xx": self.c4xx, "5xx": self.c5xx, "rc": self.rc, "out": self.out}


def probe(url: str, n: int = 4, timeout: float = 30.0) -> ProbeResult:
    """n requests over one connection to url (http:// or https://): how many got 2xx / 4xx / 5xx."""
    argv = ["taskset", "-c", LOAD_CORE, "h2load", "-H", f":authority: {AUTHORITY}", "-c", "1", "-n", str(n), url]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        return ProbeResult(0, 0, 0, None, f"h2load did not finish within {timeout:.0f}s")
    out = r.stdout + r.stderr
    counts = parse_status_counts(out) or StatusCounts(0, 0, 0, 0)
    return ProbeResult(counts.ok_2xx, counts.c4xx, counts.c5xx, r.returncode, out[-800:])


# ---- the per-request log (--log-file) --------------------------------------------------------


@dataclass(frozen=True)
class LoggedRequest:
    start_us: int  # since the epoch
    status: int  # -1: no response
    duration_us: int

    @property
    def is_2xx(self) -> bool:
        return is_2xx(self.status)

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us


def is_2xx(status: int) -> bool:
    return 200 <= status < 300


def parse_request_log(text: str) -> list[LoggedRequest]:
    """The requests of an h2load --log-file, in file order. Lines that are not three integers
    (a partial last line) are skipped."""
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        try:
            rows.append(LoggedRequest(int(parts[0]), int(parts[1]), int(parts[2])))
        except ValueError:
            continue
    return rows


def read_request_log(path: Path) -> list[LoggedRequest]:
    return parse_request_log(path.read_text())


def latencies(rows: list[LoggedRequest]) -> tuple[list[int], int]:
    """The durations (µs, ascending) of the 2xx requests, and how many requests were not 2xx."""
    durs = sorted(r.duration_us for r in rows if r.is_2xx)
    return durs, len(rows) - len(durs)


def read_latencies(path: Path) -> tuple[list[int], int]:
    """Per-request durations (µs) of 2xx responses from an h2load --log-file, and the non-2xx count."""
    return latencies(read_request_log(path))

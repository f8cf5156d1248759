"""Captured-style output of the external tools and of /proc, as the tests feed it to the parsers."""

# h2load (nghttp2 1.52) after a clean max-throughput run.
H2LOAD_OK = """starting benchmark...
spawning thread #0: 16 total client(s). 200000 total requests
Application protocol: h2c
progress: 10% done
progress: 20% done
progress: 30% done
progress: 40% done
progress: 50% done
progress: 60% done
progress: 70% done
progress: 80% done
progress: 90% done
progress: 100% done

finished in 2.50s, 80000.00 req/s, 3.28MB/s
requests: 200000 total, 200000 started, 200000 done, 200000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 200000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 8.20MB (8600000) total, 3.20MB (3360000) headers (space savings 90.00%), 600.00KB (600000) data
                     min         max         mean         sd        +/- sd
time for request:      102us     12.34ms      5.67ms      1.23ms    70.00%
time for connect:      123us       456us       234us        67us    62.50%
time to 1st byte:     1.23ms      2.34ms      1.78ms       234us    56.25%
req/s           :    5000.12     5100.34     5050.23       30.12    68.75%
"""

# A short run whose duration h2load prints in milliseconds; a quarter of the answers are 503.
H2LOAD_FAILED_REQUESTS = """starting benchmark...
spawning thread #0: 4 total client(s). 3000 total requests
Application protocol: h2c
progress: 100% done

finished in 845.50ms, 3548.19 req/s, 120.34KB/s
requests: 3000 total, 3000 started, 3000 done, 2250 succeeded, 750 failed, 0 errored, 0 timeout
status codes: 2250 2xx, 0 3xx, 0 4xx, 750 5xx
traffic: 101.75KB (104192) total, 35.16KB (36000) headers (space savings 91.20%), 17.58KB (18000) data
                     min         max         mean         sd        +/- sd
time for request:      210us     20.94ms      8.12ms      9.20ms    60.00%
"""

# Nothing listens on the port: every request errored, in microseconds.
H2LOAD_CONNECTION_REFUSED = """starting benchmark...
spawning thread #0: 1 total client(s). 30 total requests
Application protocol: h2c
client could not connect to host
progress: 100% done

finished in 312us, 0.00 req/s, 0B/s
requests: 30 total, 0 started, 0 done, 0 succeeded, 30 failed, 30 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
"""

# A bad option: h2load prints its usage and no summary.
H2LOAD_GARBAGE = """h2load: unrecognized option '--bogus'
Usage: h2load [OPTIONS]... [URI]...
benchmarking tool for HTTP/2 server
"""

# The no-certificate probe against nginx: the handshake completes, every request gets a 400.
H2LOAD_PROBE_4XX = """starting benchmark...
spawning thread #0: 1 total client(s). 4 total requests
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
progress: 100% done

finished in 4.21ms, 950.12 req/s, 228.03KB/s
requests: 4 total, 4 started, 4 done, 0 succeeded, 4 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 4 4xx, 0 5xx
"""

# h2load --log-file: start (µs since the epoch), status, duration (µs); -1 = no response.
H2LOAD_REQUEST_LOG = (
    "1733500000000100\t200\t950\n"
    "1733500000000200\t200\t1200\n"
    "1733500000000300\t503\t300\n"
    "1733500000000400\t-1\t5000\n"
    "1733500000000500\t200\t800\n"
    "\n"
    "1733500000000600\t200"  # a line cut short
)

# /proc/PID/stat of a process whose name holds a space and parentheses.
PROC_STAT = (
    "4242 (nginx: (worker) x) S 4200 4200 4200 0 -1 4194624 1234 0 0 0 "
    "150 75 0 0 20 0 1 0 123456 12345678 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0 0 0 0\n"
)

PROC_STAT_CPUS = """cpu  4705 150 1120 16250 520 0 30 0 0 0
cpu0 2000 100 600 8000 200 0 20 10 0 0
cpu1 2705 50 520 8250 320 0 10 0 0 0
intr 1462898 0 0 0
ctxt 2930131
btime 1733500000
processes 27182
procs_running 2
"""

PROC_STATUS = """Name:\tmesh-proxy
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
PPid:\t4200
VmPeak:\t  120000 kB
VmSize:\t  118000 kB
VmHWM:\t   20480 kB
VmRSS:\t   18000 kB
Threads:\t2
"""

# /proc/net/tcp: two ESTABLISHED (01) connections to 127.0.0.1:8443 (0x20FB), one in TIME_WAIT
# (06), and one ESTABLISHED to another port.
PROC_NET_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A1B2 0100007F:20FB 01 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 20 4 30 10 -1
   1: 0100007F:A1B3 0100007F:20FB 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 20 4 30 10 -1
   2: 0100007F:A1B4 0100007F:20FB 06 00000000:00000000 03:00001000 00000000     0        0 0 3 0
   3: 0100007F:A1B5 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4 30 10 -1
"""

PROC_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
"""

PROC_SOCKSTAT = """sockets: used 310
TCP: inuse 12 orphan 0 tw 23456 alloc 20 mem 3
UDP: inuse 2 mem 1
"""

# mesh-bench-handshake prints its report as one JSON line, after any warnings.
HANDSHAKE_REPORT = (
    "warning: something the tool wanted to say\n"
    '{"alpn_h2":9875,"client_certificate":true,"concurrency":16,"connect":"127.0.0.1:8443",'
    '"cpu_seconds":4.9,"cpu_util":0.98,"errors":{"tls: CertificateRequired":3,"connect: refused":1},'
    '"failures":4,"handshakes":9875,"hello_retries":0,"per_second":1975.0,"seconds":5.0,'
    '"server_chain_full_verifications":1,"server_name":"server.bench.serviceaccount.identity.cluster.local",'
    '"verify_cache":true}\n'
)

# openssl s_client -tls1_2 against a TLS 1.3-only server, and against one that accepts 1.2.
S_CLIENT_REFUSED = """CONNECTED(00000003)
80AB4C2A717F0000:error:0A00042E:SSL routines:ssl3_read_bytes:tlsv1 alert protocol version:../ssl/record/rec_layer_s3.c:1584:SSL alert number 70
---
no peer certificate available
---
No client certificate CA names sent
---
SSL handshake has read 7 bytes and written 229 bytes
Verification: OK
---
New, (NONE), Cipher is (NONE)
Secure Renegotiation IS NOT supported
"""

S_CLIENT_TLS12 = """CONNECTED(00000003)
depth=2 O = mesh-bench, CN = mesh-bench root CA
verify return:1
---
SSL handshake has read 1530 bytes and written 960 bytes
Verification: OK
---
New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256
Server public key is 256 bit
"""

# h2load over TLS (--ingress): the session lines come before the progress lines.
H2LOAD_TLS_OK = H2LOAD_OK.replace(
    "Application protocol: h2c\n",
    "TLS Protocol: TLSv1.3\nCipher: TLS_AES_128_GCM_SHA256\nServer Temp Key: X25519 253 bits\nApplication protocol: h2\n",
)

# curl -sS --http2 -D - -w '\n%{http_code} %{http_version}' through an edge: the headers (CRLF),
# the backend's body, then the -w line.
CURL_H2_OK = (
    "HTTP/2 200 \r\n"
    "content-type: text/plain\r\n"
    "x-backend: b2\r\n"
    "content-length: 3\r\n"
    "\r\n"
    "ok\n"
    "\n200 2"
)

# curl --http2 of the backend's /__headers through an edge that did its work.
CURL_EDGE_HEADERS = (
    "HTTP/2 200 \r\n"
    "content-type: text/plain\r\n"
    "x-request-id: 4f1c\r\n"
    "\r\n"
    "user-agent: curl/7.88.1\n"
    "accept: */*\n"
    "x-forwarded-for: 127.0.0.1\n"
    "x-forwarded-proto: https\n"
    "x-forwarded-host: edge.bench.test:8443\n"
    "forwarded: for=127.0.0.1;proto=https;host=edge.bench.test\n"
    "x-request-id: 4f1c\n"
    "\n200 2"
)

# curl --http1.1 when the edge answered 502 without reaching a backend.
CURL_HTTP1_502 = (
    "HTTP/1.1 502 Bad Gateway\r\n"
    "content-length: 0\r\n"
    "\r\n"
    "\n502 1.1"
)

# No response at all (the certificate did not verify, or nothing listened): curl still prints -w.
CURL_NO_RESPONSE = "\n000 0"

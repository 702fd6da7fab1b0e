#!/usr/bin/env python3
"""TLS connection-setup benchmark for the https rows of the shared harness.

The shared harness (../shared/bench/run_peers.py) measures keep-alive
traffic only: wrk opens its connections once, so a TLS handshake is paid 50
times per 10 s run.  This script measures what a client that connects anew
costs, against the same targets, with the same processes, pinning and
certificate handling, by importing the harness and reusing its code (targets
file, --add rows, config templates, upstream nginx, start/stop by PID,
CPU/RSS accounting, the "other processes used the CPU" repeat rule):

  full     K parallel `openssl s_time -connect 127.0.0.1:PORT -new -time D`
           (every connection a full TLS handshake, no session resumption, no
           HTTP request; the client closes once the handshake is done).
           Figure: completed handshakes per second, summed over the K clients.
  close    `wrk -t1 -cC -dD --latency -H "Connection: close" .../small`: one
           request per connection.  wrk keeps the TLS session of the previous
           connection and offers it again, so these are *resumed* handshakes
           where the server allows resumption (the `resumes` column says
           whether it does), plus an HTTP request through the proxy.
           Figure: req/s = connections/s, p50/p99, errors.

The proxy is pinned to core 1; s_time/wrk, the upstream nginx and this script
to core 0 (../shared/bench/METHOD.md).  Repetitions are interleaved across
targets; the median is reported, with the ratio to nginx-tls of the same run.

    bench/handshakes.py --targets nginx-tls,twisted-tls --add 'name=revproxy-tls ...' [--quick]

bench/run.sh --tls runs it after the harness with the right --add row; see
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(
    os.environ.get("BENCH_SHARED", HERE.parent.parent / "shared" / "bench")
).resolve()
sys.path.insert(0, str(SHARED))
import run_peers as rp  # noqa: E402  (the shared harness, used as a library)

log = rp.log


def probe_resumption(t: rp.Target) -> dict:
    """Connect, GET /small (so a TLS 1.3 ticket arrives), reconnect offering
    that session: does the server resume it?"""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = {}
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=10))
    out["tls"] = f"{s.version()} {s.cipher()[0]}"
    st, *_ = rp.request(t, "GET", "/small", s=s, buf=bytearray())
    sess = s.session
    s.close()
    s2 = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", t.port), timeout=10), session=sess
    )
    st2, *_ = rp.request(t, "GET", "/small", s=s2, buf=bytearray())
    out["resumes"] = bool(s2.session_reused)
    out["status"] = [st, st2]
    s2.close()
    return out


def _run_clients(argvs: list[list[str]], timeout: float) -> list[dict]:
    """Start every client at once; return stdout/stderr/rc and own wall time of each."""
    res: list[dict] = [{} for _ in argvs]

    def one(i: int, argv: list[str]) -> None:
        t0 = time.time()
        p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        res[i] = {"out": out, "err": err, "rc": p.returncode, "wall": time.time() - t0}

    threads = [threading.Thread(target=one, args=(i, a)) for i, a in enumerate(argvs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return res


def parse_s_time(r: dict) -> dict:
    m = re.search(r"(\d+) connections in [\d.]+s;", r["out"])
    n = int(m.group(1)) if m else 0
    # s_time prints one character per connection: 'r' = session reused
    reused = sum(
        ln.count("r") for ln in r["out"].splitlines() if re.fullmatch(r"[rt3*]+", ln)
    )
    failed = r["rc"] != 0 or "ERROR" in r["out"] + r["err"] or not m
    return {
        "n": n,
        "wall": r["wall"],
        "reused": reused,
        "failed": failed,
        "tail": "" if not failed else (r["out"][-200:] + r["err"][-300:]),
    }


def measure(t: rp.Target, mode: str, duration: int, clients: int, conc: int) -> dict:
    pre_busy, waited = rp.wait_quiet()
    ppids = t.proc.tree() if t.proc else []
    upids = rp.UPSTREAM_PROC.tree() if rp.UPSTREAM_PROC else []
    ours = set(ppids) | set(upids) | {os.getpid()}
    rss0, _ = rp.rss_kib(ppids)
    all0 = rp.userland_jiffies()
    c0, pj0 = rp.core_jiffies(), rp.tree_jiffies(ppids)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.time()
    pin = ["taskset", "-c", rp.LOAD_CORE]
    if mode == "full":
        argv = [
            *pin,
            "openssl",
            "s_time",
            "-connect",
            f"127.0.0.1:{t.port}",
            "-new",
            "-time",
            str(duration),
        ]
        runs = _run_clients([argv] * clients, duration + 60)
    else:
        argv = [
            *pin,
            "wrk",
            "-t1",
            f"-c{conc}",
            f"-d{duration}s",
            "--latency",
            "-H",
            "Connection: close",
            t.url("/small"),
        ]
        runs = _run_clients([argv], duration + 60)
    wall = time.time() - w0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c1, pj1 = rp.core_jiffies(), rp.tree_jiffies(ppids)
    all1 = rp.userland_jiffies()
    rss1, hwm1 = rp.rss_kib(t.proc.tree() if t.proc else [])
    hz = os.sysconf("SC_CLK_TCK")
    res: dict = {"target": t.name, "mode": mode, "cmd": " ".join(argv)}
    if mode == "full":
        parts = [parse_s_time(r) for r in runs]
        res["clients"] = clients
        res["handshakes"] = sum(p["n"] for p in parts)
        res["rate"] = sum(p["n"] / p["wall"] for p in parts if p["wall"] > 0)
        res["reused"] = sum(p["reused"] for p in parts)
        res["failed_clients"] = sum(p["failed"] for p in parts)
        res["errors"] = [p["tail"] for p in parts if p["failed"]][:3]
    else:
        r = runs[0]
        w = rp.parse_wrk(r["out"])
        res.update(w)
        res["conc"] = conc
        res["rate"] = w["rps"]
        res["wrk_rc"] = r["rc"]
        if r["rc"] != 0 or not w["requests"]:
            res["wrk_stderr"] = (r["err"] or r["out"])[-400:]
    res["proxy_cpu_pct"] = round(100.0 * (pj1 - pj0) / hz / wall, 1)
    res["client_cpu_pct"] = round(
        100.0 * ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall,
        1,
    )
    res["core_busy_pct"] = rp.busy_pct(c0, c1)
    res["foreign_cpu_pct"] = round(
        100.0 * rp.foreign_jiffies(all0, all1, ours) / hz / wall, 1
    )
    res["pre_busy_pct"], res["waited_quiet_s"] = pre_busy, waited
    res["rss_before_kib"], res["rss_after_kib"], res["hwm_kib"] = rss0, rss1, hwm1
    return res


def log_problems(t: rp.Target) -> dict:
    """Count worrying lines in the proxy's own output (tracebacks, unhandled errors)."""
    if not t.proc:
        return {}
    text = t.proc.logfile.read_text(errors="replace")
    pats = {
        "traceback": r"Traceback",
        "unhandled": r"Unhandled",
        "error": r"\b[Ee]rror\b",
        "timeout": r"[Tt]imed? ?out",
    }
    return {k: len(re.findall(p, text)) for k, p in pats.items()}


def summarise(targets: list[rp.Target], raw: list[dict], meta: dict) -> str:
    def med(rows, k):
        v = [r[k] for r in rows if r.get(k) is not None]
        return statistics.median(v) if v else None

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    by: dict = {}
    for r in raw:
        r["cpu_ms_per_conn"] = (
            (10.0 * r["proxy_cpu_pct"] / r["rate"]) if r.get("rate") else None
        )
        r["core0_pct"] = r["core_busy_pct"].get("cpu0")
        by.setdefault((r["target"], r["mode"]), []).append(r)

    def ratio(t, mode, k):
        a, b = (
            med(by.get((t.name, mode), []), k),
            med(by.get((t.baseline, mode), []), k),
        )
        return a / b if a is not None and b else None

    def name(t):
        return t.name if t.status == "ok" else f"{t.name} ({t.status[:60]})"

    lines = [
        f"Median of {meta['reps']} runs of {meta['duration_s']} s, interleaved across targets. "
        "x = ratio to the baseline row (nginx-tls) of this run. Proxy pinned to core 1; clients, upstream "
        "and harness to core 0. `CPU ms / handshake` = the proxy's CPU time (core 1) per completed "
        "connection; `capacity` = 1000 / that, the rate at 100 % of one core. The client costs about as "
        "much CPU per full handshake as the server (OpenSSL 3.0 on core 0), so when `core0 %` is near 100 "
        "the measured rate is capped by the client and `capacity` is the fairer comparison.",
        "",
        f"## Full TLS handshakes ({meta['clients']} x `openssl s_time -new` in parallel: no resumption, "
        "no HTTP request)",
        "",
        "| target | TLS | handshakes/s | x nginx-tls | proxy CPU % | core0 % | CPU ms / handshake | "
        "capacity /s | x nginx-tls | failed s_time clients | sessions reused |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        rows = by.get((t.name, "full"), [])
        pr = t.probes.get("resumption", {})
        cms = med(rows, "cpu_ms_per_conn")
        cap_ratio = ratio(t, "full", "cpu_ms_per_conn")
        lines.append(
            "| "
            + " | ".join(
                str(x)
                for x in [
                    name(t),
                    pr.get("tls", pr.get("error", "-")),
                    f(med(rows, "rate"), ",.0f"),
                    f(ratio(t, "full", "rate"), ".2f"),
                    f(med(rows, "proxy_cpu_pct"), ".0f"),
                    f(med(rows, "core0_pct"), ".0f"),
                    f(cms, ".2f"),
                    f(1000 / cms if cms else None, ",.0f"),
                    f(1 / cap_ratio if cap_ratio else None, ".2f"),
                    sum(r["failed_clients"] for r in rows),
                    sum(r["reused"] for r in rows),
                ]
            )
            + " |"
        )
    lines += [
        "",
        f"## New connection per request (`wrk -t1 -c{meta['conc']} -d{meta['duration_s']}s --latency "
        "-H 'Connection: close'` GET /small)",
        "",
        "wrk offers the previous connection's TLS session again, so where `resumes` is True these are "
        "resumed handshakes (no certificate signature), each followed by one proxied request.",
        "",
        "| target | resumes | req/s (= conns/s) | x nginx-tls | p50 ms | p99 ms | p99 x nginx-tls | proxy CPU % | "
        "core0 % | CPU ms / conn | capacity /s | x nginx-tls | wrk socket errors | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        rows = by.get((t.name, "close"), [])
        pr = t.probes.get("resumption", {})
        cms = med(rows, "cpu_ms_per_conn")
        cap_ratio = ratio(t, "close", "cpu_ms_per_conn")
        errs = sum(
            r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
            for r in rows
        )
        edet = "c{} r{} w{} t{}".format(
            *(
                sum(r[k] for r in rows)
                for k in ("err_connect", "err_read", "err_write", "err_timeout")
            )
        )
        lines.append(
            "| "
            + " | ".join(
                str(x)
                for x in [
                    name(t),
                    pr.get("resumes", "-"),
                    f(med(rows, "rate"), ",.0f"),
                    f(ratio(t, "close", "rate"), ".2f"),
                    f(med(rows, "p50_ms"), ".2f"),
                    f(med(rows, "p99_ms"), ".2f"),
                    f(ratio(t, "close", "p99_ms"), ".2f"),
                    f(med(rows, "proxy_cpu_pct"), ".0f"),
                    f(med(rows, "core0_pct"), ".0f"),
                    f(cms, ".2f"),
                    f(1000 / cms if cms else None, ",.0f"),
                    f(1 / cap_ratio if cap_ratio else None, ".2f"),
                    edet if errs else 0,
                    sum(r.get("non2xx", 0) for r in rows),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## Health",
        "",
        "| target | RSS idle -> after each rep -> idle at the end, KiB | forwards correctly after the load | "
        "proxy output: tracebacks / 'Unhandled' / 'error' lines | max foreign CPU % in a kept run |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        lp = t.probes.get("log", {})
        rows = by.get((t.name, "full"), []) + by.get((t.name, "close"), [])
        lines.append(
            "| "
            + " | ".join(
                str(x)
                for x in [
                    name(t),
                    " -> ".join(
                        str(x)
                        for x in [t.probes.get("rss_idle_kib", "-")]
                        + [r["rss_kib"] for r in t.rss]
                        + [t.probes.get("rss_idle_after_kib", "-")]
                    ),
                    t.probes.get("check_after", "-"),
                    f"{lp.get('traceback', '-')} / {lp.get('unhandled', '-')} / {lp.get('error', '-')}",
                    f(max((r["foreign_cpu_pct"] for r in rows), default=None), ".0f"),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    ap.add_argument("--targets-file", default=str(rp.BENCH / "targets.toml"))
    ap.add_argument(
        "--targets",
        default="nginx-tls,twisted-tls",
        help="comma-separated https rows (the baseline nginx-tls is added automatically)",
    )
    ap.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="SPEC",
        help="extra row, as run_peers.py --add",
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument(
        "--hs-clients",
        type=int,
        default=8,
        help="parallel openssl s_time processes (default 8)",
    )
    ap.add_argument(
        "--hs-conc",
        type=int,
        default=50,
        help="wrk -c for the Connection: close case (default 50)",
    )
    ap.add_argument("--quick", action="store_true", help="1 rep, 3 s runs")
    ap.add_argument(
        "--cert",
        help="use this certificate (PEM) instead of generating one; needs --key",
    )
    ap.add_argument("--key")
    ap.add_argument("--run-dir", default="/tmp/revproxy-bench-hs")
    ap.add_argument(
        "--venv", default=os.environ.get("BENCH_VENV", str(rp.BENCH / ".venv"))
    )
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT"))
    args, unknown = ap.parse_known_args()
    if unknown:
        log(f"handshakes.py: ignoring options meant for the harness: {unknown}")
    if args.quick:
        args.reps, args.duration = 1, 3

    os.sched_setaffinity(0, {int(rp.LOAD_CORE)})
    for tool in ("wrk", "nginx", "taskset", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: run {SHARED}/setup.sh")
    run, venv = Path(args.run_dir), Path(args.venv)
    out = (
        Path(args.out)
        if args.out
        else HERE / "results" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    )
    out.mkdir(parents=True, exist_ok=True)

    targets = rp.load_targets(Path(args.targets_file), args.add)
    want = set(args.targets.split(",")) | {
        s.split("name=", 1)[1].split()[0] for s in args.add
    }
    want |= {t.baseline for t in targets if t.name in want}
    targets = [t for t in targets if t.name in want]
    targets.sort(key=lambda t: t.name != "nginx-tls")  # baseline first
    bad = [t.name for t in targets if t.scheme != "https"]
    if bad:
        sys.exit(f"not https rows: {bad}")

    t_start = time.time()
    rp.prepare_run_dir(run)
    if args.cert:
        shutil.copy(args.cert, run / "cert.pem")
        shutil.copy(args.key, run / "key.pem")
        (run / "combined.pem").write_text(
            (run / "cert.pem").read_text() + (run / "key.pem").read_text()
        )
    fp = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(run / "cert.pem"),
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    log(f"certificate {run / 'cert.pem'} {fp}")
    raw: list[dict] = []
    try:
        rp.render_config(
            rp.BENCH / "conf" / "upstream-nginx.conf",
            run / "conf" / "upstream.conf",
            {"run": str(run), "upstream_port": str(rp.UPSTREAM_PORT)},
            {},
        )
        busy = [
            p
            for p in [rp.UPSTREAM_PORT] + [t.port for t in targets if t.cmd]
            if rp.port_in_use(p)
        ]
        if busy:
            sys.exit(f"ports already in use (another benchmark running?): {busy}")
        up = rp.start(
            "upstream",
            [
                "nginx",
                "-c",
                str(run / "conf" / "upstream.conf"),
                "-p",
                str(run),
                "-e",
                str(run / "upstream-nginx.error.log"),
            ],
            rp.LOAD_CORE,
            {},
            run / "logs",
        )
        if not rp.wait_port(rp.UPSTREAM_PORT, up):
            sys.exit("upstream nginx did not start: " + up.logfile.read_text())
        rp.UPSTREAM_PROC = up
        for t in targets:
            rp.start_target(t, run, venv)
            if t.status == "ok":
                why = rp.check(t, run / "www")
                if why:
                    t.status = f"failed check: {why}"
                    if t.proc:
                        rp.stop(t.proc)
                        t.proc = None
            log(
                f"{t.name:14s} :{t.port} pid {t.proc.pid if t.proc else '-'}  {t.status}"
            )
        live = [t for t in targets if t.status == "ok"]
        time.sleep(1)
        for t in live:
            t.probes["rss_idle_kib"] = rp.rss_kib(t.proc.tree())[0] if t.proc else None
            try:
                t.probes["resumption"] = probe_resumption(t)
            except Exception as e:
                t.probes["resumption"] = {"error": f"{type(e).__name__}: {e}"}
            log(f"probe {t.name}: {t.probes['resumption']}")

        n = len(live) * 2 * args.reps
        log(
            f"{n} measurements x {args.duration}s (~{n * (args.duration + 2) / 60:.1f} min)"
        )
        rawf = open(out / "handshakes.jsonl", "w")
        for rep in range(1, args.reps + 1):
            for t in live:
                if t.proc and not t.proc.alive():
                    t.status = "died"
                if t.status != "ok":
                    continue
                if rep == 1:  # warm-up, not recorded
                    subprocess.run(
                        [
                            "taskset",
                            "-c",
                            rp.LOAD_CORE,
                            "openssl",
                            "s_time",
                            "-connect",
                            f"127.0.0.1:{t.port}",
                            "-new",
                            "-time",
                            "1",
                        ],
                        capture_output=True,
                    )
                for mode in ("full", "close"):
                    for attempt in range(1, rp.FOREIGN_RETRIES + 2):
                        res = measure(
                            t, mode, args.duration, args.hs_clients, args.hs_conc
                        )
                        res.update(rep=rep, attempt=attempt)
                        noisy = (
                            res["foreign_cpu_pct"] > rp.FOREIGN_LIMIT_PCT
                            and attempt <= rp.FOREIGN_RETRIES
                        )
                        res["discarded"] = noisy
                        rawf.write(json.dumps(res) + "\n")
                        rawf.flush()
                        if not noisy:
                            break
                        log(
                            f"   {t.name} {mode}: {res['foreign_cpu_pct']}% CPU used by other processes -> repeating"
                        )
                    raw.append(res)
                    if mode == "full":
                        log(
                            f"rep{rep} {t.name:14s} full handshakes {res['rate']:>8,.0f}/s  ({res['handshakes']} in "
                            f"{args.hs_clients} clients, reused {res['reused']}, failed clients "
                            f"{res['failed_clients']})  cpu proxy {res['proxy_cpu_pct']}% client "
                            f"{res['client_cpu_pct']}% cores {res['core_busy_pct']} foreign {res['foreign_cpu_pct']}%  "
                            f"rss {res['rss_before_kib']}->{res['rss_after_kib']} KiB"
                            + (f"  ERR {res['errors']}" if res["errors"] else "")
                        )
                    else:
                        log(
                            f"rep{rep} {t.name:14s} conn/request {res['rate']:>8,.0f} req/s p50 {res['p50_ms']} "
                            f"p99 {res['p99_ms']} ms errs c{res['err_connect']} r{res['err_read']} "
                            f"w{res['err_write']} t{res['err_timeout']} non2xx {res['non2xx']}  cpu proxy "
                            f"{res['proxy_cpu_pct']}% cores {res['core_busy_pct']} foreign {res['foreign_cpu_pct']}%  "
                            f"rss {res['rss_before_kib']}->{res['rss_after_kib']} KiB"
                            + (
                                f"  WRK: {res.get('wrk_stderr')}"
                                if res.get("wrk_stderr")
                                else ""
                            )
                        )
                if t.proc:
                    rss, hwm = rp.rss_kib(t.proc.tree())
                    t.rss.append({"rep": rep, "rss_kib": rss, "hwm_kib": hwm})
                    if not t.proc.alive():
                        t.status = "died"
                        log(
                            f"{t.name} DIED: {t.proc.logfile.read_text(errors='replace')[-400:]}"
                        )
        rawf.close()
        time.sleep(2)
        # does the proxy still answer, and how big is it once idle again?
        for t in live:
            if t.proc and t.proc.alive():
                t.probes["rss_idle_after_kib"] = rp.rss_kib(t.proc.tree())[0]
                t.probes["check_after"] = rp.check(t, run / "www") or "ok"
                t.probes["log"] = log_problems(t)
                log(
                    f"after {t.name}: rss idle {t.probes['rss_idle_after_kib']} KiB, check {t.probes['check_after']}, "
                    f"log {t.probes['log']}"
                )
    finally:
        rp.stop_all()
    for t in targets:
        if t.proc:
            shutil.copy(t.proc.logfile, out / f"handshakes-{t.name}.log")
    meta = {
        "reps": args.reps,
        "duration_s": args.duration,
        "clients": args.hs_clients,
        "conc": args.hs_conc,
        "cert_sha256": fp,
        "elapsed_s": round(time.time() - t_start),
        "facts": rp.machine_facts(),
        "targets": [
            {
                k: getattr(t, k)
                for k in (
                    "name",
                    "port",
                    "cmd",
                    "config",
                    "baseline",
                    "status",
                    "probes",
                    "rss",
                )
            }
            for t in targets
        ],
    }
    table = summarise(targets, raw, meta)
    (out / "handshakes.json").write_text(
        json.dumps({"meta": meta, "raw": raw}, indent=1)
    )
    (out / "handshakes.md").write_text(
        f"# TLS connection setup, run {out.name}\n\nmachine: {meta['facts']}\n\ncertificate: {fp} "
        f"(RSA 2048, the same files for every row)\n\n{table}"
    )
    print(table)
    log(
        f"handshakes done in {(time.time() - t_start) / 60:.1f} min -> {out / 'handshakes.md'}"
    )
    return 0


def _on_signal(signum, frame):
    rp.stop_all()
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        sys.exit(main())
    finally:
        rp.stop_all()

#!/usr/bin/env python3
"""Workers benchmark (issue #18): revproxy with workers = 1 and workers = 2.

Two measurements, in one run, against one upstream nginx (the shared
harness's ``conf/upstream-nginx.conf``, one worker, core 0):

  cpu         CPU per request at a FIXED request rate below saturation:
              ``h2load --h1 -c CLIENTS --rps RATE/CLIENTS -D D /small`` (core 0).
              CPU = utime + stime from /proc/PID/stat of the supervisor and
              of each of its worker processes (all their threads), the delta
              over the run, divided by the requests h2load completed.  Rows:
              nginx (1 worker, core 1) as the anchor, revproxy workers = 1 on
              core 1, workers = 2 with both workers on core 1 (only the
              process count differs from workers = 1) and workers = 2 on cores
              0,1 (as the throughput step runs it).  The supervisor's own
              share is reported apart.
  throughput  ``wrk -t1 -c50 -dDs --latency /small`` (core 0) against nginx
              as a proxy (1 worker, core 1: the anchor), revproxy workers = 1
              on core 1 and workers = 2 on cores 0,1.  With workers = 2 one
              worker shares core 0 with wrk and the upstream: a 2-core
              machine cannot give the proxy two cores of its own.  Halfway
              through each revproxy run, /metrics on the ops listener is
              scraped for ``revproxy_worker_connections{worker=...}`` (how
              wrk's connections spread over the workers); each worker's CPU
              over the run is recorded too.

Repetitions are interleaved across rows (rep 1: every row, rep 2: ...), the
median is reported.  A run during which other processes used more than 20 %
CPU is repeated (at most twice, the last attempt kept), as the shared harness
does; processes are started, pinned and stopped by PID with its own code
(``run_peers.py``, imported as a library).  The one workers = 2 instance is
re-pinned (every thread of the supervisor and its workers, sched_setaffinity)
between its core-1 and its cores-0,1 rows.

    python3 bench/workers.py --venv /path/to/.venv        # 3 reps x 10 s (~5 min)
    python3 bench/workers.py --quick                      # 1 rep x 3 s
    python3 bench/workers.py --only cpu --rate 1000

Output: a Markdown table on stdout and README.md / workers.json /
raw.jsonl in --out (default bench/results/<date>-workers/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(
    os.environ.get("BENCH_SHARED", REPO.parent.parent / "shared" / "bench")
).resolve()
if not SHARED.exists():
    SHARED = Path("/work/shared/bench")

UPSTREAM_PORT = 18149
LOAD_CORE, PROXY_CORE, BOTH_CORES = "0", "1", "0,1"
FOREIGN_LIMIT_PCT = 20.0
FOREIGN_RETRIES = 2
RUN = Path("/tmp/revproxy-bench-workers")
#: revproxy's max_requests_per_connection; 0 = its default (1000, as in every
#: other figure of docs/performance.md; the nginx rows allow 1,000,000)
MAX_REQUESTS = 0


@dataclass
class Instance:
    """One proxy process tree started for the whole run."""

    name: str
    port: int
    workers: int  # 0 = nginx
    ops_port: int = 0
    proc: Any = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Row:
    """One measured configuration: an instance on given cores."""

    name: str
    inst: Instance
    cores: str
    results: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------ /proc
def jiffies_by_pid(pids: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[p] = int(fields[11]) + int(fields[12])  # utime + stime, all threads
    return out


def set_affinity(pids: list[int], cores: str) -> None:
    cpus = {int(c) for c in cores.split(",")}
    for p in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def others() -> list[str]:
    """Test suites or other proxies of other sessions running now."""
    cp = subprocess.run(
        ["pgrep", "-fa", "twisted.trial|twistd"], capture_output=True, text=True
    )
    mine = {str(p) for p in _our_pids()}
    return [ln for ln in cp.stdout.splitlines() if ln.split()[0] not in mine]


_INSTANCES: list[Instance] = []


def _our_pids() -> set[int]:
    pids: set[int] = {os.getpid()}
    for i in _INSTANCES:
        if i.proc is not None:
            pids |= set(i.proc.tree())
    return pids


# ------------------------------------------------------------------ setup
def revproxy_config(inst: Instance, dst: Path) -> None:
    text = (HERE / "revproxy.toml.in").read_text()
    text = text.replace("@PORT@", str(inst.port)).replace(
        "@UPSTREAM_URL@", f"http://127.0.0.1:{UPSTREAM_PORT}"
    )
    extra = f"\nmax_requests_per_connection = {MAX_REQUESTS}" if MAX_REQUESTS else ""
    text = text.replace(
        'ops_listen = ""',
        f'ops_listen = "tcp:{inst.ops_port}:interface=127.0.0.1"\n'
        f"workers = {inst.workers}{extra}",
    )
    text = text.replace("/tmp/revproxy-bench-state", str(RUN / f"state-{inst.name}"))
    if f"workers = {inst.workers}" not in text:
        raise ValueError("bench/revproxy.toml.in changed: no ops_listen line to extend")
    dst.write_text(text)


def start_instance(rp: Any, inst: Instance, venv: Path, repo: Path) -> None:
    conf = RUN / "conf" / f"{inst.name}.conf"
    if inst.workers == 0:
        ph = rp.placeholders(rp.Target(name=inst.name, port=inst.port), RUN, venv)
        rp.render_config(
            SHARED / "conf" / "nginx-proxy.conf", conf, ph, {"TLS": "", "EXTRA": ""}
        )
        argv = [
            "nginx",
            "-c",
            str(conf),
            "-p",
            str(RUN),
            "-e",
            str(RUN / f"{inst.name}.error.log"),
        ]
    else:
        revproxy_config(inst, conf)
        argv = [
            "env",
            f"PYTHONPATH={repo}",
            str(venv / "bin" / "twistd"),
            "-n",
            "--pidfile=",
            "revproxy",
            "--config",
            str(conf),
        ]
    inst.proc = rp.start(inst.name, argv, PROXY_CORE, {}, RUN / "logs")
    if not rp.wait_port(inst.port, inst.proc, 30):
        raise RuntimeError(
            f"{inst.name} did not start: " + inst.proc.logfile.read_text()[-600:]
        )
    if inst.workers > 1:  # every worker serves before the row is measured
        deadline = time.time() + 30
        while time.time() < deadline:
            if (
                len(inst.proc.tree()) >= inst.workers + 1
                and scrape(inst).get("serving", 0) >= inst.workers
            ):
                break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"{inst.name}: workers not all serving")
    why = rp.check(rp.Target(name=inst.name, port=inst.port), RUN / "www")
    if why:
        raise RuntimeError(f"{inst.name} does not forward correctly: {why}")
    _INSTANCES.append(inst)
    rp.log(f"{inst.name} :{inst.port} pids {inst.proc.tree()}")


def scrape(inst: Instance) -> dict[str, float]:
    """Per-worker open connections and serving workers, from /metrics."""
    if not inst.ops_port:
        return {}
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{inst.ops_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for m in re.finditer(
        r'^revproxy_worker_connections\{worker="(\d+)"\} (\S+)$', text, re.M
    ):
        out[f"worker{m.group(1)}"] = float(m.group(2))
    m2 = re.search(r'^revproxy_workers\{state="serving"\} (\S+)$', text, re.M)
    if m2:
        out["serving"] = float(m2.group(1))
    m3 = re.search(r"^revproxy_connections (\S+)$", text, re.M)
    if m3:
        out["total"] = float(m3.group(1))
    return out


# ------------------------------------------------------------------ measure
def _cpu_split(
    inst: Instance, before: dict[int, int], after: dict[int, int]
) -> dict[str, Any]:
    hz = os.sysconf("SC_CLK_TCK")
    sup = inst.proc.pid
    per = {p: (after[p] - before.get(p, 0)) / hz for p in after}
    workers = sorted((p for p in per if p != sup), key=lambda p: p)
    return {
        "cpu_s_total": round(sum(per.values()), 3),
        "cpu_s_supervisor": round(per.get(sup, 0.0), 3) if inst.workers > 1 else None,
        "cpu_s_workers": [round(per[p], 3) for p in workers]
        if inst.workers > 1
        else None,
    }


def parse_h2load(out: str) -> dict[str, Any]:
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    r = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        out,
    )
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    return {
        "seconds": float(m.group(1)) if m else None,
        "rps": float(m.group(2)) if m else None,
        "succeeded": int(r.group(4)) if r else 0,
        "failed": int(r.group(5)) + int(r.group(6)) + int(r.group(7)) if r else None,
        "mean_latency": lat.group(3) if lat else None,
    }


def measure_cpu(rp: Any, row: Row, args: argparse.Namespace) -> dict[str, Any]:
    per_client = args.rate / args.clients
    argv = [
        "taskset", "-c", LOAD_CORE, "h2load", "--h1", "-c", str(args.clients),
        "--rps", f"{per_client:g}",
    ]  # fmt: skip
    if args.ramp:  # one connection every ramp/clients s; -n instead of -D (exclusive)
        argv += [
            "-r", "1", f"--rate-period={round(1000 * args.ramp / args.clients)}ms",
            "-n", str(int(args.rate * args.duration)),
        ]  # fmt: skip
    else:
        argv += ["-D", str(args.duration)]
    argv.append(row.inst.url("/small"))
    pre_busy, waited = rp.wait_quiet()
    pids = row.inst.proc.tree()
    ours = set(pids) | set(rp.UPSTREAM_PROC.tree()) | {os.getpid()}
    all0 = rp.userland_jiffies()
    before = jiffies_by_pid(pids)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.time()
    cp = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.duration + 60
    )
    wall = time.time() - w0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = jiffies_by_pid(pids)
    all1 = rp.userland_jiffies()
    hz = os.sysconf("SC_CLK_TCK")
    res: dict[str, Any] = parse_h2load(cp.stdout)
    res.update(_cpu_split(row.inst, before, after))
    n = res["succeeded"]
    res["us_cpu_per_req"] = round(1e6 * res["cpu_s_total"] / n, 1) if n else None
    if res["cpu_s_supervisor"] is not None and n:
        res["us_cpu_per_req_supervisor"] = round(1e6 * res["cpu_s_supervisor"] / n, 2)
    res["proxy_cpu_pct"] = round(100 * res["cpu_s_total"] / wall, 1)
    res["h2load_cpu_pct"] = round(
        100 * ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall, 1
    )
    res["foreign_cpu_pct"] = round(
        100.0 * rp.foreign_jiffies(all0, all1, ours) / hz / wall, 1
    )
    res["pre_busy_pct"], res["waited_quiet_s"] = pre_busy, waited
    res["cmd"] = shlex.join(argv)
    res["rc"] = cp.returncode
    return res


def measure_throughput(rp: Any, row: Row, args: argparse.Namespace) -> dict[str, Any]:
    t = rp.Target(name=row.inst.name, port=row.inst.port)
    t.proc = row.inst.proc
    pids = row.inst.proc.tree()
    samples: list[dict[str, float]] = []
    done = threading.Event()

    def poll() -> None:  # every 2 s; wrk starts once rp.wait_quiet() lets it
        while not done.wait(2.0):
            got = scrape(row.inst)
            if got.get("total"):
                samples.append(got)

    poller = threading.Thread(target=poll, daemon=True)
    before = jiffies_by_pid(pids)
    if row.inst.workers > 1:
        poller.start()
    res: dict[str, Any] = rp.run_wrk(t, "/small", args.conc, args.duration, False)
    done.set()
    after = jiffies_by_pid(pids)
    res.update(_cpu_split(row.inst, before, after))
    # the sample in the middle of the run: all of wrk's connections open
    res["connections_mid_run"] = samples[len(samples) // 2] if samples else None
    res["connections_samples"] = samples
    return res


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def run_rows(
    rp: Any,
    rows: list[Row],
    kind: str,
    args: argparse.Namespace,
    rawf: Any,
) -> None:
    fn = measure_cpu if kind == "cpu" else measure_throughput
    for rep in range(1, args.reps + 1):
        for row in rows:
            set_affinity(row.inst.proc.tree(), row.cores)
            if rep == 1:  # warm-up, not recorded
                subprocess.run(
                    ["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c50", "-d2s",
                     row.inst.url("/small")],
                    capture_output=True,
                )  # fmt: skip
            for attempt in range(1, FOREIGN_RETRIES + 2):
                res = fn(rp, row, args)
                res.update(
                    kind=kind, row=row.name, cores=row.cores, rep=rep, attempt=attempt
                )
                res["loadavg"] = loadavg()
                noisy = (
                    res["foreign_cpu_pct"] > FOREIGN_LIMIT_PCT
                    and attempt <= FOREIGN_RETRIES
                )
                res["discarded"] = noisy
                rawf.write(json.dumps(res) + "\n")
                rawf.flush()
                if not noisy:
                    break
                rp.log(
                    f"   {row.name}: {res['foreign_cpu_pct']}% foreign CPU -> repeating"
                )
            row.results.append(res)
            if kind == "cpu":
                rp.log(
                    f"cpu rep{rep} {row.name:18s} {res['rps']} req/s done {res['succeeded']} "
                    f"failed {res['failed']}  {res['us_cpu_per_req']} us CPU/req "
                    f"(supervisor {res.get('us_cpu_per_req_supervisor')}, workers s "
                    f"{res['cpu_s_workers']})  foreign {res['foreign_cpu_pct']}%"
                )
            else:
                rp.log(
                    f"thr rep{rep} {row.name:18s} {res['rps']:,.0f} req/s p50 {res['p50_ms']} "
                    f"p99 {res['p99_ms']} errs c{res['err_connect']} r{res['err_read']} "
                    f"non2xx {res['non2xx']} proxy {res['proxy_cpu_pct']}% cores "
                    f"{res['core_busy_pct']} workers s {res['cpu_s_workers']} conns "
                    f"{res['connections_mid_run']} foreign {res['foreign_cpu_pct']}%"
                )


def summarise(
    cpu_rows: list[Row], thr_rows: list[Row], anchor: str
) -> tuple[dict[str, Any], str]:
    def fmt(v: float | None, f: str) -> str:
        return "-" if v is None else format(v, f)

    summary: dict[str, Any] = {"cpu": {}, "throughput": {}}
    lines: list[str] = []
    if cpu_rows:
        base = {r.name: med(r.results, "us_cpu_per_req") for r in cpu_rows}
        w1 = base.get("revproxy-w1")
        lines += [
            "### (a) CPU per request at a fixed rate",
            "",
            "| row | cores | req/s done | failed | µs CPU / req | x workers=1 | x nginx "
            "| supervisor µs / req | CPU s per worker | proxy CPU % | foreign CPU % max |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in cpu_rows:
            us = base[r.name]
            sup = med(r.results, "us_cpu_per_req_supervisor")
            per_worker = (
                [
                    statistics.median(x["cpu_s_workers"][i] for x in r.results)
                    for i in range(r.inst.workers)
                ]
                if r.inst.workers > 1
                else None
            )
            s = {
                "cores": r.cores,
                "rps": med(r.results, "rps"),
                "failed": sum(x["failed"] or 0 for x in r.results),
                "us_cpu_per_req": us,
                "ratio_w1": ratio(us, w1),
                "ratio_nginx": ratio(us, base.get(anchor)),
                "us_cpu_per_req_supervisor": sup,
                "cpu_s_per_worker": per_worker,
                "proxy_cpu_pct": med(r.results, "proxy_cpu_pct"),
                "foreign_cpu_pct_max": max(x["foreign_cpu_pct"] for x in r.results),
                "each_rep_us": [x["us_cpu_per_req"] for x in r.results],
            }
            summary["cpu"][r.name] = s
            lines.append(
                f"| {r.name} | {r.cores} | {fmt(s['rps'], ',.0f')} | {s['failed']} | "
                f"{fmt(us, '.1f')} ({', '.join(fmt(v, '.0f') for v in s['each_rep_us'])}) | "
                f"{fmt(s['ratio_w1'], '.2f')} | {fmt(s['ratio_nginx'], '.1f')} | "
                f"{fmt(sup, '.2f')} | "
                f"{' / '.join(fmt(v, '.2f') for v in per_worker) if per_worker else '-'} | "
                f"{fmt(s['proxy_cpu_pct'], '.0f')} | {fmt(s['foreign_cpu_pct_max'], '.0f')} |"
            )
        lines.append("")
    if thr_rows:
        rps = {r.name: med(r.results, "rps") for r in thr_rows}
        w1 = rps.get("revproxy-w1")
        lines += [
            "### (b) Throughput, wrk -c50 /small",
            "",
            "| row | cores | req/s (each rep) | x nginx | x workers=1 | p50 / p99 ms | errors "
            "| proxy CPU % | core0 / core1 busy % | CPU s per worker | connections per worker "
            "mid-run (each rep) | foreign CPU % max |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in thr_rows:
            v = rps[r.name]
            conns = [
                x["connections_mid_run"] for x in r.results if x["connections_mid_run"]
            ]
            per_worker = (
                [
                    statistics.median(x["cpu_s_workers"][i] for x in r.results)
                    for i in range(r.inst.workers)
                ]
                if r.inst.workers > 1
                else None
            )
            s = {
                "cores": r.cores,
                "rps": v,
                "each_rep_rps": [x["rps"] for x in r.results],
                "ratio_nginx": ratio(v, rps.get(anchor)),
                "ratio_w1": ratio(v, w1),
                "p50_ms": med(r.results, "p50_ms"),
                "p99_ms": med(r.results, "p99_ms"),
                "errors": sum(
                    x["err_connect"]
                    + x["err_read"]
                    + x["err_write"]
                    + x["err_timeout"]
                    + x["non2xx"]
                    for x in r.results
                ),
                "proxy_cpu_pct": med(r.results, "proxy_cpu_pct"),
                "core0_busy_pct": statistics.median(
                    x["core_busy_pct"].get("cpu0", 0) for x in r.results
                ),
                "core1_busy_pct": statistics.median(
                    x["core_busy_pct"].get("cpu1", 0) for x in r.results
                ),
                "cpu_s_per_worker": per_worker,
                "connections_mid_run": conns,
                "foreign_cpu_pct_max": max(x["foreign_cpu_pct"] for x in r.results),
            }
            summary["throughput"][r.name] = s
            spread = "; ".join(
                "/".join(
                    fmt(c.get(f"worker{i + 1}"), ".0f") for i in range(r.inst.workers)
                )
                for c in conns
            )
            lines.append(
                f"| {r.name} | {r.cores} | {fmt(v, ',.0f')} "
                f"({', '.join(fmt(x, ',.0f') for x in s['each_rep_rps'])}) | "
                f"{fmt(s['ratio_nginx'], '.2f')} | {fmt(s['ratio_w1'], '.2f')} | "
                f"{fmt(s['p50_ms'], '.1f')} / {fmt(s['p99_ms'], '.1f')} | {s['errors']} | "
                f"{fmt(s['proxy_cpu_pct'], '.0f')} | {fmt(s['core0_busy_pct'], '.0f')} / "
                f"{fmt(s['core1_busy_pct'], '.0f')} | "
                f"{' / '.join(fmt(x, '.2f') for x in per_worker) if per_worker else '-'} | "
                f"{spread or '-'} | {fmt(s['foreign_cpu_pct_max'], '.0f')} |"
            )
        lines.append("")
    return summary, "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument(
        "--rate", type=float, default=1500, help="total req/s of the CPU step"
    )
    parser.add_argument("--clients", type=int, default=20, help="h2load -c")
    parser.add_argument(
        "--ramp",
        type=float,
        default=0,
        help="cpu step: open h2load's connections one at a time over this many "
        "seconds (h2load -r 1 --rate-period RAMP/CLIENTS -n RATE*DURATION) instead "
        "of all at once (-D DURATION), so that they spread over the workers",
    )
    parser.add_argument("--conc", type=int, default=50, help="wrk -c")
    parser.add_argument(
        "--max-requests-per-connection",
        type=int,
        default=0,
        help="set revproxy's [server] max_requests_per_connection (default: "
        "revproxy's own, 1000; h2load -r gives up on a connection the server "
        "closes, so the cpu step with --ramp needs more than RATE*DURATION/CLIENTS)",
    )
    parser.add_argument("--only", choices=["cpu", "throughput"], default=None)
    parser.add_argument("--quick", action="store_true", help="1 rep x 3 s")
    parser.add_argument("--repo", type=Path, default=REPO, help="the revproxy checkout")
    parser.add_argument("--venv", type=Path, default=None, help="default: REPO/.venv")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration = 1, 3
    venv = args.venv or args.repo / ".venv"
    global MAX_REQUESTS
    MAX_REQUESTS = args.max_requests_per_connection
    sys.path.insert(0, str(SHARED))
    import run_peers as rp  # the shared harness, as a library

    rp.UPSTREAM_PORT = UPSTREAM_PORT  # not the harness's 18080: runs beside it
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    out_dir = args.out or HERE / "results" / time.strftime("%Y-%m-%d-workers")
    out_dir.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = dict(rp.machine_facts())
    facts.update(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        commit=subprocess.run(
            ["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        h2load=subprocess.run(
            ["h2load", "--version"], capture_output=True, text=True
        ).stdout.strip(),
        loadavg_start=loadavg(),
        others_start=others(),
        reps=args.reps,
        duration_s=args.duration,
        rate=args.rate,
        clients=args.clients,
        conc=args.conc,
        ramp=args.ramp,
        max_requests_per_connection=args.max_requests_per_connection or "default",
    )
    nginx = Instance("nginx", 18141, 0)
    w1 = Instance("revproxy-w1", 18142, 1, 18144)
    w2 = Instance("revproxy-w2", 18143, 2, 18145)
    busy = [
        p
        for p in (UPSTREAM_PORT, 18141, 18142, 18143, 18144, 18145)
        if rp.port_in_use(p)
    ]
    if busy:
        sys.exit(f"ports in use: {busy}")
    rp.prepare_run_dir(RUN)
    ph = {"run": str(RUN), "upstream_port": str(UPSTREAM_PORT)}
    rp.render_config(
        SHARED / "conf" / "upstream-nginx.conf", RUN / "conf" / "upstream.conf", ph, {}
    )
    try:
        up = rp.start(
            "upstream",
            ["nginx", "-c", str(RUN / "conf" / "upstream.conf"), "-p", str(RUN),
             "-e", str(RUN / "upstream-nginx.error.log")],
            LOAD_CORE, {}, RUN / "logs",
        )  # fmt: skip
        if not rp.wait_port(UPSTREAM_PORT, up):
            raise RuntimeError(
                "upstream nginx did not start: " + up.logfile.read_text()
            )
        rp.UPSTREAM_PROC = up
        for inst in (nginx, w1, w2):
            start_instance(rp, inst, venv, args.repo)
        cpu_rows = [
            Row("nginx", nginx, PROXY_CORE),
            Row("revproxy-w1", w1, PROXY_CORE),
            Row("revproxy-w2", w2, PROXY_CORE),
            Row("revproxy-w2-2cores", w2, BOTH_CORES),
        ]
        thr_rows = [
            Row("nginx", nginx, PROXY_CORE),
            Row("revproxy-w1", w1, PROXY_CORE),
            Row("revproxy-w2-2cores", w2, BOTH_CORES),
        ]
        if args.only == "throughput":
            cpu_rows = []
        if args.only == "cpu":
            thr_rows = []
        with open(out_dir / "raw.jsonl", "w") as rawf:
            if cpu_rows:
                run_rows(rp, cpu_rows, "cpu", args, rawf)
            if thr_rows:
                run_rows(rp, thr_rows, "throughput", args, rawf)
        for inst in (nginx, w1, w2):
            if not inst.proc.alive():
                raise RuntimeError(
                    f"{inst.name} died: {inst.proc.logfile.read_text()[-600:]}"
                )
        facts["loadavg_end"] = loadavg()
        facts["others_end"] = others()
    finally:
        rp.stop_all()
    summary, table = summarise(cpu_rows, thr_rows, "nginx")
    (out_dir / "workers.json").write_text(
        json.dumps({"facts": facts, "medians": summary}, indent=1)
    )
    text = (
        f"# Workers (#18), {facts['date']}, revproxy {facts['commit']}\n\n"
        f"`{shlex.join(sys.argv)}`: median of {args.reps} x {args.duration} s, "
        f"repetitions interleaved. /proc/loadavg at start `{facts['loadavg_start']}`, "
        f"at end `{facts['loadavg_end']}`; other twistd / trial processes at start: "
        f"{len(facts['others_start'])}, at end: {len(facts['others_end'])}. "
        + (
            f"(a): h2load --h1 -c {args.clients} at {args.rate:g} req/s in all (core 0)"
            + (f", connections opened over {args.ramp:g} s. " if args.ramp else ". ")
            if cpu_rows
            else ""
        )
        + (f"(b): wrk -t1 -c{args.conc} (core 0). " if thr_rows else "")
        + "Upstream nginx on core 0.\n\n"
        f"{table}\n"
        "Raw runs (discarded noisy attempts included): raw.jsonl; medians and "
        "machine facts: workers.json.\n"
    )
    (out_dir / "README.md").write_text(text)
    print(text)
    print(f"results: {out_dir}")
    return 0


def _on_signal(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # runs main()'s finally: every process stopped by PID


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    sys.exit(main())

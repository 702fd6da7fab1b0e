#!/usr/bin/env python3
"""WebSocket tunnel benchmark (issue #15): revproxy beside nginx and Caddy.

For each proxy, through WebSocket tunnels it opened with an HTTP/1.1
upgrade:

  echo     messages per second through 1 tunnel and through 100 tunnels,
           for 64 B and 64 KiB messages: every tunnel keeps DEPTH messages
           in flight (default 4) and sends the next one as each echo comes
           back whole; counted over D seconds after a short warm-up.  Also
           the proxy's CPU (% of its one core) during the count.
  idle     the proxy's RSS before and after opening 1,000 tunnels that then
           carry nothing: KiB per idle tunnel.

Method (../shared/bench/METHOD.md): the proxy under test is pinned to core 1
(nginx: one worker; Caddy: GOMAXPROCS=1; revproxy: its one process), the
upstream and this script (the load) to core 0.  Repetitions are interleaved
across proxies (rep 1: nginx, caddy, revproxy; rep 2: ...), the median is
reported with ratios to nginx and to Caddy of the same run.  Processes are
started, pinned and stopped by PID with the shared harness's own code
(run_peers.py, imported as a library); other work's CPU during each count is
recorded (the machine is shared).

The upstream (``ws.py upstream``) answers the opening handshake properly
(Sec-WebSocket-Accept) and then echoes the bytes it receives as they are:
the client's masked frames come back masked.  A WebSocket library would
refuse them, but nothing on the path looks at frames after the 101 (nginx,
Caddy and revproxy all relay bytes), and this keeps the upstream and the
client, which share core 0, as cheap as possible: the client counts bytes
(each echoed message is exactly one frame of known length) and never
parses.  Even so, core 0 caps the fastest proxy's figures: read the proxy's
CPU column (under 100 % = it was not the bottleneck).

    python3 bench/ws.py --venv /path/to/.venv            # 3 reps x 3 s (~3 min)
    python3 bench/ws.py --quick                          # 1 rep x 2 s
    python3 bench/ws.py --targets nginx,caddy            # without revproxy
    python3 bench/ws.py --targets nginx,nginx-64k        # nginx with 64 KiB buffers too

Output: a Markdown table on stdout and ws.md / ws.json / ws.jsonl in
--out (default bench/results/ws-<timestamp>/).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(
    os.environ.get("BENCH_SHARED", REPO.parent.parent / "shared" / "bench")
).resolve()
if not SHARED.exists():
    SHARED = Path("/work/shared/bench")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
UPSTREAM_PORT = 18139
PORTS = {"nginx": 18130, "caddy": 18131, "revproxy": 18132, "nginx-64k": 18133}
#: The nginx rows: the stock proxy buffers (4/8 KiB, which a tunnel reads
#: into), and a sensitivity row with 64 KiB ones.
NGINX_EXTRA = {
    "nginx": "",
    "nginx-64k": "proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;",
}
LOAD_CORE, PROXY_CORE = "0", "1"
IDLE_TUNNELS = 1000
CASES = [(1, 64), (1, 64 * 1024), (100, 64), (100, 64 * 1024)]


# ------------------------------------------------------------------ upstream
class _EchoUpstream(asyncio.Protocol):
    """Answers the opening handshake, then echoes bytes as they come."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.head = b""
        self.open = False

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > 65536:
                self.transport.close()
            return
        head, rest = self.head.split(b"\r\n\r\n", 1)
        key = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.open = True
        self.head = b""
        if rest:
            self.transport.write(rest)


def run_upstream(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            _EchoUpstream, "127.0.0.1", port, backlog=4096, reuse_address=True
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -------------------------------------------------------------------- client
def frame(size: int) -> bytes:
    """One masked binary frame of C{size} payload bytes (a client's)."""
    mask = os.urandom(4)
    if size < 126:
        head = bytes([0x82, 0x80 | size])
    elif size < 65536:
        head = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big")
    payload = bytes(i % 251 for i in range(size))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n" % (port, key)
    )


class Stats:
    def __init__(self) -> None:
        self.echoes = 0


class _Tunnel(asyncio.Protocol):
    """Upgrades, then keeps `depth` messages in flight, counting echoes."""

    def __init__(self, port: int, stats: Stats) -> None:
        self.port = port
        self.stats = stats
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.frame = b""
        self.pending = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(upgrade_request(self.port))

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, rest = self.head.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(f"upgrade: {head[:200]!r}"))
                return
            self.upgraded.set_result(None)
            data = rest
        if not self.frame:
            return
        self.pending += len(data)
        size = len(self.frame)
        done, self.pending = divmod(self.pending, size)
        if done:
            self.stats.echoes += done
            self.transport.write(self.frame * done)

    def start(self, message: bytes, depth: int) -> None:
        self.frame = message
        self.transport.write(message * depth)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the 101"))


async def open_tunnels(port: int, count: int, stats: Stats) -> list[_Tunnel]:
    loop = asyncio.get_running_loop()
    tunnels: list[_Tunnel] = []
    for start in range(0, count, 100):
        batch = []
        for _ in range(min(100, count - start)):
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Tunnel(port, stats), "127.0.0.1", port),
                10,
            )
            batch.append(proto)
        await asyncio.wait_for(asyncio.gather(*(t.upgraded for t in batch)), 20)
        tunnels += batch
    return tunnels


def close_tunnels(tunnels: list[_Tunnel]) -> None:
    for t in tunnels:
        t.transport.abort()


async def echo_case(
    port: int,
    tunnels: int,
    size: int,
    depth: int,
    warm: float,
    duration: float,
    proxy_pids: list[int],
    rp,
) -> dict:
    stats = Stats()
    opened = await open_tunnels(port, tunnels, stats)
    message = frame(size)
    try:
        for t in opened:
            t.start(message, depth)
        await asyncio.sleep(warm)
        n0, j0, u0, t0 = (
            stats.echoes,
            rp.tree_jiffies(proxy_pids),
            rp.userland_jiffies(),
            time.monotonic(),
        )
        await asyncio.sleep(duration)
        n1, j1, u1, t1 = (
            stats.echoes,
            rp.tree_jiffies(proxy_pids),
            rp.userland_jiffies(),
            time.monotonic(),
        )
        if any(t.closed for t in opened):
            raise RuntimeError(
                f"{sum(t.closed for t in opened)} tunnels closed during the run"
            )
    finally:
        close_tunnels(opened)
    elapsed = t1 - t0
    hz = os.sysconf("SC_CLK_TCK")
    ours = set(proxy_pids) | {os.getpid(), *UPSTREAM_PIDS}
    foreign = rp.foreign_jiffies(u0, u1, ours)
    return {
        "msgs_per_s": round((n1 - n0) / elapsed, 1),
        "mib_per_s": round((n1 - n0) * size / elapsed / 2**20, 2),
        "proxy_cpu_pct": round(100 * (j1 - j0) / hz / elapsed, 1),
        "foreign_cpu_pct": round(100 * foreign / hz / elapsed, 1),
    }


async def idle_case(port: int, proxy_pids: list[int], rp) -> dict:
    stats = Stats()
    warm = await open_tunnels(port, 50, stats)
    close_tunnels(warm)
    await asyncio.sleep(1.0)
    before, _ = rp.rss_kib(proxy_pids)
    opened = await open_tunnels(port, IDLE_TUNNELS, stats)
    try:
        await asyncio.sleep(1.5)
        after, _ = rp.rss_kib(proxy_pids)
        closed = sum(t.closed for t in opened)
    finally:
        close_tunnels(opened)
    return {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_tunnel": round((after - before) / IDLE_TUNNELS, 2),
        "closed": closed,
    }


UPSTREAM_PIDS: list[int] = []


# ------------------------------------------------------------------- targets
def render(template: Path, dest: Path, values: dict[str, str]) -> Path:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError(f"{template}: unfilled placeholders {sorted(set(left))}")
    dest.write_text(text)
    return dest


def start_proxy(rp, name: str, run: Path, venv: Path, repo: Path):
    port = PORTS[name]
    values = {"PORT": str(port), "UPSTREAM_PORT": str(UPSTREAM_PORT), "RUN": str(run)}
    conf = run / "conf"
    if name in NGINX_EXTRA:
        values |= {"NAME": name, "EXTRA": NGINX_EXTRA[name]}
        path = render(HERE / "ws-nginx.conf.in", conf / f"{name}.conf", values)
        argv = [
            "nginx",
            "-c",
            str(path),
            "-p",
            str(run),
            "-e",
            str(run / "nginx.error.log"),
        ]
        env: dict[str, str] = {}
    elif name == "caddy":
        path = render(HERE / "ws-Caddyfile.in", conf / "Caddyfile", values)
        argv = ["caddy", "run", "--adapter", "caddyfile", "--config", str(path)]
        env = {
            "GOMAXPROCS": "1",
            "XDG_DATA_HOME": str(run / "xdg-data"),
            "XDG_CONFIG_HOME": str(run / "xdg-config"),
            "HOME": str(run),
        }
    else:
        path = render(HERE / "ws-revproxy.toml.in", conf / "revproxy.toml", values)
        argv = [
            "env",
            f"PYTHONPATH={repo}",
            str(venv / "bin" / "twistd"),
            "-n",
            "--pidfile=",
            "revproxy",
            "--config",
            str(path),
        ]
        env = {}
    proc = rp.start(name, argv, PROXY_CORE, env, run / "logs")
    if not rp.wait_port(port, proc, 20):
        rp.stop(proc)
        raise RuntimeError(f"{name} did not start: {proc.logfile.read_text()[-2000:]}")
    time.sleep(0.3)
    return proc


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def summarise(raw: list[dict], targets: list[str]) -> tuple[dict, str]:
    table: dict = {}
    for row in raw:
        cell = table.setdefault(row["target"], {}).setdefault(row["case"], {})
        for key, value in row.items():
            if isinstance(value, int | float) and key not in ("rep", "attempt"):
                cell.setdefault(key, []).append(value)
    med = {
        t: {c: {k: median(v) for k, v in cells.items()} for c, cells in cases.items()}
        for t, cases in table.items()
    }

    def ratio(t: str, case: str, key: str, base: str) -> str:
        try:
            b = med[base][case][key]
            return f"{med[t][case][key] / b:.2f}" if b else "-"
        except KeyError:
            return "-"

    lines = [
        "| case | proxy | msgs/s | x nginx | x Caddy | MiB/s | proxy CPU % | other CPU % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tunnels, size in CASES:
        case = case_name(tunnels, size)
        for t in targets:
            m = med.get(t, {}).get(case)
            if not m:
                continue
            lines.append(
                f"| {case} | {t} | {m['msgs_per_s']:,.0f} | {ratio(t, case, 'msgs_per_s', 'nginx')} | "
                f"{ratio(t, case, 'msgs_per_s', 'caddy')} | {m['mib_per_s']:.1f} | "
                f"{m['proxy_cpu_pct']:.0f} | {m['foreign_cpu_pct']:.0f} |"
            )
    lines += [
        "",
        "| idle tunnels | proxy | RSS before -> after MiB | KiB per tunnel | x nginx | x Caddy |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets:
        m = med.get(t, {}).get("idle")
        if not m:
            continue
        lines.append(
            f"| {IDLE_TUNNELS:,} | {t} | {m['rss_before_kib'] / 1024:.1f} -> {m['rss_after_kib'] / 1024:.1f} | "
            f"{m['kib_per_tunnel']:.1f} | {ratio(t, 'idle', 'kib_per_tunnel', 'nginx')} | "
            f"{ratio(t, 'idle', 'kib_per_tunnel', 'caddy')} |"
        )
    return med, "\n".join(lines)


def case_name(tunnels: int, size: int) -> str:
    return f"{tunnels} tunnel{'s' if tunnels > 1 else ''}, {size if size < 1024 else f'{size // 1024} Ki'}B"


async def measure(
    rp, name: str, args, run: Path, venv: Path, raw: list[dict], rep: int, out
) -> None:
    proc = start_proxy(rp, name, run, venv, args.repo)
    try:
        pids = proc.tree()
        for tunnels, size in CASES:
            # METHOD.md: a count during which other work used more than
            # FOREIGN_LIMIT_PCT of the CPU is repeated, at most twice, and
            # the last attempt is kept whatever it shows.
            for attempt in range(1 + rp.FOREIGN_RETRIES):
                result = await echo_case(
                    PORTS[name],
                    tunnels,
                    size,
                    args.depth,
                    args.warm,
                    args.duration,
                    pids,
                    rp,
                )
                result["attempt"] = attempt + 1
                if result["foreign_cpu_pct"] <= rp.FOREIGN_LIMIT_PCT:
                    break
                rp.log(
                    f"{name} {case_name(tunnels, size)}: other work used "
                    f"{result['foreign_cpu_pct']} % CPU, repeating"
                )
            row = {
                "target": name,
                "rep": rep,
                "case": case_name(tunnels, size),
                **result,
            }
            raw.append(row)
            out.write(json.dumps(row) + "\n")
            rp.log(f"{name} rep {rep} {row['case']}: {result}")
        result = await idle_case(PORTS[name], proc.tree(), rp)
        row = {"target": name, "rep": rep, "case": "idle", **result}
        raw.append(row)
        out.write(json.dumps(row) + "\n")
        rp.log(f"{name} rep {rep} idle: {result}")
    finally:
        rp.stop(proc)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "upstream":
        run_upstream(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="nginx,caddy,revproxy")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warm", type=float, default=0.5)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="1 rep x 2 s")
    parser.add_argument("--repo", type=Path, default=REPO, help="the revproxy checkout")
    parser.add_argument("--venv", type=Path, default=None, help="default: REPO/.venv")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration = 1, 2.0
    venv = args.venv or args.repo / ".venv"
    targets = [t for t in args.targets.split(",") if t]
    sys.path.insert(0, str(SHARED))
    import run_peers as rp  # the shared harness, as a library

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    run = Path("/tmp/revproxy-bench-ws")
    for sub in ("conf", "logs", "tmp", "xdg-data", "xdg-config"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    out_dir = args.out or HERE / "results" / time.strftime("ws-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    upstream = rp.start(
        "ws-upstream",
        [sys.executable, str(Path(__file__).resolve()), "upstream", str(UPSTREAM_PORT)],
        LOAD_CORE,
        {},
        run / "logs",
    )
    raw: list[dict] = []
    try:
        if not rp.wait_port(UPSTREAM_PORT, upstream, 10):
            raise RuntimeError(
                "the upstream did not start: " + upstream.logfile.read_text()
            )
        UPSTREAM_PIDS.append(upstream.pid)
        rp.log(
            f"upstream pid {upstream.pid} on {UPSTREAM_PORT}; targets {targets}; "
            f"{args.reps} reps x {args.duration} s, depth {args.depth}"
        )
        with open(out_dir / "ws.jsonl", "w") as out:
            for rep in range(1, args.reps + 1):
                for name in targets:
                    rp.wait_quiet()
                    asyncio.run(measure(rp, name, args, run, venv, raw, rep, out))
                    out.flush()
    finally:
        rp.stop_all()
    med, table = summarise(raw, targets)
    facts = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "reps": args.reps,
        "duration_s": args.duration,
        "depth": args.depth,
        "commit": os.popen(f"git -C {args.repo} rev-parse --short HEAD 2>/dev/null")
        .read()
        .strip(),
    }
    (out_dir / "ws.json").write_text(
        json.dumps({"facts": facts, "medians": med}, indent=1)
    )
    text = (
        f"WebSocket tunnels, {facts['date']}, revproxy {facts['commit']}: median of {args.reps} "
        f"x {args.duration} s, {args.depth} messages in flight per tunnel; proxy on core "
        f"{PROXY_CORE}, upstream and load on core {LOAD_CORE}.\n\n{table}\n"
    )
    (out_dir / "ws.md").write_text(text)
    print(text)
    print(f"results: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Policy serving: loopback overhead against an in-process call, and batching throughput.

    python bench/serve.py --ckpt runs/metaworld_event --requests 40 --clients 1 4 16

Same checkpoint, same inputs (model-size frames, one fixed state and prompt), same torch thread
count (``--threads``) everywhere:

1. Latency: ``--requests`` calls of the in-process policy (``CheckpointPolicy.plan``, what
   ``eval --ckpt`` does) interleaved with the same calls through ``PolicyClient`` to a
   ``python -m wallwm_pretrain.serve`` process on 127.0.0.1 (no batching). p50/p95 of each and
   their ratio: what serialisation, the socket, the request checks and the queue add.
2. Throughput: N concurrent clients (threads, one connection each), each sending requests back
   to back, against a server without batching (``--max-batch 1``) and one with
   (``--max-batch 16 --max-wait-ms 2``), measured back to back per client count. Requests per
   second and the mean batch size seen.

Each measurement stops after ``--requests`` requests per client or ``--max-seconds`` seconds,
whichever comes first (the table says how many were made). The servers are separate processes,
as in deployment; they share this machine's cores with the clients, so on a small machine the
clients' own CPU time is part of what is measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wallwm_pretrain.client import PolicyClient  # noqa: E402

warnings.filterwarnings("ignore", module="megatron")  # optional GPU-only extensions, at import


def start_server(args, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "wallwm_pretrain.serve", "--ckpt", args.ckpt, "--port", "0", "--threads",
           str(args.threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
           "--max-queue", "256", "--denoise-steps", str(args.denoise_steps), "--device", "cpu"]
    if args.stats:
        cmd += ["--stats", args.stats]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()  # the server prints its address once it listens
    if not line.startswith("serving "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split(" on ", 1)[1].split(";", 1)[0]


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def request(meta: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    h, w = meta["image_size"]
    return {"images": {v: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for v in meta["views"]},
            "state": rng.normal(size=meta["state_dim"]).astype(np.float32), "prompt": "reach for the puck",
            "seed": seed}


def pct(ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms), q))


def latency(args) -> dict:
    """In-process vs loopback on the same inputs, interleaved call by call, so that load from
    elsewhere on the machine hits both series alike (the server idles during in-process calls)."""
    import torch

    from wallwm_pretrain.serve.engine import PolicyEngine

    torch.set_num_threads(args.threads)
    proc, url = start_server(args, 1, 0.0)
    try:
        engine = PolicyEngine.load(args.ckpt, args.stats, "cpu", args.denoise_steps)
        policy = engine.policy
        with PolicyClient(url) as client:
            obs = request(client.metadata, 0)
            frame = np.stack([obs["images"][v] for v in engine.spec.views])

            def local_call():
                policy.plan(frame, obs["state"], obs["prompt"], policy.new_episode(0))

            def remote_call():
                client.infer(obs)

            for _ in range(args.warmup):
                local_call()
                remote_call()
            local, remote = [], []
            deadline = time.perf_counter() + args.max_seconds
            while len(local) < args.requests and time.perf_counter() < deadline:
                for call, times in ((local_call, local), (remote_call, remote)):
                    t = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - t) * 1000)
        params = sum(p.numel() for p in policy.model.parameters())
    finally:
        stop_server(proc)
    return {"local": local, "remote": remote, "params": params}


def throughput(args, clients: int, url: str) -> dict:
    """``clients`` connections sending back to back; requests/s and mean batch size."""
    conns = [PolicyClient(url) for _ in range(clients)]
    obs = [request(conns[0].metadata, i) for i in range(clients)]
    for c, o in zip(conns, obs):  # warm each connection once, outside the timing
        c.infer(o)
    counts, batches = [0] * clients, [[] for _ in range(clients)]
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def work(i: int) -> None:
        start_gate.wait()
        while counts[i] < args.requests and time.perf_counter() < deadline[0]:
            reply = conns[i].infer(obs[i])
            counts[i] += 1
            batches[i].append(reply["server_timing"]["batch_size"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + args.max_seconds
    t0 = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    for c in conns:
        c.close()
    sizes = [b for per in batches for b in per]
    return {"requests": sum(counts), "seconds": seconds, "rps": sum(counts) / seconds,
            "mean_batch": float(np.mean(sizes)) if sizes else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/serve.py", description=__doc__.splitlines()[0],
                                epilog="example: python bench/serve.py --ckpt runs/metaworld_event --requests 40 --clients 1 4 16")
    p.add_argument("--ckpt", required=True, help="run folder, checkpoint step folder or exported .safetensors")
    p.add_argument("--stats", help="training shard folder with index.json (default: the run config's data.shards)")
    p.add_argument("--requests", type=int, default=40, help="requests per measurement and client (default 40)")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests before each latency series (default 3)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients (default 1 4 16)")
    p.add_argument("--max-batch", type=int, default=16, help="--max-batch of the batching server (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="--max-wait-ms of the batching server (default 2)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time bound of each measurement (default 60)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike (default 1)")
    p.add_argument("--denoise-steps", type=int, default=10, help="Euler steps per request (default 10)")
    args = p.parse_args(argv)

    lat = latency(args)
    # Both servers stay up (an idle one costs no CPU) and each client count measures them back
    # to back, so slow drifts in the machine's load hit both columns alike.
    rows = {}
    servers = {"no batching": start_server(args, 1, 0.0), "batching": start_server(args, args.max_batch, args.max_wait_ms)}
    try:
        for n in args.clients:
            for label, (_, url) in servers.items():
                rows[(label, n)] = throughput(args, n, url)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)

    local, remote = lat["local"], lat["remote"]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}; "
          f"model {lat['params'] / 1e6:.2f}M parameters, {args.denoise_steps} denoise steps")
    print("\n| per request | p50 ms | p95 ms | requests |")
    print("|---|---|---|---|")
    print(f"| in-process `plan` | {pct(local, 50):.1f} | {pct(local, 95):.1f} | {len(local)} |")
    print(f"| loopback `PolicyClient.infer` | {pct(remote, 50):.1f} | {pct(remote, 95):.1f} | {len(remote)} |")
    print(f"| ratio (serving overhead) | {pct(remote, 50) / pct(local, 50):.2f} | {pct(remote, 95) / pct(local, 95):.2f} | |")
    print("\n| clients | no batching req/s | batching req/s | mean batch | speed-up | requests (no batching / batching) |")
    print("|---|---|---|---|---|---|")
    for n in args.clients:
        a, b = rows[("no batching", n)], rows[("batching", n)]
        print(f"| {n} | {a['rps']:.1f} | {b['rps']:.1f} | {b['mean_batch']:.1f} | {b['rps'] / a['rps']:.2f} | "
              f"{a['requests']} / {b['requests']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

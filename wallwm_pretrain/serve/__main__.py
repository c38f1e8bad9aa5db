"""python -m wallwm_pretrain.serve: serve a trained checkpoint to robots over websockets.

    python -m wallwm_pretrain.serve --ckpt runs/metaworld_event --port 8000
    python -m wallwm_pretrain.serve --ckpt model.safetensors --stats data/shards/mw_L1 \\
        --host 0.0.0.0 --port 8000 --api-key "$POLICY_KEY" --max-batch 8 --max-wait-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import warnings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.serve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve a trained checkpoint as a policy over websockets, in openpi's protocol: binary\n"
            "msgpack frames with numpy arrays; the server sends its metadata first (mode, dims, fps,\n"
            "views and image size, normalisation, checkpoint step), then answers each observation\n"
            "{images: {view: uint8 [H, W, 3]}, state: float [S], prompt: str[, seed: int]} with\n"
            "{actions: float32 [T, A] in robot units, remaining_steps (event mode), server_timing}.\n"
            "Bad requests get a text frame 'error: <key>: <expected>' and the connection stays open.\n"
            "GET /healthz answers 'OK' over plain HTTP. Client: wallwm_pretrain.client.PolicyClient."
        ),
        epilog=(
            "example:\n"
            "  python -m wallwm_pretrain.serve --ckpt runs/metaworld_event --port 8000\n"
            "  python -m wallwm_pretrain.eval --server ws://127.0.0.1:8000 --tasks pick-place-v3 --episodes 10 --out eval_remote"
        ),
    )
    p.add_argument("--ckpt", required=True, help="run folder (newest checkpoint), checkpoint step folder, or exported .safetensors")
    p.add_argument("--stats", help="training shard folder (or its index.json) with the normalisation statistics; "
                                   "default: data.shards of the run config")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes the policy to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one and prints it)")
    p.add_argument("--api-key", default=os.environ.get("WALLWM_API_KEY"),
                   help="require 'Authorization: Api-Key <key>' from clients (default: $WALLWM_API_KEY, else no key)")
    p.add_argument("--max-batch", type=int, default=1,
                   help="most concurrent requests answered by one forward pass (default 1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long a request waits for others to join its batch, when --max-batch > 1 (default 2)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="most requests waiting or running; beyond it a request is answered 'server busy' at once (default 64)")
    p.add_argument("--max-request-mb", type=float, default=8.0,
                   help="largest request accepted, in MiB (default 8); larger ones, up to --max-frame-mb, get an "
                        "error reply and the connection stays open")
    p.add_argument("--max-frame-mb", type=float, default=None,
                   help="hard ceiling on one websocket frame, in MiB (default 8x --max-request-mb; in the metadata as "
                        "server.max_frame_bytes): a larger frame is not read and that connection is closed with "
                        "code 1009 (message too big); it bounds the memory one client can make the server hold")
    p.add_argument("--denoise-steps", type=int, default=10, help="Euler steps of the flow per request (default 10)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed of the per-connection sampling noise; a request's 'seed' key overrides it (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="megatron")  # optional GPU-only extensions, at import
    import torch

    from wallwm_pretrain.checkpoint import CheckpointError
    from wallwm_pretrain.eval.policy import PolicyError
    from wallwm_pretrain.serve.engine import PolicyEngine
    from wallwm_pretrain.serve.server import PolicyServer

    for flag, value, low in (("--denoise-steps", args.denoise_steps, 1), ("--max-batch", args.max_batch, 1),
                             ("--max-queue", args.max_queue, 1), ("--max-wait-ms", args.max_wait_ms, 0),
                             ("--port", args.port, 0), ("--threads", args.threads, 0)):
        if value < low:
            print(f"error: {flag} must be >= {low}, got {value}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # the model is built from local layers: no process group to set up or tear down
    try:
        engine = PolicyEngine.load(args.ckpt, args.stats, device, args.denoise_steps)
        server = PolicyServer(engine, args.host, args.port, args.api_key, args.max_batch, args.max_wait_ms,
                              args.max_queue, int(args.max_request_mb * (1 << 20)), args.seed,
                              None if args.max_frame_mb is None else int(args.max_frame_mb * (1 << 20)))
    except (CheckpointError, PolicyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def ready(port: int) -> None:
        meta = server.metadata
        print(f"serving {args.ckpt} (step {meta['checkpoint_step']}, {meta['mode']} mode, views "
              f"{', '.join(meta['views'])}, horizon {meta['horizon']}) on {server.url}; health: "
              f"http://{args.host}:{port}/healthz", flush=True)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        await server.serve_until_stopped(ready)

    try:
        asyncio.run(run())
    except OSError as exc:  # port in use, address not available
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

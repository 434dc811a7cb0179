"""Gateway throughput: bastion serve against a bare endpoint of the same framework, same model, one run.

Servers (each one uvicorn worker, started here as subprocesses, on 127.0.0.1):

  bare      a Starlette endpoint POST /v2/models/{name}/infer that parses the same OIP JSON, runs the
            same model (zoo mnist-cnn) batch by batch of one request in a worker thread, and answers
            the same JSON: no token, no limits, no metrics, no audit log, no input checks
  gateway   `bastion serve` with ES256 tokens (64 callers), per-caller rate limits (set high
            enough never to refuse), the failed-auth limiter, Prometheus metrics and the audit log;
            two names for the same signed model: bench-b1 (max_batch 1) and bench-b32 (max_batch 32)

Load: wrk (from the OS packages) with many keep-alive connections, each request one MNIST image.
Scenarios, interleaved over --rounds in random order (medians reported):

  bare-b1         bare, --connections clients
  gateway-b1      gateway, bench-b1: the same work per request as bare       floor: >= 0.75 x bare-b1
  gateway-b32     gateway, bench-b32, 32 clients: dynamic batching           floor: >= 2 x gateway-b1 at 32
  gateway-b1-32   gateway, bench-b1, 32 clients (the batch-1 baseline for the line above)
  under-attack    gateway-b32 traffic plus bad-token clients (forged ES256 signatures from 5 other
                  addresses, via X-Forwarded-For) sending 5 requests per good one (open loop, paced
                  from the good rate measured alone)                          floor: good >= 0.8 x alone

The table has requests/s and p50/p99 latency (wrk's); the last line is JSON: {"ratios": {...}}.

    python benchmarks/gateway.py [--seconds 10] [--rounds 3] [--connections 32]
    python benchmarks/gateway.py --seconds 2 --rounds 1        # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISS, AUD = "https://auth.bench", "bastion-gateway"
CALLERS = 64
ATTACK_ADDRESSES = [f"10.9.0.{i}" for i in range(1, 6)]
FLOORS = {"gateway_vs_bare": 0.75, "batching_32_vs_batch1": 2.0, "valid_throughput_under_bad_tokens": 0.8}

POLICY = f"""
audience = "{AUD}"
[[issuers]]
iss = "{ISS}"
algorithm = "ES256"
key_file = "issuer.key.pub"
[scopes.predict]
actions = ["predict"]
models = ["*"]
[models]
signer_keys = ["signer.key.pub"]
[[models.rules]]
models = ["bench-b1"]
max_batch = 1
[[models.rules]]
models = ["bench-b32"]
max_batch = 32
max_delay_ms = 2
[limits]
max_in_flight = 4096
[limits.failed_auth]
rate = 1
burst = 20
[limits.scopes.predict]
rate = 1000000
burst = 1000000
"""

LUA = """
local bodies = {body}
local tokens = {tokens}
local addresses = {addresses}
local path = "{path}"
local counter = 0
local delay_ms = {delay_ms}
request = function()
  counter = counter + 1
  local headers = {{}}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer " .. tokens[(counter % #tokens) + 1]
  if #addresses > 0 then headers["X-Forwarded-For"] = addresses[(counter % #addresses) + 1] end
  return wrk.format("POST", path, headers, bodies[1])
end
{delay_fn}
"""


# -- the bare endpoint (run as: gateway.py --bare-server --port P) ---------------------------------

def bare_app():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from bastion.models import load_model

    module = load_model("mnist-cnn").module
    executor = ThreadPoolExecutor(max_workers=1)

    def forward(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    async def infer(request):
        doc = json.loads(await request.body())
        tensor = doc["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        logits = await asyncio.get_running_loop().run_in_executor(executor, forward, x)
        out = {"model_name": request.path_params["name"], "model_version": "1", "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.reshape(-1).tolist()},
            {"name": "class", "datatype": "INT64", "shape": [len(logits)], "data": logits.argmax(1).tolist()}]}
        return Response(json.dumps(out, separators=(",", ":")).encode(), media_type="application/json")

    return Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])


def run_bare_server(port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- set-up -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(tmp: Path) -> dict:
    from bastion.access.keys import generate_private_key, write_keypair
    from bastion.access.signing import sign_model
    from bastion.access.token_keys import thumbprint
    from bastion.access.tokens import issue_token, new_jti
    from bastion.data import load_data
    from bastion.models.zoo import zoo_path

    issuer, signer, forger = (generate_private_key("ec-p256") for _ in range(3))
    write_keypair(tmp / "issuer.key", issuer)
    write_keypair(tmp / "signer.key", signer)
    repo = tmp / "models"
    for name in ("bench-b1", "bench-b32"):
        shutil.copytree(zoo_path("mnist-cnn"), repo / name)
        sign_model(repo / name, signer)
    (tmp / "policy.toml").write_text(POLICY)

    def tokens(key, prefix):
        return [issue_token(key, "ES256", iss=ISS, aud=AUD, sub=f"{prefix}-{i}", ttl_seconds=3600, scope="predict",
                            kid=thumbprint(issuer.public_key()), jti=new_jti()) for i in range(CALLERS)]

    x = load_data("mnist", "test").x[:1].numpy()
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "data": x.reshape(-1).tolist()}]})
    return {"repo": repo, "policy": tmp / "policy.toml", "good": tokens(issuer, "caller"),
            "bad": tokens(forger, "mallory"), "body": body}


def start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


def lua_script(tmp: Path, name: str, body: str, tokens: list[str], path: str, addresses: list[str],
               delay_ms: float | None) -> Path:
    def table(items):
        return "{" + ",".join(json.dumps(i) for i in items) + "}"

    delay_fn = f"delay = function() return {delay_ms:.3f} end" if delay_ms else ""
    script = tmp / f"{name}.lua"
    script.write_text(LUA.format(body=table([body]), tokens=table(tokens), addresses=table(addresses), path=path,
                                 delay_ms=delay_ms or 0, delay_fn=delay_fn))
    return script


def wrk(url: str, script: Path, connections: int, seconds: float) -> subprocess.Popen:
    threads = max(1, min(2, connections))
    return subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                             "-s", str(script), url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> dict:
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if not total:
        raise SystemExit(f"wrk failed: {text[-1000:]}")
    seconds = float(total.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)

    def percentile(p):
        found = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")

    requests = int(total.group(1))
    non_2xx = int(bad.group(1)) if bad else 0
    return {"rps": (requests - non_2xx) / seconds, "all_rps": requests / seconds, "non_2xx": non_2xx,
            "p50_ms": percentile(50), "p99_ms": percentile(99), "socket_errors": errors.group(1) if errors else ""}


# -- the run ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="Length of each measurement.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved repeats (medians are reported).")
    parser.add_argument("--connections", type=int, default=32, help="Keep-alive clients for the bare vs gateway line.")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        return run_bare_server(args.port)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")

    tmp = Path(tempfile.mkdtemp(prefix="bastion-gateway-bench-"))
    procs = []
    try:
        setup = prepare(tmp)
        bare_port, gateway_port = free_port(), free_port()
        procs.append(start([sys.executable, __file__, "--bare-server", "--port", str(bare_port)], bare_port,
                           tmp / "bare.log"))
        procs.append(start([sys.executable, "-c", "from bastion.cli import main; main()", "serve", "--repository",
                            str(setup["repo"]), "--policy", str(setup["policy"]), "--port", str(gateway_port),
                            "--audit-log", str(tmp / "audit.jsonl"), "--workers", "1"], gateway_port,
                           tmp / "gateway.log"))
        bare_url, gateway_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{gateway_port}"

        def script(name, model, tokens, addresses=(), delay_ms=None):
            return lua_script(tmp, name, setup["body"], tokens, f"/v2/models/{model}/infer", list(addresses), delay_ms)

        plain = {"bare-b1": (bare_url, script("bare", "bench-b1", setup["good"]), args.connections),
                 "gateway-b1": (gateway_url, script("gw-b1", "bench-b1", setup["good"]), args.connections),
                 "gateway-b1-32": (gateway_url, script("gw-b1-32", "bench-b1", setup["good"]), 32),
                 "gateway-b32": (gateway_url, script("gw-b32", "bench-b32", setup["good"]), 32)}
        for url, lua, connections in plain.values():  # warm up: imports, allocator, verified-claims cache
            parse_wrk(wrk(url, lua, connections, 1).communicate()[0])
        results: dict[str, list[dict]] = {name: [] for name in [*plain, "under-attack"]}
        for round_index in range(args.rounds):
            order = list(plain) + ["under-attack"]
            random.Random(round_index).shuffle(order)
            for name in order:
                if name != "under-attack":
                    url, lua, connections = plain[name]
                    results[name].append(parse_wrk(wrk(url, lua, connections, args.seconds).communicate()[0]))
                    continue
                alone = statistics.median(r["rps"] for r in results["gateway-b32"]) if results["gateway-b32"] \
                    else parse_wrk(wrk(*plain["gateway-b32"][:2], 32, 1).communicate()[0])["rps"]
                attackers = 16
                delay = attackers * 1000.0 / (5 * alone)  # ms between one attacker connection's requests
                bad = script("bad", "bench-b32", setup["bad"], ATTACK_ADDRESSES, delay)
                flood = wrk(gateway_url, bad, attackers, args.seconds + 1)
                time.sleep(0.5)
                good = parse_wrk(wrk(gateway_url, plain["gateway-b32"][1], 32, args.seconds).communicate()[0])
                flooded = parse_wrk(flood.communicate()[0])
                good["bad_rps"] = flooded["all_rps"]
                results[name].append(good)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        audit_lines = sum(1 for _ in open(tmp / "audit.jsonl")) if (tmp / "audit.jsonl").exists() else 0
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print(f"{'scenario':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  note")
    for name in results:
        note = f"bad-token req/s {med(name, 'bad_rps'):.0f}" if name == "under-attack" else ""
        errors = sum(r["non_2xx"] for r in results[name])
        note += f" non-2xx {errors}" if errors and name != "under-attack" else ""
        print(f"{name:<16} {med(name, 'rps'):>9.0f} {med(name, 'p50_ms'):>8.2f} {med(name, 'p99_ms'):>8.2f}  {note}")
    ratios = {"gateway_vs_bare": med("gateway-b1", "rps") / med("bare-b1", "rps"),
              "batching_32_vs_batch1": med("gateway-b32", "rps") / med("gateway-b1-32", "rps"),
              "valid_throughput_under_bad_tokens": med("under-attack", "rps") / med("gateway-b32", "rps"),
              "bad_per_good": med("under-attack", "bad_rps") / max(med("under-attack", "rps"), 1e-9)}
    print(f"audit log lines: {audit_lines}")
    print(json.dumps({"ratios": {k: round(v, 3) for k, v in ratios.items()}, "floors": FLOORS,
                      "seconds": args.seconds, "rounds": args.rounds, "connections": args.connections}))


if __name__ == "__main__":
    main()

"""The model service's throughput and tail latency, side by side in one run.

Two servers on 127.0.0.1, one uvicorn worker each, the same registered model:
- full: `aiinfra serve` (API key check, rate limit, audit of every request through the batching writer,
  body and concurrency guard, Prometheus metrics, the V1 route with its feature checks);
- bare: a FastAPI app with one route that runs the same model on the same V1 body, nothing else.
`wrk` (C, from the Debian package; installed when missing) loads each at 16 connections for 1-row and 32-row
predictions, interleaved, best of the rounds. Where the full app spends its time is printed from 300 one-row requests
run in process (httpx's ASGI transport, under cProfile, summed by package, the client's own time left out: `costs.py`). The last line is one JSON object.
"""
import argparse, json, os, re, shutil, signal, socket, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BARE = textwrap.dedent("""
    import os, polars as pl, torch
    from fastapi import FastAPI, Request
    from aiinfra_nb.ops.store import get_engine
    from aiinfra_nb.models.tabular import Preprocessor
    from aiinfra_nb.models.registry import Registry
    model, meta = Registry(os.environ['BENCH_MODELS'], get_engine(os.environ['AIINFRA_DB_URL'])).load('delay', stage='production')
    pre, f = Preprocessor.from_dict(meta['preprocessing']), meta['features']
    wanted = [*f['numeric'], *f['categorical']]
    app = FastAPI()

    @app.post('/v1/models/delay:predict')
    async def predict(request: Request):
        rows = (await request.json())['instances']
        frame = pl.DataFrame([{c: r[c] for c in wanted} for r in rows], schema={c: pl.Float64 if c in f['numeric'] else pl.String for c in wanted})
        with torch.inference_mode(): out = torch.sigmoid(model(*pre.transform(frame))).tolist()
        return {'predictions': out}
""")

LUA = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen):
    t0 = time.time()
    while time.time() - t0 < 60:
        try:
            if httpx.get(url, timeout=1).status_code < 500: return
        except httpx.HTTPError: pass
        if proc.poll() is not None: sys.exit(f"server exited: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    sys.exit('server did not start')


def ensure_wrk():
    "wrk, installed from the Debian package when missing"
    if not shutil.which('wrk'): subprocess.run(['apt-get', 'install', '-y', '-q', 'wrk'], check=True, capture_output=True)


def wrk(url: str, script: Path, connections: int, seconds: int) -> tuple[float, float]:
    "(requests/s, p99 ms) of one wrk run"
    out = subprocess.run(['wrk', '-t2', f'-c{connections}', f'-d{seconds}s', '--latency', '-s', str(script), url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
    value, unit = re.search(r'99%\s+([\d.]+)(us|ms|s)', out).groups()
    p99 = float(value) * {'us': 0.001, 'ms': 1, 's': 1000}[unit]
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    if errors: sys.exit(f"{url}: {errors.group(1)} error responses under load:\n{out}")
    return rps, p99


def delay_model(tmp: Path) -> tuple[dict, object, str]:
    "A flights-delay model (two numeric features, a carrier) registered and promoted in a store under `tmp`: (environment, registry, a predict key)"
    env = {**os.environ, 'AIINFRA_DB_URL': f"sqlite:///{tmp/'store.db'}", 'AIINFRA_DATA_DIR': str(tmp/'data'), 'BENCH_MODELS': str(tmp/'data/models'),
           'AIINFRA_SERVICE_RATE_LIMIT': '1000000/second', 'AIINFRA_SERVICE_NAME': 'bench', 'AIINFRA_PROJECT_NAME': 'bench'}  # one project for all
    os.environ.update(env)
    import torch
    from aiinfra_nb.serve.auth import create_key
    from aiinfra_nb.models.tabular import Preprocessor, TabularNet
    from aiinfra_nb.models.registry import Registry
    reg = Registry(tmp/'data/models')
    torch.manual_seed(0)
    pre = Preprocessor({'distance': {'mean': 1000.0, 'std': 500.0}, 'dep_hour': {'mean': 13.0, 'std': 5.0}}, {'carrier': ['AA', 'B6', 'DL', 'UA']})
    v = reg.save(TabularNet(2, [5], hidden=[128, 128]), 'delay', preprocessing=pre.to_dict(),
                 features={'numeric': ['distance', 'dep_hour'], 'categorical': ['carrier'], 'target': 'delayed'})['version']
    reg.promote('delay', v)
    return env, reg, create_key('bench', 'predict')['secret']


def app_costs(registry, key: str, n: int = 300) -> list:
    "The top costs of `n` one-row predictions through the full app, in process, under cProfile"
    import asyncio
    sys.path.insert(0, str(Path(__file__).parent))
    from costs import top_costs
    from aiinfra_nb.serve.app import create_app
    app = create_app(registry)
    body = json.dumps({'instances': [{'distance': 300.0, 'dep_hour': 9.0, 'carrier': 'UA'}]})
    async def calls():
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url='http://bench') as c:
            for _ in range(n):
                r = await c.post('/v1/models/delay:predict', content=body, headers={'Authorization': f'Bearer {key}', 'Content-Type': 'application/json'})
                assert r.status_code == 200, r.text
    return top_costs(lambda: asyncio.run(calls()), skip=('httpx', 'asyncio', 'httpcore', 'anyio'))  # the client and the loop are the harness


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--connections', type=int, default=16)
    a = ap.parse_args()
    ensure_wrk()
    tmp = Path(tempfile.mkdtemp())
    env, reg, key = delay_model(tmp)
    (tmp/'bare.py').write_text(BARE)
    full_port, bare_port = free_port(), free_port()
    servers = [subprocess.Popen([str(BIN/'aiinfra'), 'serve', '--port', str(full_port)], env=env, stderr=subprocess.PIPE, text=True),
               subprocess.Popen([str(BIN/'uvicorn'), 'bare:app', '--port', str(bare_port), '--log-level', 'warning'], cwd=tmp, env=env,
                                stderr=subprocess.PIPE, text=True)]
    try:
        wait_ready(f'http://127.0.0.1:{full_port}/v2/health/ready', servers[0])
        wait_ready(f'http://127.0.0.1:{bare_port}/docs', servers[1])
        results = {}
        for rows in (1, 32):
            body = json.dumps({'instances': [{'distance': 300.0 + 40 * i, 'dep_hour': float(i % 24), 'carrier': 'UA'} for i in range(rows)]})
            script = tmp/f'post{rows}.lua'
            script.write_text(LUA.format(body=body, key=key))
            for _ in range(a.rounds):  # interleaved, so that noise hits both alike
                for name, port in (('bare', bare_port), ('full', full_port)):
                    rps, p99 = wrk(f'http://127.0.0.1:{port}/v1/models/delay:predict', script, a.connections, a.seconds)
                    print(f"{rows:>2} row(s) {name}: {rps:,.0f} req/s, p99 {p99:.1f} ms", file=sys.stderr)
                    best = results.get((name, rows))
                    if best is None or rps > best[0]: results[(name, rows)] = (rps, p99)
    finally:
        for s in servers: s.send_signal(signal.SIGTERM)
        for s in servers: s.wait(60)
    sys.path.insert(0, str(Path(__file__).parent))
    from costs import say
    print(f"where the full app's time goes ({300} one-row requests in process, cProfile): {say(app_costs(reg, key))}")
    out = {'benchmark': 'serve'}
    for rows in (1, 32):
        (full, p99), (bare, _) = results[('full', rows)], results[('bare', rows)]
        out |= {f'full_rps_{rows}': round(full), f'bare_rps_{rows}': round(bare), f'ratio_{rows}': round(full / bare, 3), f'p99_ms_full_{rows}': round(p99, 2)}
        print(f"{rows:>2} row(s): full {full:,.0f} req/s vs bare {bare:,.0f}: {full / bare:.2f}x (goal >= 0.8); full p99 {p99:.1f} ms (goal <= 15)")
    print(json.dumps(out))


if __name__ == '__main__':
    main()

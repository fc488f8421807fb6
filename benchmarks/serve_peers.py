"""Our model service against the servers a user would pick instead, side by side in one run.

The same registered model (benchmarks/serve.py's flights-delay network: safetensors + its preprocessing) served three
ways on 127.0.0.1, one worker each, every server with its default settings otherwise:
- ours: `aiinfra serve` with an API key, rate limits, the audit of every request and the prediction log on, over V2;
- MLServer (Seldon's), with a custom runtime class that loads our safetensors and preprocessing, over V2;
- BentoML, with a service class doing the same, over its own JSON route (`POST /predict`, a V1-style body).
MLServer and BentoML pin libraries that cannot live beside ours, so each lives in its own virtualenv under `.bench/`
(created, with torch's CPU build, on the first run and reused later; `--reinstall` makes them anew). `wrk` loads each
at 16 connections for 1-row and 32-row requests, the servers interleaved round by round, best of the rounds. The last
line is one JSON object.
"""
import argparse, json, shutil, signal, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import BIN, ROOT, delay_model, free_port, wrk  # noqa: E402
import httpx  # noqa: E402

PEERS = {'mlserver': ['mlserver==1.7.1', 'uvloop<0.22'],  # MLServer's workers call asyncio.get_event_loop(), which uvloop 0.22 refuses outside a loop
         'bentoml': ['bentoml==1.4.40']}
COMMON = ['torch==2.13.0', 'polars', 'numpy', 'safetensors', 'fastcore']  # what our model classes import (the CPU torch lies on disk)

LOADER = textwrap.dedent('''
    import json
    from pathlib import Path
    import polars as pl
    import torch
    from safetensors.torch import load_file
    from aiinfra_nb.models.tabular import Preprocessor, model_class, predict

    def load_model(folder):
        "Our model's network, preprocessing and features, from its registry folder"
        meta = json.loads((Path(folder)/'model.json').read_text())
        net = model_class(meta['architecture']['class']).from_config(meta['architecture']['config'])
        net.load_state_dict(load_file(Path(folder)/'model.safetensors'))
        return net.eval(), Preprocessor.from_dict(meta['preprocessing']), meta['features'], meta['architecture']['config'].get('task', 'binary')

    def answer(model, frame):
        net, pre, features, task = model
        with torch.inference_mode(): return predict(net, pre, task, frame)
''')

MLSERVER_RUNTIME = textwrap.dedent('''
    import numpy as np
    import polars as pl
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse
    from loader import answer, load_model

    class AiinfraModel(MLModel):
        "MLServer's custom runtime for a model of aiinfra's registry"
        async def load(self) -> bool:
            self.model = load_model(self.settings.parameters.uri)
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            numeric = set(self.model[2]['numeric'])
            cols = {}
            for i in payload.inputs:
                values = self.decode(i)  # MLServer's codec for the input's datatype
                values = values.reshape(-1).tolist() if hasattr(values, 'reshape') else list(values)
                cols[i.name] = pl.Series(i.name, [float(v) for v in values] if i.name in numeric else
                                         [v.decode() if isinstance(v, bytes) else v for v in values], dtype=pl.Float64 if i.name in numeric else pl.String)
            out = np.asarray(answer(self.model, pl.DataFrame(cols)), dtype=np.float32)
            return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output('probability', out)])
''')

BENTO_SERVICE = textwrap.dedent('''
    import os
    import bentoml
    import polars as pl
    from loader import answer, load_model

    @bentoml.service
    class Delay:
        "A BentoML service for a model of aiinfra's registry"
        def __init__(self):
            self.model = load_model(os.environ['BENCH_MODEL_DIR'])
            f = self.model[2]
            self.schema = {c: pl.Float64 for c in f['numeric']} | {c: pl.String for c in f['categorical']}

        @bentoml.api
        def predict(self, instances: list[dict]) -> dict:
            frame = pl.DataFrame([{c: r.get(c) for c in self.schema} for r in instances], schema=self.schema)
            return {'predictions': answer(self.model, frame)}
''')

V2_LUA = 'wrk.method = "POST"\nwrk.body = \'{body}\'\nwrk.headers["Content-Type"] = "application/json"\n{auth}'


def peer_env(name: str, reinstall: bool = False) -> Path:
    "The virtualenv of peer `name` under .bench/, made (and its packages installed) on first use"
    venv = ROOT/'.bench'/name
    done, wanted = venv/'.installed', ' '.join(COMMON + PEERS[name])
    if reinstall or not done.exists() or done.read_text().strip() != wanted:  # made for other versions: made anew
        print(f"{name}: a virtualenv of its own in {venv} (first run: a few minutes)", file=sys.stderr)
        subprocess.run([sys.executable, '-m', 'venv', '--clear', str(venv)], check=True)
        pip = [str(venv/'bin'/'python'), '-m', 'pip', 'install', '-q', '--disable-pip-version-check']
        subprocess.run([*pip, *COMMON, *PEERS[name]], check=True)
        subprocess.run([*pip, '--no-deps', '-e', str(ROOT)], check=True)  # our model classes, without our pins
        done.write_text(wanted + '\n')
    return venv


def wait_ready(name: str, url: str, proc: subprocess.Popen, log: Path, seconds: float = 300):
    "Until `url` answers 200; a server that exits or never answers ends the benchmark with its log's tail"
    t0 = time.time()
    while time.time() - t0 < seconds:
        try:
            if httpx.get(url, timeout=1).status_code == 200: return print(f"{name} ready in {time.time() - t0:.1f} s", file=sys.stderr)
        except httpx.HTTPError: pass
        if proc.poll() is not None: break
        time.sleep(0.3)
    sys.exit(f"{name} did not start ({'exited ' + str(proc.returncode) if proc.poll() is not None else 'no answer'}): {log.read_text()[-3000:]}")


def v2_body(rows: int) -> str:
    "A V2 request of `rows` rows, one input per feature column (as KServe's and MLServer's clients send a table)"
    return json.dumps({'inputs': [
        {'name': 'distance', 'datatype': 'FP64', 'shape': [rows], 'data': [300.0 + 40 * i for i in range(rows)]},
        {'name': 'dep_hour', 'datatype': 'FP64', 'shape': [rows], 'data': [float(i % 24) for i in range(rows)]},
        {'name': 'carrier', 'datatype': 'BYTES', 'shape': [rows], 'data': ['UA'] * rows}]})


def v1_body(rows: int) -> str:
    return json.dumps({'instances': [{'distance': 300.0 + 40 * i, 'dep_hour': float(i % 24), 'carrier': 'UA'} for i in range(rows)]})


def start_peers(tmp: Path, env: dict, model_dir: Path, reinstall: bool) -> dict:
    "MLServer and BentoML serving the model: {name: (process, url of its predict route, readiness url)}"
    (tmp/'loader.py').write_text(LOADER)
    ml, bento = tmp/'mlserver', tmp/'bento'
    for d in (ml, bento): d.mkdir(); shutil.copy(tmp/'loader.py', d/'loader.py')
    (ml/'runtime.py').write_text(MLSERVER_RUNTIME)
    ports = {k: free_port() for k in ('ml_http', 'ml_grpc', 'ml_metrics', 'bento')}
    (ml/'settings.json').write_text(json.dumps({'http_port': ports['ml_http'], 'grpc_port': ports['ml_grpc'], 'metrics_port': ports['ml_metrics'],
                                                'host': '127.0.0.1'}))  # ports only: every other setting MLServer's default
    (ml/'model-settings.json').write_text(json.dumps({'name': 'delay', 'implementation': 'runtime.AiinfraModel', 'parameters': {'uri': str(model_dir)}}))
    (bento/'service.py').write_text(BENTO_SERVICE)
    peer = {k: env | {'PYTHONPATH': str(d), 'BENCH_MODEL_DIR': str(model_dir)} for k, d in (('mlserver', ml), ('bentoml', bento))}
    ml_bin, bento_bin = peer_env('mlserver', reinstall)/'bin', peer_env('bentoml', reinstall)/'bin'
    log = lambda name: open(tmp/f'{name}.log', 'w')
    procs = {'mlserver': (subprocess.Popen([str(ml_bin/'mlserver'), 'start', str(ml)], cwd=ml, env=peer['mlserver'], stdout=log('mlserver'),
                                           stderr=subprocess.STDOUT),
                          f"http://127.0.0.1:{ports['ml_http']}/v2/models/delay/infer", f"http://127.0.0.1:{ports['ml_http']}/v2/models/delay/ready"),
             'bentoml': (subprocess.Popen([str(bento_bin/'bentoml'), 'serve', 'service:Delay', '--host', '127.0.0.1', '--port', str(ports['bento'])],
                                          cwd=bento, env=peer['bentoml'], stdout=log('bentoml'), stderr=subprocess.STDOUT),
                         f"http://127.0.0.1:{ports['bento']}/predict", f"http://127.0.0.1:{ports['bento']}/readyz")}
    return procs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--connections', type=int, default=16)
    ap.add_argument('--reinstall', action='store_true', help="make the peers' virtualenvs anew")
    a = ap.parse_args()
    if not shutil.which('wrk'): subprocess.run(['apt-get', 'install', '-y', '-q', 'wrk'], check=True, capture_output=True)
    tmp = Path(tempfile.mkdtemp())
    env, reg, key = delay_model(tmp)
    env = {**env, 'AIINFRA_MONITOR_SAMPLE': '1.0'}  # the prediction log keeps every row, as by default
    servers = start_peers(tmp, env, reg.dir('delay', 1), a.reinstall)
    ours_port = free_port()
    servers['ours'] = (subprocess.Popen([str(BIN/'aiinfra'), 'serve', '--port', str(ours_port)], env=env, stdout=open(tmp/'ours.log', 'w'), stderr=subprocess.STDOUT),
                       f'http://127.0.0.1:{ours_port}/v2/models/delay/infer', f'http://127.0.0.1:{ours_port}/v2/health/ready')
    try:
        for name, (proc, _, ready) in servers.items(): wait_ready(name, ready, proc, tmp/f'{name}.log')
        said = {}
        for name, (_, url, _) in servers.items():  # the same model: the same answers, before any load
            r = httpx.post(url, content=v1_body(3) if name == 'bentoml' else v2_body(3), timeout=30,
                           headers={'Content-Type': 'application/json', **({'Authorization': f'Bearer {key}'} if name == 'ours' else {})})
            r.raise_for_status()
            said[name] = r.json()['predictions'] if name == 'bentoml' else r.json()['outputs'][0]['data']
        if any(max(abs(a - b) for a, b in zip(said['ours'], v)) > 1e-5 for v in said.values()): sys.exit(f"the servers answer differently: {said}")
        results = {}
        for rows in (1, 32):
            scripts = {}
            for name in servers:
                body = v1_body(rows) if name == 'bentoml' else v2_body(rows)
                auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if name == 'ours' else ''
                scripts[name] = tmp/f'{name}{rows}.lua'
                scripts[name].write_text(V2_LUA.format(body=body, auth=auth))
            for _ in range(a.rounds):  # interleaved, so that noise hits every server alike
                for name, (_, url, _) in servers.items():
                    rps, p99 = wrk(url, scripts[name], a.connections, a.seconds)
                    print(f"{rows:>2} row(s) {name}: {rps:,.0f} req/s, p99 {p99:.1f} ms", file=sys.stderr)
                    if (best := results.get((name, rows))) is None or rps > best[0]: results[(name, rows)] = (rps, p99)
    finally:
        for proc, _, _ in servers.values(): proc.send_signal(signal.SIGTERM)
        for proc, _, _ in servers.values():
            try: proc.wait(60)
            except subprocess.TimeoutExpired: proc.kill()
    out = {'benchmark': 'serve_peers'}
    for rows in (1, 32):
        ours = results[('ours', rows)][0]
        for peer in ('mlserver', 'bentoml'):
            out[f'ratio_vs_{peer}_{rows}'] = round(ours / results[(peer, rows)][0], 3)
        print(f"{rows:>2} row(s): ours {ours:,.0f} req/s, MLServer {results[('mlserver', rows)][0]:,.0f}, BentoML {results[('bentoml', rows)][0]:,.0f}"
              " (goal: ours >= 1.5x each, p99 no worse)")
    out['rps'] = {f'{name}_{rows}': round(rps) for (name, rows), (rps, _) in sorted(results.items())}
    out['p99_ms'] = {f'{name}_{rows}': round(p99, 2) for (name, rows), (_, p99) in sorted(results.items())}
    print(json.dumps(out))


if __name__ == '__main__':
    main()

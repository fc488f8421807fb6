"""The model service over a real uvicorn on 127.0.0.1: who may call what, the protocols' shapes, load, fuzzing."""
import asyncio, json, os, signal, socket, subprocess, sys, time
from collections import Counter
from pathlib import Path

import httpx
import jsonschema
import pytest
import torch

from aiinfra_nb.ops.store import get_engine, query
from aiinfra_nb.serve.auth import create_key, revoke_key
from aiinfra_nb.models.tabular import Preprocessor, TabularNet
from aiinfra_nb.models.registry import Registry

BIN = Path(sys.executable).parent
ROLES = ('read', 'predict', 'admin')


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def save_model(reg: Registry, seed: int) -> int:
    torch.manual_seed(seed)
    pre = Preprocessor({'distance': {'mean': 1000.0, 'std': 500.0}}, {'carrier': ['AA', 'UA']})
    return reg.save(TabularNet(1, [3], hidden=[4]), 'delay', preprocessing=pre.to_dict(),
                    features={'numeric': ['distance'], 'categorical': ['carrier'], 'target': 'delayed'})['version']


class Service:
    "A real `aiinfra serve` in its own process, on a free port of 127.0.0.1"
    def __init__(self, tmp: Path, url: str, **settings):
        self.port, self.url = free_port(), url
        self.env = {**os.environ, 'AIINFRA_DB_URL': url, 'AIINFRA_DATA_DIR': str(tmp/'data'), 'AIINFRA_SERVICE_RELOAD_S': '0.5',
                    'AIINFRA_SERVICE_NAME': 'test-api', **{f'AIINFRA_SERVICE_{k.upper()}': str(v) for k, v in settings.items()}}
        self.registry = Registry(tmp/'data/models', get_engine(url))
        self.base = f'http://127.0.0.1:{self.port}'

    def start(self):
        self.proc = subprocess.Popen([str(BIN/'aiinfra'), 'serve', '--port', str(self.port)], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < 60:
            try:
                if httpx.get(f'{self.base}/v2/health/ready', timeout=1).status_code == 200: return self
            except httpx.HTTPError: pass
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.1)
        raise TimeoutError('the service did not become ready')

    def stop(self, sig=signal.SIGTERM) -> str:
        self.proc.send_signal(sig)
        return self.proc.communicate(timeout=60)[1]


@pytest.fixture
def service(tmp_path, sqlite_url):
    svc = Service(tmp_path, sqlite_url, rate_limit='100000/second')
    reg = svc.registry
    reg.promote('delay', v := save_model(reg, 0))
    reg.card_path('delay', v).parent.mkdir(parents=True)
    reg.card_path('delay', v).write_text('<!doctype html><title>delay v1: model card</title>')  # what `aiinfra models card` writes
    svc.keys = {role: create_key(f'{role}-key', role, engine=reg.engine)['secret'] for role in ROLES}
    svc.keys['scoped'] = create_key('scoped-key', 'admin', models=['other'], engine=reg.engine)['secret']
    revoked = create_key('revoked-key', 'admin', engine=reg.engine); revoke_key(revoked['id'], engine=reg.engine)
    svc.keys['revoked'] = revoked['secret']
    svc.keys['expired'] = create_key('expired-key', 'admin', expires='1s', engine=reg.engine)['secret']
    time.sleep(1.1)
    svc.start()
    yield svc
    if svc.proc.poll() is None: svc.stop()


V1 = {'instances': [{'distance': 1200, 'carrier': 'UA'}, {'distance': 90, 'carrier': 'AA'}]}
V2 = {'id': 'q1', 'inputs': [{'name': 'distance', 'shape': [2], 'datatype': 'FP32', 'data': [1200, 90]},
                            {'name': 'carrier', 'shape': [2], 'datatype': 'BYTES', 'data': ['UA', 'AA']}]}
FEEDBACK = {'labels': [{'id': 'q1', 'label': [1, 0]}]}  # the labels of V2's two rows
PUBLIC = {'/v2/health/live', '/v2/health/ready', '/openapi.json', '/docs', '/docs/oauth2-redirect', '/redoc'}


def concrete(path: str) -> str:
    return path.replace('{name}', 'delay').replace('{version}', '1')


def route_of(routes: dict, url: str, method: str) -> tuple[tuple, str | None]:
    "(the route template that serves `method` on `url`, the model name it reads), as Starlette matches them"
    import re
    for path, m in routes:
        rx = '^' + re.sub(r'\\\{(\w+)\\\}', lambda g: f'(?P<{g.group(1)}>[^/]+)', re.escape(path)) + '$'
        if m == method and (hit := re.match(rx, url)): return (path, m), hit.groupdict().get('name')
    return (url, method), None


def test_authorization_matrix(service):
    "Every route x method x caller: 401/403/404/405 exactly where expected; a route without a permission fails the test"
    schema = httpx.get(f'{service.base}/openapi.json').json()
    routes = {(path, method.upper()): op.get('x-permission') for path, ops in schema['paths'].items() for method, op in ops.items()}
    undeclared = [r for r, perm in routes.items() if perm is None and r[0] not in PUBLIC]
    assert not undeclared, f'routes without a permission: {undeclared}'
    callers = {**{r: service.keys[r] for r in ROLES}, 'none': None, 'garbage': 'aik_garbage', 'revoked': service.keys['revoked'],
               'expired': service.keys['expired'], 'scoped to another model': service.keys['scoped']}
    seen = Counter()
    with httpx.Client(base_url=service.base, timeout=10) as c:
        for path in sorted({p for p, _ in routes}):
            for method in ('GET', 'POST', 'PUT', 'DELETE'):
                for who, secret in callers.items():
                    headers = {'Authorization': f'Bearer {secret}'} if secret else {}
                    body = V2 if path.endswith('/infer') else V1 if path.endswith(':predict') else FEEDBACK if path.endswith('/feedback') else None
                    url = concrete(path)
                    r = c.request(method, url, headers=headers, json=body)
                    matched, name = route_of(routes, url, method)  # the route the server matches (GET .../delay:predict is /v1/models/{name})
                    perm = routes.get(matched, 'absent')
                    if perm == 'absent': want = 405
                    elif matched[0] in PUBLIC: want = 200
                    elif who in ('none', 'garbage', 'revoked', 'expired'): want = 401
                    elif perm not in {'read': {'read'}, 'predict': {'read', 'predict'}, 'admin': set(ROLES)}[who if who in ROLES else 'admin']: want = 403
                    elif name is not None and (name != 'delay' or who == 'scoped to another model'): want = 404
                    else: want = 200
                    assert r.status_code == want, (method, path, who, r.status_code, r.text[:300])
                    if r.status_code >= 400: assert set(r.json()) == {'error'} and 'Traceback' not in r.text
                    seen[want] += 1
    assert all(seen[s] for s in (200, 401, 403, 404, 405)), seen


# The Open Inference Protocol's REST bodies, transcribed from its specification (not from our code)
TENSOR = {'type': 'object', 'required': ['name', 'datatype', 'shape'],
          'properties': {'name': {'type': 'string'}, 'datatype': {'enum': ['BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16',
                         'INT32', 'INT64', 'FP16', 'FP32', 'FP64', 'BYTES']}, 'shape': {'type': 'array', 'items': {'type': 'integer'}}}}
SPEC = {
    'server_metadata': {'type': 'object', 'required': ['name', 'version', 'extensions'],
                        'properties': {'name': {'type': 'string'}, 'version': {'type': 'string'}, 'extensions': {'type': 'array', 'items': {'type': 'string'}}}},
    'live': {'type': 'object', 'required': ['live'], 'properties': {'live': {'type': 'boolean'}}},
    'ready': {'type': 'object', 'required': ['ready'], 'properties': {'ready': {'type': 'boolean'}}},
    'model_ready': {'type': 'object', 'required': ['name', 'ready'], 'properties': {'name': {'type': 'string'}, 'ready': {'type': 'boolean'}}},
    'model_metadata': {'type': 'object', 'required': ['name', 'platform', 'inputs', 'outputs'],
                       'properties': {'name': {'type': 'string'}, 'versions': {'type': 'array', 'items': {'type': 'string'}}, 'platform': {'type': 'string'},
                                      'inputs': {'type': 'array', 'items': TENSOR}, 'outputs': {'type': 'array', 'items': TENSOR}}},
    'infer': {'type': 'object', 'required': ['model_name', 'outputs'],
              'properties': {'model_name': {'type': 'string'}, 'model_version': {'type': 'string'}, 'id': {'type': ['string', 'null']},
                             'outputs': {'type': 'array', 'items': {**TENSOR, 'required': ['name', 'datatype', 'shape', 'data'],
                                                                    'properties': {**TENSOR['properties'], 'data': {'type': 'array'}}}}}},
    'error': {'type': 'object', 'required': ['error'], 'properties': {'error': {'type': 'string'}}, 'additionalProperties': False},
}


def test_the_service_registers_the_address_it_serves(service):
    (row,) = query("SELECT url, status FROM services WHERE name = 'test-api'", get_engine(service.url))
    assert row == {'url': service.base, 'status': 'up'}


def test_v2_bodies_follow_the_open_inference_protocol(service):
    auth = {'Authorization': f"Bearer {service.keys['predict']}"}
    with httpx.Client(base_url=service.base, headers=auth, timeout=10) as c:
        jsonschema.validate(c.get('/v2').json(), SPEC['server_metadata'])
        jsonschema.validate(c.get('/v2/health/live').json(), SPEC['live'])
        jsonschema.validate(c.get('/v2/health/ready').json(), SPEC['ready'])
        jsonschema.validate(c.get('/v2/models/delay/ready').json(), SPEC['model_ready'])
        meta = c.get('/v2/models/delay').json()
        jsonschema.validate(meta, SPEC['model_metadata'])
        assert [(i['name'], i['datatype'], i['shape']) for i in meta['inputs']] == [('distance', 'FP32', [-1]), ('carrier', 'BYTES', [-1])]
        r = c.post('/v2/models/delay/versions/1/infer', json=V2).json()
        jsonschema.validate(r, SPEC['infer'])
        assert (r['id'], r['model_version'], r['outputs'][0]['shape'], len(r['outputs'][0]['data'])) == ('q1', '1', [2], 2)
        for bad, says in [({**V2, 'inputs': V2['inputs'][:1]}, "missing inputs: carrier"),
                          ({**V2, 'inputs': [{**V2['inputs'][0], 'datatype': 'BYTES'}, V2['inputs'][1]]}, "input 'distance': BYTES holds text"),
                          ({**V2, 'inputs': [{**V2['inputs'][0], 'shape': [3]}, V2['inputs'][1]]}, "input 'distance': shape [3]")]:
            r = c.post('/v2/models/delay/infer', json=bad)
            assert r.status_code == 422 and says in r.json()['error']
            jsonschema.validate(r.json(), SPEC['error'])
        for v in ('99999999999999999999', '¹'):  # found by the fuzzer: were 500s
            assert c.get(f'/v2/models/delay/versions/{v}').status_code == 404
        v1 = c.post('/v1/models/delay:predict', json=V1).json()
        assert v1['predictions'] == c.post('/v2/models/delay/infer', json=V2).json()['outputs'][0]['data'] and v1['model_version'] == '1'


def test_promotion_is_picked_up_without_restart_and_a_broken_version_is_refused(service):
    auth = {'Authorization': f"Bearer {service.keys['predict']}"}
    v2 = save_model(service.registry, 1)
    service.registry.promote('delay', v2)
    t0 = time.time()
    while httpx.post(f'{service.base}/v1/models/delay:predict', json=V1, headers=auth).json()['model_version'] != str(v2):
        assert time.time() - t0 < 10, 'the promoted version was not picked up'
        time.sleep(0.1)
    v3 = save_model(service.registry, 2)
    service.registry.promote('delay', v3)
    (service.registry.dir('delay', v3)/'model.safetensors').write_bytes(b'broken after promotion')
    time.sleep(2)
    assert httpx.post(f'{service.base}/v1/models/delay:predict', json=V1, headers=auth).json()['model_version'] == str(v2)  # the old one serves
    assert query("SELECT count(*) AS n FROM events WHERE message LIKE 'refused to serve delay v3%'", get_engine(service.url))[0]['n'] >= 1


async def _load(base: str, keys: dict, n: int, concurrency: int, on_half=None, lost: list | None = None) -> list:
    "n mixed requests (valid and invalid) at `concurrency`; returns (status, request id, model version) of each answered one"
    mix = [('predict', 'POST', '/v1/models/delay:predict', V1), ('predict', 'POST', '/v2/models/delay/infer', V2),
           (None, 'POST', '/v1/models/delay:predict', V1), ('read', 'POST', '/v1/models/delay:predict', V1),
           ('predict', 'GET', '/v2/models/nope', None), ('predict', 'POST', '/v1/models/delay:predict', {'instances': [{'carrier': 'UA'}]}),
           ('predict', 'POST', '/v1/models/delay:predict', {'instances': [{'distance': 1, 'carrier': 'UA'}] * 20_000}),
           ('flood', 'GET', '/v2', None)]
    out, queue = [], asyncio.Queue()
    for i in range(n): queue.put_nowait(i)
    # correctness, not latency: a slow machine is no failure. A connection idle for uvicorn's keep-alive (5 s, httpx's default too) is
    # closed by the server; reused at that very moment it fails before the server reads the request, so the client lets go first
    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as c:
        async def worker():
            while not queue.empty():
                i = queue.get_nowait()
                if on_half and i == n // 2: await asyncio.to_thread(on_half)  # off the loop: the other requests go on meanwhile
                who, method, path, body = mix[i % len(mix)]
                headers = {'Authorization': f'Bearer {keys[who]}'} if who else {}
                try: r = await c.request(method, path, json=body, headers=headers)
                except httpx.TransportError:  # not accepted: the server was stopping, or it refused a body it would not read
                    if lost is not None: lost.append(mix[i % len(mix)])
                    continue
                out.append((r.status_code, r.headers.get('x-request-id'), (r.json() if r.status_code == 200 else {}).get('model_version')))
        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return out


@pytest.fixture
def loaded(tmp_path, sqlite_url):
    svc = Service(tmp_path, sqlite_url, rate_limit='50/second', max_rows=10_000)
    svc.registry.promote('delay', save_model(svc.registry, 0))
    svc.keys = {r: create_key(f'{r}-key', r, engine=svc.registry.engine)['secret'] for r in ROLES}
    svc.keys['flood'] = create_key('flood-key', 'read', engine=svc.registry.engine)['secret']
    yield svc.start()
    if svc.proc.poll() is None: svc.stop()


@pytest.mark.load
def test_load_mixed_requests_no_5xx_one_audit_row_each_and_a_promotion_midway(loaded):
    "10,000 requests at 32 connections, valid and invalid (401, 403, 404, 413, 422, 429): no 5xx, one audit row per request"
    v2 = [None]
    def promote():
        v2[0] = save_model(loaded.registry, 5); loaded.registry.promote('delay', v2[0])
    lost = []  # an oversized body may be cut off by the server's 413 while the client still sends it (HTTP allows it)
    answers = asyncio.run(_load(loaded.base, loaded.keys, 10_000, 32, on_half=promote, lost=lost))
    statuses = Counter(s for s, _, _ in answers)
    assert all(len(body['instances']) == 20_000 for *_, body in lost), lost
    assert len(answers) + len(lost) == 10_000 and not [s for s in statuses if s >= 500], statuses
    assert {200, 401, 403, 404, 413, 422, 429} <= set(statuses), statuses
    assert {'1', str(v2[0])} <= {v for _, _, v in answers if v}  # the switch between versions, with no failed request
    loaded.stop()  # SIGTERM: the audit queue is flushed on the way out
    audited = query("SELECT request_id, status_code, model_version FROM audit WHERE path != '/v2/health/ready' AND method != 'ADMIN'", get_engine(loaded.url))
    # every answered request has its row (the keys' creation and the promotion are audit rows too, method ADMIN: not requests);
    # a lost one has its 413 row when the server read it before the client gave up
    cut = len(audited) - len(answers)
    assert 0 <= cut <= len(lost) and {r['request_id'] for r in audited} >= {rid for _, rid, _ in answers}
    assert Counter(r['status_code'] for r in audited) == statuses + Counter({413: cut})
    assert {r['model_version'] for r in audited if r['status_code'] == 200 and r['model_version']} == {1, v2[0]}


@pytest.mark.load
def test_sigterm_during_load_loses_no_accepted_request_and_no_audit_row(loaded):
    answers = asyncio.run(_load(loaded.base, loaded.keys, 3_000, 32, on_half=lambda: loaded.proc.send_signal(signal.SIGTERM)))
    loaded.proc.communicate(timeout=60)
    assert not [s for s, _, _ in answers if s >= 500]
    audited = {r['request_id'] for r in query('SELECT request_id FROM audit', get_engine(loaded.url))}
    assert {rid for _, rid, _ in answers} <= audited  # every answered request was audited
    assert query("SELECT status FROM services WHERE name = 'test-api'", get_engine(loaded.url)) == [{'status': 'down'}]


@pytest.mark.load
def test_fuzzed_from_its_own_openapi_schema(service):
    "schemathesis generates requests from the service's OpenAPI schema: no 5xx, no traceback in any body"
    p = subprocess.run([str(BIN/'schemathesis'), 'run', f'{service.base}/openapi.json', '--checks', 'not_a_server_error',
                        '-H', f"Authorization: Bearer {service.keys['admin']}", '--max-examples', '100', '--request-timeout', '10',
                        '--phases', 'examples,coverage,fuzzing'],
                       capture_output=True, text=True, timeout=600, env={**os.environ, 'NO_COLOR': '1'}, cwd=service.registry.root.parent)  # its cache stays out of the repo
    assert p.returncode == 0, p.stdout[-4000:]
    tracebacks = query("SELECT count(*) AS n FROM audit WHERE error LIKE '%Traceback%'", get_engine(service.url))
    assert tracebacks == [{'n': 0}]


def test_rate_limits_are_shared_through_redis():
    "Two limiters (two workers) on one Redis count one budget per key"
    import uuid
    from aiinfra_nb.serve.auth import RateLimits
    try:
        a, b = RateLimits('5/minute', 'redis://127.0.0.1:6379'), RateLimits('5/minute', 'redis://127.0.0.1:6379')
        key = uuid.uuid4().hex
        async def six(): return [await (a if i % 2 else b).hit(key) for i in range(6)]
        hits = asyncio.run(six())
    except Exception as e: pytest.skip(f'no Redis at 127.0.0.1:6379 ({e})')
    assert hits[:5] == [None] * 5 and hits[5] is not None and 0 < hits[5] <= 60


def test_secrets_never_reach_the_audit_or_the_logs(loaded):
    asyncio.run(_load(loaded.base, loaded.keys, 300, 8))
    loaded.stop()
    eng = get_engine(loaded.url)
    for table in ('audit', 'events'):
        text = json.dumps(query(f'SELECT * FROM {table}', eng), default=str)
        assert not [k for k in loaded.keys.values() if k in text], table


@pytest.mark.load
def test_saturation_is_a_503_not_a_queue(tmp_path, sqlite_url):
    "More requests in flight than [service] max_concurrency: the excess get 503 with Retry-After, never a 500"
    svc = Service(tmp_path, sqlite_url, rate_limit='100000/second', max_concurrency=1)
    svc.registry.promote('delay', save_model(svc.registry, 0))
    svc.keys = {r: create_key(f'{r}-key', r, engine=svc.registry.engine)['secret'] for r in ROLES}
    svc.keys['flood'] = svc.keys['read']
    svc.start()
    try:
        statuses = Counter(s for s, _, _ in asyncio.run(_load(svc.base, svc.keys, 800, 32)))
        assert statuses[503] > 0 and not [s for s in statuses if s >= 500 and s != 503], statuses
    finally: svc.stop()


def test_metrics_count_every_worker(tmp_path, sqlite_url):
    "With two workers, /metrics reports the requests of both (Prometheus multiprocess mode)"
    svc = Service(tmp_path, sqlite_url, rate_limit='100000/second', workers=2)
    svc.registry.promote('delay', save_model(svc.registry, 0))
    admin = create_key('admin', 'admin', engine=svc.registry.engine)['secret']
    svc.start()
    try:
        auth = {'Authorization': f'Bearer {admin}'}
        with httpx.Client(base_url=svc.base, headers=auth) as c:  # new connections: the kernel spreads them over the workers
            for _ in range(200): httpx.get(f'{svc.base}/v2', headers=auth)
            text = c.get('/metrics').text
        served = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith('aiinfra_requests_total{') and 'status="200"' in l)
        assert served >= 200, text[:2000]
        pids = {r['pid'] for r in query("SELECT pid FROM services", get_engine(sqlite_url))}
        assert len(pids) >= 1
    finally: svc.stop()


def test_two_workers_keep_one_budget_one_audit_and_one_count(tmp_path, sqlite_url):
    """`--workers 2` with limits in Redis: a key's rate limit is one budget for both workers, a revoked key is refused by
    both, every request has exactly one audit row, and /metrics sums what both answered"""
    import redis
    try: redis.Redis(host='127.0.0.1', port=6379, socket_timeout=2).ping()
    except Exception as e: pytest.skip(f'no Redis at 127.0.0.1:6379 ({e})')
    prom_dir = tmp_path/'prometheus'; prom_dir.mkdir()
    svc = Service(tmp_path, sqlite_url, rate_limit='30/minute', workers=2, limits_url='redis://127.0.0.1:6379', key_cache_s=0.5)
    svc.env['PROMETHEUS_MULTIPROC_DIR'] = str(prom_dir)
    eng = svc.registry.engine
    svc.registry.promote('delay', save_model(svc.registry, 0))
    spender, doomed = (create_key(n, 'predict', engine=eng) for n in ('spender', 'doomed'))
    admin = create_key('admin', 'admin', engine=eng)['secret']
    svc.start()
    try:
        ask = lambda key: httpx.post(f'{svc.base}/v1/models/delay:predict', json=V1, headers={'Authorization': f"Bearer {key['secret']}"},
                                     timeout=30).status_code  # a new connection each: the kernel spreads them over the workers
        spent = Counter(ask(spender) for _ in range(45))
        assert spent == Counter({200: 30, 429: 15}), spent  # one budget of 30 a minute, not 30 per worker
        assert [ask(doomed) for _ in range(10)] == [200] * 10
        revoke_key(doomed['id'], engine=eng)
        time.sleep(1.0)  # longer than [service] key_cache_s
        assert [ask(doomed) for _ in range(10)] == [401] * 10
        metrics = [httpx.get(f'{svc.base}/metrics', headers={'Authorization': f'Bearer {admin}'}).text for _ in range(4)]
    finally: svc.stop()
    assert len(list(prom_dir.glob('counter_*.db'))) == 2  # both workers answered requests
    counted = Counter()
    for line in metrics[-1].splitlines():
        if line.startswith('aiinfra_requests_total{') and 'method="POST"' in line:
            counted[int(line.split('status="')[1].split('"')[0])] += float(line.split()[-1])
    assert counted == Counter({200: 40, 429: 15, 401: 10}), counted  # summed over both workers, every answer once
    rows = query("SELECT request_id, status_code FROM audit WHERE path = '/v1/models/delay:predict'", get_engine(sqlite_url))
    assert len(rows) == 65 and len({r['request_id'] for r in rows}) == 65 and Counter(r['status_code'] for r in rows) == counted

"""The service as real clients speak to it: Triton's own V2 client (`tritonclient`, with its defaults: binary tensor data,
compression), curl without a JSON Content-Type, compressed bodies and a gzip bomb, lengths that do not add up, values
that are not what their datatype says; and what a hostile caller can do with slow or deep requests."""
import gzip, json, socket, struct, subprocess, time, zlib

import httpx
import numpy as np
import pytest

from aiinfra_nb.ops.store import get_engine, query
from aiinfra_nb.serve.auth import create_key
from test_serve import ROLES, V1, V2, Service, save_model, service  # noqa: F401  (service: the fixture)


def predictions(svc) -> list[float]:
    "The V1 answer for the two rows of V1 (= V2's): what every other form must give"
    r = httpx.post(f'{svc.base}/v1/models/delay:predict', json=V1, headers={'Authorization': f"Bearer {svc.keys['predict']}"})
    assert r.status_code == 200, r.text
    return r.json()['predictions']


def test_tritonclient_with_its_defaults_binary_and_json_and_compressed(service):
    import tritonclient.http as tc
    auth = {'Authorization': f"Bearer {service.keys['predict']}"}
    want = predictions(service)
    client = tc.InferenceServerClient(url=f'127.0.0.1:{service.port}')
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert 'binary_tensor_data' in client.get_server_metadata(headers=dict(auth))['extensions']
        assert [i['name'] for i in client.get_model_metadata('delay', headers=dict(auth))['inputs']] == ['distance', 'carrier']
        for binary in (True, False):
            distance, carrier = tc.InferInput('distance', [2], 'FP32'), tc.InferInput('carrier', [2], 'BYTES')
            distance.set_data_from_numpy(np.array([1200, 90], dtype=np.float32), binary_data=binary)
            carrier.set_data_from_numpy(np.array([b'UA', b'AA'], dtype=np.object_), binary_data=binary)
            for outputs, compression in ((None, None), ([tc.InferRequestedOutput('probability', binary_data=binary)], 'gzip'),
                                         ([tc.InferRequestedOutput('probability', binary_data=not binary)], 'deflate')):
                r = client.infer('delay', [distance, carrier], outputs=outputs, headers=dict(auth), request_id='t1',  # it writes into the dict it is given
                                 request_compression_algorithm=compression)
                assert r.as_numpy('probability').tolist() == pytest.approx(want, rel=1e-6), (binary, outputs, compression)
                assert r.get_response()['model_version'] == '1' and r.get_response()['id'] == 't1'
        with pytest.raises(tc.InferenceServerException, match='401'):
            client.infer('delay', [distance, carrier])  # no key
    finally: client.close()
    service.stop()  # SIGTERM flushes the audit
    forms = {r['form'] for r in query("SELECT form, request_bytes FROM audit WHERE path = '/v2/models/delay/infer'", get_engine(service.url))}
    assert forms >= {'binary', 'binary+gzip', 'binary+deflate', 'json', 'json+gzip', 'json+deflate'}, forms


def curl(svc, path: str, body: bytes, *headers: str) -> tuple[int, dict]:
    p = subprocess.run(['curl', '-s', '-w', '\n%{http_code}', '-H', f"Authorization: Bearer {svc.keys['predict']}", *[a for h in headers for a in ('-H', h)],
                        '--data-binary', '@-', f'{svc.base}{path}'], input=body, capture_output=True, timeout=60)
    text, _, code = p.stdout.decode().rpartition('\n')
    return int(code), json.loads(text)


def test_a_json_body_whatever_its_content_type(service):
    "curl sends --data-binary as a form unless told otherwise; with no Content-Type, text/plain or octet-stream the JSON is read"
    want = predictions(service)
    for header in ('Content-Type:', 'Content-Type: text/plain', 'Content-Type: application/octet-stream', 'Content-Type: application/x-www-form-urlencoded'):
        code, answer = curl(service, '/v1/models/delay:predict', json.dumps(V1).encode(), header)
        assert (code, answer['predictions']) == (200, want), (header, answer)
        code, answer = curl(service, '/v2/models/delay/infer', json.dumps(V2).encode(), header)
        assert (code, answer['outputs'][0]['data']) == (200, want), (header, answer)
    code, answer = curl(service, '/v1/models/delay:predict', b'instances=1&x=2', 'Content-Type:')
    assert code == 422 and 'is not JSON' in answer['error']


def test_compressed_bodies_and_a_gzip_bomb(tmp_path, sqlite_url):
    svc = Service(tmp_path, sqlite_url, max_body_bytes=100_000)
    svc.registry.promote('delay', save_model(svc.registry, 0))
    key = create_key('k', 'predict', engine=svc.registry.engine)['secret']
    svc.start()
    try:
        auth = {'Authorization': f'Bearer {key}'}
        for enc, pack in (('gzip', gzip.compress), ('deflate', zlib.compress)):
            r = httpx.post(f'{svc.base}/v1/models/delay:predict', content=pack(json.dumps(V1).encode()), headers={**auth, 'Content-Encoding': enc})
            assert r.status_code == 200 and len(r.json()['predictions']) == 2, r.text
        bomb = gzip.compress(b' ' * 50_000_000)  # 50 MB of spaces in ~50 KB: under the body limit as sent, not inflated
        assert len(bomb) < 100_000
        t0 = time.perf_counter()
        r = httpx.post(f'{svc.base}/v1/models/delay:predict', content=bomb, headers={**auth, 'Content-Encoding': 'gzip'})
        assert r.status_code == 413 and 'once inflated' in r.json()['error'] and time.perf_counter() - t0 < 30
        def chunks():  # no Content-Length: the limit is found as the bytes come
            for _ in range(30): yield b' ' * 10_000
        r = httpx.post(f'{svc.base}/v1/models/delay:predict', content=chunks(), headers=auth)
        assert r.status_code == 413 and 'over 100,000 bytes' in r.json()['error'], r.text
        r = httpx.post(f'{svc.base}/v1/models/delay:predict', content=b'not gzip at all', headers={**auth, 'Content-Encoding': 'gzip'})
        assert r.status_code == 400 and 'not valid gzip' in r.json()['error']
        assert httpx.post(f'{svc.base}/v1/models/delay:predict', content=b'{}', headers={**auth, 'Content-Encoding': 'br'}).status_code == 415
    finally: svc.stop()


def binary_body(tensors: list[tuple[str, str, list]], **params) -> tuple[bytes, dict]:
    "A V2 request with binary tensor data, written here by hand: (body, headers)"
    head, raw = {'inputs': [], 'parameters': params}, b''
    for name, datatype, values in tensors:
        data = (b''.join(struct.pack('<I', len(v)) + v for v in values) if datatype == 'BYTES' else np.asarray(values, dtype='<f4').tobytes())
        head['inputs'].append({'name': name, 'datatype': datatype, 'shape': [len(values)], 'parameters': {'binary_data_size': len(data)}})
        raw += data
    text = json.dumps(head).encode()
    return text + raw, {'Inference-Header-Content-Length': str(len(text))}


def test_binary_lengths_that_do_not_add_up_are_400s(service):
    auth = {'Authorization': f"Bearer {service.keys['predict']}"}
    url = f'{service.base}/v2/models/delay/infer'
    body, h = binary_body([('distance', 'FP32', [1200.0, 90.0]), ('carrier', 'BYTES', [b'UA', b'AA'])], binary_data_output=True)
    r = httpx.post(url, content=body, headers={**auth, **h})
    n = int(r.headers['inference-header-content-length'])
    assert r.status_code == 200 and np.frombuffer(r.content[n:], '<f4').tolist() == pytest.approx(predictions(service))
    cases = [(body + b'!!', h, 'carries 22 binary bytes after the JSON header, the inputs declare 20'),
             (body[:-3], h, 'only 9 binary bytes are left'),
             (body, {'Inference-Header-Content-Length': str(len(body) + 1)}, 'Inference-Header-Content-Length'),
             (body, {'Inference-Header-Content-Length': 'ten'}, 'Inference-Header-Content-Length'),
             (body.replace(struct.pack('<I', 2) + b'UA', struct.pack('<I', 200) + b'UA'), h, 'BYTES element 0 says 200 bytes')]
    for b, hh, says in cases:
        r = httpx.post(url, content=b, headers={**auth, **hh})
        assert r.status_code == 400 and says in r.json()['error'], (says, r.status_code, r.text)


BAD_VALUES = [('"abc"', 'FP32', 'holds numbers'), ('{}', 'FP32', 'holds numbers'), ('[["x"]]', 'FP32', 'holds numbers'), ('1e308', 'FP32', 'is not a FP32 value'),
              ('NaN', 'FP32', 'NaN is not a JSON number'), ('Infinity', 'FP32', 'Infinity is not a JSON number'), ('1e400', 'FP64', 'inf is not a FP64'),
              ('1e6', 'INT8', 'is not a INT8 value'), ('-5', 'UINT8', 'is not a UINT8 value'), ('7', 'BOOL', 'BOOL holds true or false')]


def test_values_are_what_their_datatype_says_or_a_422_naming_the_input(service):
    auth = {'Authorization': f"Bearer {service.keys['predict']}", 'Content-Type': 'application/json'}
    carrier = '{"name": "carrier", "datatype": "BYTES", "shape": [1], "data": ["UA"]}'
    for value, datatype, says in BAD_VALUES:  # written as text: NaN and Infinity are what a careless client sends, not JSON
        body = f'{{"inputs": [{{"name": "distance", "datatype": "{datatype}", "shape": [1, 1], "data": [{value}]}}, {carrier}]}}'
        r = httpx.post(f'{service.base}/v2/models/delay/infer', content=body, headers=auth)
        assert r.status_code == 422 and says in r.json()['error'] and ('distance' in r.json()['error'] or 'JSON' in r.json()['error']), (value, datatype, r.text)
    twice = {'inputs': [V2['inputs'][0], V2['inputs'][0], V2['inputs'][1]]}
    r = httpx.post(f'{service.base}/v2/models/delay/infer', json=twice, headers=auth)
    assert r.status_code == 422 and "input 'distance' is given twice" in r.json()['error']
    extra = {'inputs': [*V2['inputs'], {'name': 'tail_number', 'datatype': 'BYTES', 'shape': [2], 'data': ['N1', 'N2']}]}
    r = httpx.post(f'{service.base}/v2/models/delay/infer', json=extra, headers=auth)
    assert r.status_code == 422 and 'unknown inputs: tail_number' in r.json()['error']
    nulls = {'inputs': [{**V2['inputs'][0], 'data': [None, 90]}, V2['inputs'][1]]}  # the protocol's explicit null: a missing value
    assert httpx.post(f'{service.base}/v2/models/delay/infer', json=nulls, headers=auth).status_code == 200


def test_deep_and_huge_requests_are_4xx_and_write_little(service):
    "Data nested 800 levels deep and a version of 4,301 digits: 4xx, no traceback, and the service's stderr stays small"
    auth = {'Authorization': f"Bearer {service.keys['predict']}"}
    deep = '{"inputs": [{"name": "distance", "datatype": "FP32", "shape": [1], "data": ' + '[' * 800 + '1' + ']' * 800 + '}]}'
    for _ in range(20):
        r = httpx.post(f'{service.base}/v2/models/delay/infer', content=deep, headers=auth)
        assert r.status_code == 422 and 'nested more than' in r.json()['error'], r.text
        r = httpx.get(f'{service.base}/v2/models/delay/versions/{"9" * 4301}', headers=auth)
        assert r.status_code == 404 and len(r.text) < 300
    stderr = service.stop()
    assert 'Traceback' not in stderr and len(stderr) < 10_000, stderr[-2000:]
    assert query("SELECT count(*) AS n FROM events WHERE level = 'ERROR'", get_engine(service.url)) == [{'n': 0}]


def test_idle_connections_without_a_key_hold_nothing(tmp_path, sqlite_url):
    "64 sockets that send a predict's headers and no body: health, readiness and keyed requests still answer; a slow body is a 408"
    svc = Service(tmp_path, sqlite_url, max_concurrency=8, body_timeout_s=1, rate_limit='100000/second')
    svc.registry.promote('delay', save_model(svc.registry, 0))
    key = create_key('k', 'predict', engine=svc.registry.engine)['secret']
    svc.start()
    held = []
    try:
        for _ in range(64):
            s = socket.create_connection(('127.0.0.1', svc.port))
            s.sendall(b'POST /v1/models/delay:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n')
            held.append(s)
        time.sleep(0.5)
        assert httpx.get(f'{svc.base}/v2/health/ready', timeout=5).status_code == 200
        assert httpx.get(f'{svc.base}/v2/health/live', timeout=5).status_code == 200
        r = httpx.post(f'{svc.base}/v1/models/delay:predict', json=V1, headers={'Authorization': f'Bearer {key}'}, timeout=5)
        assert r.status_code == 200, r.text
        assert all(s.recv(4096).startswith(b'HTTP/1.1 401') for s in held[:8])  # answered from their headers, body or not
        slow = socket.create_connection(('127.0.0.1', svc.port))
        slow.sendall(b'POST /v1/models/delay:predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' + key.encode() + b'\r\nContent-Length: 10\r\n\r\n')
        slow.settimeout(10)
        assert slow.recv(4096).startswith(b'HTTP/1.1 408')
        held.append(slow)
    finally:
        for s in held: s.close()
        svc.stop()


def test_low_findings_redirects_docs_key_guessing_and_readiness(tmp_path, sqlite_url):
    "No redirect reflects the Host header; the docs (a CDN's Swagger UI) are off; guessing keys is rate limited; a failing store is not ready"
    svc = Service(tmp_path, sqlite_url, rate_limit='20/minute')
    svc.registry.promote('delay', save_model(svc.registry, 0))
    svc.start()
    try:
        r = httpx.get(f'{svc.base}/v2/models/delay/', headers={'Host': 'evil.example'})
        assert r.status_code == 404 and 'location' not in r.headers
        assert httpx.get(f'{svc.base}/docs').status_code == 404 and httpx.get(f'{svc.base}/openapi.json').status_code == 200
        codes = [httpx.get(f'{svc.base}/v2/models/delay', headers={'Authorization': f'Bearer aik_guess{i}'}).status_code for i in range(25)]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}, codes
        assert httpx.get(f'{svc.base}/v2/health/ready').status_code == 200
        db = tmp_path/'store.db'
        for f in (db, db.with_name('store.db-wal'), db.with_name('store.db-shm')):
            if f.exists(): f.write_bytes(b'this is not a database' * 100)
        t0 = time.time()
        while httpx.get(f'{svc.base}/v2/health/ready').status_code == 200:
            assert time.time() - t0 < 20, 'a broken store left the service ready'
            time.sleep(0.2)
    finally: svc.stop()

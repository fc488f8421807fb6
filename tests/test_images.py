"""An image model served: the digits trained by `fit` (a small CNN on a folder of PNG files), promoted, and asked by real
clients: Triton's `tritonclient` with its defaults (the files as binary BYTES) and in JSON (base64), the pixels as UINT8
and FP32 tensors, V1 `{"b64": ...}` instances through curl; bad images are 422s naming the instance, too many pixels or
images 413s; the prediction log keeps each image's statistics, not its pixels."""
import base64, io, json, subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from aiinfra_nb.data.imagesets import digits_folder, png_bomb
from aiinfra_nb.data.io import Catalog
from aiinfra_nb.serve.auth import create_key
from test_serve import Service


def png(a: np.ndarray) -> bytes:
    b = io.BytesIO(); Image.fromarray(a.astype('uint8'), 'L').save(b, 'PNG'); return b.getvalue()


@pytest.fixture
def digits_service(tmp_path, sqlite_url, monkeypatch):
    "A digits model trained by fit on the image dataset, promoted and served"
    from aiinfra_nb.train.fit import fit
    from aiinfra_nb.train.imagedata import ImageDataModule
    monkeypatch.setenv('AIINFRA_DB_URL', sqlite_url); monkeypatch.setenv('AIINFRA_DATA_DIR', str(tmp_path/'data'))
    monkeypatch.setenv('AIINFRA_TRAIN_CHECKPOINTS', str(tmp_path/'ckpt'))
    svc = Service(tmp_path, sqlite_url, rate_limit='100000/second', max_rows=100)
    cat = Catalog(tmp_path/'data')
    cat.save_images(digits_folder(tmp_path/'digits'), 'raw/digits', progress=False)
    res = fit(ImageDataModule('raw/digits', catalog=cat, batch_size=64, cache=tmp_path/'cache', progress=False),
              name='digits', lr=0.01, max_epochs=8, registry=svc.registry, validation_catalog=cat, progress=False, accelerator='cpu')
    assert res.status == 'finished', res
    svc.registry.promote('digits', res.model_version)
    svc.key = create_key('k', 'predict', engine=svc.registry.engine)['secret']
    svc.test = cat.images('raw/digits').filter(pl.col('split') == 'test')
    yield svc.start()
    if svc.proc.poll() is None: svc.stop()


def curl(svc, path: str, body: dict) -> tuple[int, dict]:
    p = subprocess.run(['curl', '-s', '-w', '\n%{http_code}', '-H', f'Authorization: Bearer {svc.key}', '-H', 'Content-Type: application/json',
                        '--data-binary', '@-', f'{svc.base}{path}'], input=json.dumps(body).encode(), capture_output=True, timeout=60)
    text, _, code = p.stdout.decode().rpartition('\n')
    return int(code), json.loads(text)


def test_digits_served_to_real_clients_in_every_form(digits_service):
    import tritonclient.http as tc
    svc, auth = digits_service, {'Authorization': f'Bearer {digits_service.key}'}
    files = [open(f, 'rb').read() for f in svc.test['file']]
    truth = [int(label) for label in svc.test['label']]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(f))) for f in files])[:, None]  # [N, 1, 8, 8] uint8
    client = tc.InferenceServerClient(url=f'127.0.0.1:{svc.port}')
    try:
        meta = client.get_model_metadata('digits', headers=dict(auth))
        assert [(i['name'], i['datatype']) for i in meta['inputs']] == [('image', 'BYTES')] and meta['outputs'][0]['shape'] == [-1, 10]
        answers = {}
        for i in range(0, len(files), 100):  # the service's row limit: 100 a request
            image = tc.InferInput('image', [len(files[i:i + 100])], 'BYTES')
            image.set_data_from_numpy(np.array(files[i:i + 100], dtype=np.object_))  # its default: binary tensor data, the files' own bytes
            answers.setdefault('binary', []).extend(client.infer('digits', [image], headers=dict(auth)).as_numpy('probability').tolist())
            b64 = tc.InferInput('image', [len(files[i:i + 100])], 'BYTES')
            b64.set_data_from_numpy(np.array([base64.b64encode(f) for f in files[i:i + 100]], dtype=np.object_), binary_data=False)
            answers.setdefault('json', []).extend(client.infer('digits', [b64], headers=dict(auth)).as_numpy('probability').tolist())
            for dtype, scale in (('UINT8', 1), ('FP32', 255)):
                t = tc.InferInput('image', list(pixels[i:i + 100].shape), dtype)
                t.set_data_from_numpy((pixels[i:i + 100] / scale).astype(np.uint8 if dtype == 'UINT8' else np.float32))
                answers.setdefault(dtype, []).extend(client.infer('digits', [t], headers=dict(auth)).as_numpy('probability').tolist())
    finally: client.close()
    for form, probs in answers.items():
        assert np.allclose(probs, answers['binary'], atol=1e-5), form  # the same pixels, the same answer, however they came
    accuracy = np.mean(np.argmax(answers['binary'], 1) == truth)
    assert accuracy >= 0.9, accuracy

    code, v1 = curl(svc, '/v1/models/digits:predict', {'instances': [{'image': {'b64': base64.b64encode(f).decode()}} for f in files[:3]]})
    assert code == 200 and np.allclose(v1['predictions'], answers['binary'][:3], atol=1e-5), v1
    code, v1 = curl(svc, '/v1/models/digits:predict', {'instances': [{'b64': base64.b64encode(files[0]).decode()}]})
    assert code == 200 and np.allclose(v1['predictions'][0], answers['binary'][0], atol=1e-5)

    good = base64.b64encode(files[0]).decode()
    bad = [({'instances': [{'image': {'b64': good}}, {'image': {'b64': base64.b64encode(b'hello, not a png').decode()}}]}, 422, 'instance 1: not a PNG or JPEG image'),
           ({'instances': [{'image': {'b64': base64.b64encode(files[1][:-20]).decode()}}]}, 422, 'instance 0: unreadable or truncated'),
           ({'instances': [{'image': {'b64': 'no base64 here!'}}]}, 422, 'instance 0: not base64 text'),
           ({'instances': [{'image': good}]}, 422, 'instance 0: expected {"image": {"b64"'),
           ({'instances': [{'image': {'b64': good}}] * 101}, 413, '101 images: at most 100 per request')]
    bomb = png_bomb(svc.registry.root.parent/'bomb.png')
    bad.append(({'instances': [{'image': {'b64': base64.b64encode(bomb.read_bytes()).decode()}}]}, 413, 'instance 0: too many pixels, a decompression bomb (Image size (400000000 pixels) exceeds limit'))
    for body, status, says in bad:
        code, answer = curl(svc, '/v1/models/digits:predict', body)
        assert (code, says in answer.get('error', '')) == (status, True), (says, code, answer)
    v2 = {'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': [1, 1, 9, 9], 'data': [0] * 81}]}
    code, answer = curl(svc, '/v2/models/digits/infer', v2)
    assert code == 422 and 'expected [images, 1, 8, 8]' in answer['error'], answer

    svc.stop()  # SIGTERM flushes the prediction log
    log = pl.concat([pl.read_parquet(p) for p in (svc.registry.root.parent/'monitoring').rglob('*.parquet')], how='diagonal_relaxed')
    assert {'width', 'height', 'brightness', 'contrast', 'embedding_norm'} <= set(log.columns), log.columns
    assert not [c for c in log.columns if 'pixel' in c or c == 'image']
    served = log.filter(pl.col('width').is_not_null())
    assert served.height >= 4 * len(files) and set(served['width']) == {8} and served['embedding_norm'].min() > 0

    from aiinfra_nb.core import Project
    from aiinfra_nb.monitor import monitor_model
    checked = monitor_model(Project.here(), 'digits')  # the served images' statistics against the validation images'
    assert {'drift/share', 'drift/brightness', 'drift/embedding_norm', 'drift/prediction'} <= set(checked['metrics']), checked
    assert checked['metrics']['rows'] == served.height and Path(checked['report']).is_file()

"""Image training and serving, each side by side with a hand-written peer in one run.

Training: `fit` on scikit-learn's digits (1,797 PNG files of 8×8 grey pixels, saved as a catalog image dataset and decoded
once by `ImageDataModule`) against a hand-written PyTorch loop on the same uint8 tensors: the same `SmallCNN`, the same
batches, the same random rotation and shift of each training batch (kornia: torchvision's own transforms need its compiled
operators, whose CPU build the package index here lacks), AdamW, and a validation pass per epoch. Two figures, in
alternating rounds (best of each): images/s per epoch (an epoch's training pass: `fit`'s `epoch_s` metric, the loop's
own clock around the same pass), the goal's measure; and images/s over the whole call (training images × epochs /
seconds), where `fit` also pays for what it does besides (its run in the store, the machine ledger, a checkpoint and the
metrics each epoch, the validation pass, the registration).

Serving: `aiinfra serve` with the trained model against a bare FastAPI app that decodes the same PNG with Pillow and
runs the same model, one image per V1 request (`{"instances": [{"image": {"b64": ...}}]}`), wrk at 16 connections,
interleaved rounds, best of each. The last line is one JSON object.
"""
import argparse, base64, json, os, signal, statistics, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve import BIN, LUA, ensure_wrk, free_port, wait_ready, wrk  # noqa: E402  (the same load harness as the tabular service's)

BARE = textwrap.dedent("""
    import base64, io, os
    import numpy as np, torch
    from PIL import Image
    from fastapi import FastAPI, Request
    from aiinfra_nb.ops.store import get_engine
    from aiinfra_nb.models.registry import Registry
    model, meta = Registry(os.environ['BENCH_MODELS'], get_engine(os.environ['AIINFRA_DB_URL'])).load('digits', stage='production')
    app = FastAPI()

    @app.post('/v1/models/digits:predict')
    async def predict(request: Request):
        rows = (await request.json())['instances']
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(io.BytesIO(base64.b64decode(r['image']['b64']))).convert('L'))).unsqueeze(0) for r in rows])
        with torch.inference_mode(): out = model(x).softmax(1).tolist()
        return {'predictions': out}
""")


def raw_loop(dm, epochs: int, lr: float, seed: int) -> tuple[float, list[float], float]:
    "(seconds, each epoch's training pass in seconds, last validation accuracy) of a hand-written loop over the data module's tensors"
    import torch
    import torch.nn.functional as F
    from aiinfra_nb.models.images import SmallCNN
    from aiinfra_nb.train.system import augmentation
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = SmallCNN(**dm.network_inputs(), hidden=[32, 64], dropout=0.1, task='multiclass', n_classes=len(dm.classes))
    opt, aug = torch.optim.AdamW(model.parameters(), lr=lr), augmentation(degrees=10, translate=0.1)
    (x, y), (xv, yv) = dm.train_set.tensors, dm.val_set.tensors
    g, passes = torch.Generator().manual_seed(seed), []
    for _ in range(epochs):
        t1 = time.perf_counter()
        model.train()
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), dm.batch_size):
            rows = order[i:i + dm.batch_size]
            loss = F.cross_entropy(model(aug(x[rows].float() / 255)), y[rows].long())
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        passes.append(time.perf_counter() - t1)
        model.eval()
        with torch.no_grad(): acc = float((model(xv).argmax(1) == yv.long()).float().mean())
    return time.perf_counter() - t0, passes, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--seconds', type=int, default=10)
    ap.add_argument('--connections', type=int, default=16)
    a = ap.parse_args()
    ensure_wrk()
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, 'AIINFRA_DB_URL': f"sqlite:///{tmp/'store.db'}", 'AIINFRA_DATA_DIR': str(tmp/'data'), 'BENCH_MODELS': str(tmp/'data/models'),
           'AIINFRA_SERVICE_RATE_LIMIT': '1000000/second', 'AIINFRA_SERVICE_NAME': 'bench', 'AIINFRA_PROJECT_NAME': 'bench',
           'AIINFRA_TRAIN_CHECKPOINTS': str(tmp/'checkpoints')}
    os.environ.update(env)
    from aiinfra_nb.data.imagesets import digits_folder
    from aiinfra_nb.data.io import Catalog
    from aiinfra_nb.models.registry import Registry
    from aiinfra_nb.serve.auth import create_key
    from aiinfra_nb.train.fit import fit
    from aiinfra_nb.train.imagedata import ImageDataModule
    catalog, registry = Catalog(tmp/'data'), Registry(tmp/'data/models')
    catalog.save_images(digits_folder(tmp/'digits'), 'raw/digits', progress=False)
    dm = ImageDataModule('raw/digits', catalog=catalog, batch_size=64, augment=dict(degrees=10, translate=0.1), cache=tmp/'cache', progress=False)
    dm.setup()  # decoded once, before either side is timed
    n = len(dm.train_set)
    print(f"{n} training images, {len(dm.val_set)} validation, {a.epochs} epochs of {-(-n // dm.batch_size)} batches of {dm.batch_size}", file=sys.stderr)
    import sqlalchemy as sa
    from aiinfra_nb.ops.store import get_engine, metrics, query
    times, epochs = {'fit': [], 'raw': []}, {'fit': [], 'raw': []}
    for r in range(a.rounds):  # alternating, so that noise hits both alike
        t0 = time.perf_counter()
        res = fit(dm, name='digits', lr=0.01, max_epochs=a.epochs, resume=False, registry=registry, progress=False, accelerator='cpu')
        times['fit'].append(time.perf_counter() - t0)
        epochs['fit'].append(statistics.median(p['value'] for p in query(sa.select(metrics.c.value).where(
            (metrics.c.run_id == res.run_id) & (metrics.c.key == 'epoch_s')), get_engine(env['AIINFRA_DB_URL']))))
        raw_s, passes, raw_acc = raw_loop(dm, a.epochs, 0.01, r)
        times['raw'].append(raw_s); epochs['raw'].append(statistics.median(passes))
        print(f"round {r + 1}: fit {times['fit'][-1]:.2f} s, an epoch {epochs['fit'][-1] * 1000:.0f} ms (val_acc {res.metrics['val_acc']:.3f}); "
              f"raw loop {raw_s:.2f} s, an epoch {epochs['raw'][-1] * 1000:.0f} ms (val_acc {raw_acc:.3f})", file=sys.stderr)
    fit_ips, raw_ips = n / min(epochs['fit']), n / min(epochs['raw'])
    fit_call_ips, raw_call_ips = n * a.epochs / min(times['fit']), n * a.epochs / min(times['raw'])
    print(f"training, per epoch: fit {fit_ips:,.0f} images/s vs the raw loop {raw_ips:,.0f}: {fit_ips / raw_ips:.2f}x (goal >= 0.9)")
    print(f"training, whole call of {a.epochs} epochs: fit {fit_call_ips:,.0f} images/s vs the raw loop {raw_call_ips:,.0f}: {fit_call_ips / raw_call_ips:.2f}x")

    registry.promote('digits', res.model_version)
    key = create_key('bench', 'predict')['secret']
    png = (tmp/'data/raw/digits'/dm.val_frame['path'][0]).read_bytes()
    script = tmp/'post.lua'
    script.write_text(LUA.format(body=json.dumps({'instances': [{'image': {'b64': base64.b64encode(png).decode()}}]}), key=key))
    (tmp/'bare.py').write_text(BARE)
    full_port, bare_port = free_port(), free_port()
    servers = [subprocess.Popen([str(BIN/'aiinfra'), 'serve', '--port', str(full_port)], env=env, stderr=subprocess.PIPE, text=True),
               subprocess.Popen([str(BIN/'uvicorn'), 'bare:app', '--port', str(bare_port), '--log-level', 'warning'], cwd=tmp, env=env,
                                stderr=subprocess.PIPE, text=True)]
    best = {}
    try:
        wait_ready(f'http://127.0.0.1:{full_port}/v2/health/ready', servers[0])
        wait_ready(f'http://127.0.0.1:{bare_port}/docs', servers[1])
        for _ in range(a.rounds):
            for name, port in (('bare', bare_port), ('full', full_port)):
                rps, p99 = wrk(f'http://127.0.0.1:{port}/v1/models/digits:predict', script, a.connections, a.seconds)
                print(f"1 image {name}: {rps:,.0f} req/s, p99 {p99:.1f} ms", file=sys.stderr)
                if rps > best.get(name, (0,))[0]: best[name] = (rps, p99)
    finally:
        for s in servers: s.send_signal(signal.SIGTERM)
        for s in servers: s.wait(60)
    (full, p99), (bare, _) = best['full'], best['bare']
    print(f"serving: aiinfra serve {full:,.0f} req/s vs bare {bare:,.0f}: {full / bare:.2f}x (goal >= 0.8); p99 {p99:.1f} ms")
    print(json.dumps({'benchmark': 'images_train', 'ratio_vs_raw': round(fit_ips / raw_ips, 3), 'serve_ratio_vs_bare': round(full / bare, 3),
                      'fit_images_per_s': round(fit_ips), 'raw_images_per_s': round(raw_ips), 'ratio_whole_call': round(fit_call_ips / raw_call_ips, 3), 'serve_rps': round(full), 'bare_rps': round(bare),
                      'serve_p99_ms': round(p99, 2), 'epochs': a.epochs, 'train_images': n}))


if __name__ == '__main__':
    main()

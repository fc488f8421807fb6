"""Training throughput, side by side in one run.

1. Per epoch, on the same model (16 -> 128 -> 128 -> 1 MLP), data (300k rows, 16 features) and batch size
   (1024): our training path, `train.fit.fit` (the Fabric loop with the store logger, checkpoints every epoch,
   preemption handling, a machine session), vs a hand-written PyTorch loop that indexes the same tensors by batch.
   Ours is the `epoch_s` that fit logs for each epoch's batches (validation and the checkpoint come after it, and
   the hand loop has neither). Goal: ours <= 1.10x the hand loop's time per epoch.
2. Loading alone (one epoch of batches, no model): our indexed batches vs a per-item `DataLoader` over a
   `TensorDataset` (default collation). Goal: >= 20x the rows/s.

Rounds are interleaved and the best epoch time of each contender is kept, to damp a shared machine's
noise. Both use the same torch thread count. Where ours spends its time (one fit of one epoch under cProfile, by
package or C function, `costs.py`) is printed. The last line is one JSON object.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

import polars as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from aiinfra_nb.train.datamodule import TabularDataModule
from aiinfra_nb.models.tabular import TabularNet


def data(n: int, features: int = 16) -> pl.DataFrame:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :4].sum(1) + 0.5 * torch.randn(n, generator=g)) > 0
    return pl.DataFrame({**{f'f{i}': x[:, i].numpy() for i in range(features)}, 'y': y.numpy()})


def ours(dm: TabularDataModule, epochs: int, work: Path) -> float:
    "Seconds per epoch of `fit` (the best epoch's batches, as fit logs them)"
    import sqlalchemy as sa
    from aiinfra_nb.ops.store import get_engine, metrics, query
    from aiinfra_nb.train.fit import fit
    from aiinfra_nb.models.registry import Registry
    r = fit(dm, name='bench', hidden=[128, 128], dropout=0.0, lr=1e-3, max_epochs=epochs, accelerator='cpu', progress=False, resume=False,
            registry=Registry.scratch(work/'models'), checkpoints_dir=work/'ckpt', project='bench')
    rows = query(sa.select(metrics.c.value).where((metrics.c.run_id == r.run_id) & (metrics.c.key == 'epoch_s')), get_engine())
    assert len(rows) == epochs, rows
    return min(row['value'] for row in rows)


def hand_loop(dm: TabularDataModule, epochs: int, batch_size: int) -> float:
    "Seconds per epoch of a plain PyTorch loop over the same tensors, batched by indexing (the best epoch)"
    torch.manual_seed(0)
    model = TabularNet(16, hidden=[128, 128], dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x_num, x_cat, y = dm.train_set.tensors
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for rows in torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).split(batch_size):
            loss = loss_fn(model(x_num[rows], x_cat[rows]), y[rows])
            opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t0)
    return min(times)


def loading(dm: TabularDataModule, batch_size: int) -> tuple[float, float]:
    "Rows/s of one epoch of batches: ours (indexed) vs a per-item DataLoader over a TensorDataset"
    t0 = time.perf_counter()
    n = sum(len(b[2]) for b in dm.train_dataloader())
    ours_rps = n / (time.perf_counter() - t0)
    ds = TensorDataset(*dm.train_set.tensors)
    t0 = time.perf_counter()
    n = sum(len(b[2]) for b in DataLoader(ds, batch_size=batch_size, shuffle=True))
    return ours_rps, n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=300_000)
    ap.add_argument('--batch-size', type=int, default=1024)
    ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--rounds', type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = int(a.rows / 0.8)  # so that the training split (80%) has --rows rows
    dm = TabularDataModule(data(rows), target='y', split='random', val_fraction=0.2, batch_size=a.batch_size)
    dm.setup()
    work = Path(tempfile.mkdtemp(prefix='aiinfra-bench-train-'))
    os.environ['AIINFRA_DB_URL'] = f"sqlite:///{work/'store.db'}"
    from aiinfra_nb.ops.record import flush
    res = {'ours': [], 'raw': []}
    for r in range(a.rounds):
        res['raw'].append(hand_loop(dm, a.epochs, a.batch_size))
        res['ours'].append(ours(dm, a.epochs, work)); flush()
        print(f"round {r + 1}: ours {res['ours'][-1]:.3f} s/epoch, hand loop {res['raw'][-1]:.3f} s/epoch", file=sys.stderr)
    ours_s, raw_s = min(res['ours']), min(res['raw'])
    ours_rps, item_rps = loading(dm, a.batch_size)
    sys.path.insert(0, str(Path(__file__).parent))
    from costs import say, top_costs
    where = top_costs(lambda: ours(dm, 1, work))
    steps = -(-len(dm.train_set) // a.batch_size)
    print(f"{len(dm.train_set):,} training rows, batch {a.batch_size}, {steps} steps per epoch, {torch.get_num_threads()} threads")
    print(f"  fit (Fabric loop):    {ours_s:.3f} s/epoch ({ours_s / steps * 1e3:.2f} ms/step)")
    print(f"  hand-written loop:    {raw_s:.3f} s/epoch ({raw_s / steps * 1e3:.2f} ms/step)")
    print(f"  ratio: {ours_s / raw_s:.2f} (goal <= 1.10)")
    print(f"  where ours' time goes (one epoch, cProfile): {say(where)}")
    print(f"  loading alone: indexed {ours_rps:,.0f} rows/s vs per-item DataLoader {item_rps:,.0f} rows/s: {ours_rps / item_rps:.1f}x (goal >= 20)")
    print(json.dumps(dict(benchmark='train', fit_s_per_epoch=round(ours_s, 4), raw_s_per_epoch=round(raw_s, 4),
                          ratio_vs_raw=round(ours_s / raw_s, 3), batched_speedup_vs_per_item=round(ours_rps / item_rps, 1))))


if __name__ == '__main__':
    main()

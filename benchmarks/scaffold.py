"""The architecture's overhead per project, side by side in one run.

Ours: `aiinfra new` on a small packaged table (the Palmer penguins, 344 rows, multiclass), then `dvc repro` of its whole
pipeline (ingest, etl, train, evaluate: four papermill kernels, each run recorded in the store, contract checked, model
registered and promoted). Plain: the same four stages as plain Python scripts run one after another, as a data scientist
writes them without the architecture: polars in, the same kind of network (numerics and category embeddings into an MLP,
the same batch size and epochs) trained by a hand loop, a file of metrics out; no store, no DVC, no contract, no kernels.

Goal: <= 30 s per project end to end here, and <= 2x the plain scripts. Rounds are interleaved; the median of each side is
kept. The breakdown of our side (from the store's runs) says where the time goes, and two floors measured in the same rounds
say what part of it is the fixed cost of a stage: an empty notebook run the way a stage runs (`papermill --engine aiinfra`: its
process, a kernel, the run recorded), against one empty Python process. The last line is one JSON object.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

import nbformat
import sqlalchemy as sa

from aiinfra_nb.data.sources import package_file
from aiinfra_nb.ops.store import get_engine, query, runs

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}", 'DVC_NO_ANALYTICS': '1'}

PLAIN = {  # stage -> script: the same pipeline by hand
    'ingest': """
        import sys, polars as pl
        df = pl.read_csv(sys.argv[1], null_values=['NA', ''], try_parse_dates=True)
        df.write_parquet('raw.parquet')
    """,
    'etl': """
        import polars as pl
        df = pl.read_parquet('raw.parquet').filter(pl.col('species').is_not_null())
        num = ['bill_length_mm', 'bill_depth_mm', 'flipper_length_mm', 'body_mass_g', 'year']
        df.select('species', *[pl.col(c).cast(pl.Float64) for c in num], 'island', 'sex').write_parquet('features.parquet')
    """,
    'train': """
        import json, polars as pl, torch
        from torch import nn
        from safetensors.torch import save_file
        from common import Net, preparation, tensors
        torch.manual_seed(0)
        df = pl.read_parquet('features.parquet').sample(fraction=1.0, shuffle=True, seed=0)
        n_val = round(df.height * 0.2); train, val = df[:-n_val], df[-n_val:]
        prep = preparation(train)
        (x, k, y), net = tensors(train, prep), Net(prep)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        for epoch in range(EPOCHS):
            for idx in torch.randperm(len(y)).split(BATCH):
                opt.zero_grad(); loss = nn.functional.cross_entropy(net(x[idx], k[idx]), y[idx]); loss.backward(); opt.step()
        save_file(net.state_dict(), 'model.safetensors')
        json.dump(prep, open('model.json', 'w'))
        val.write_parquet('val.parquet')
    """,
    'evaluate': """
        import json, polars as pl, torch
        from safetensors.torch import load_file
        from torchmetrics.functional.classification import multiclass_f1_score
        from common import Net, tensors
        prep = json.load(open('model.json'))
        net = Net(prep); net.load_state_dict(load_file('model.safetensors')); net.eval()
        x, k, y = tensors(pl.read_parquet('val.parquet'), prep)
        with torch.no_grad(): out = net(x, k)
        json.dump(dict(macro_f1=float(multiclass_f1_score(out, y, num_classes=len(prep['classes']), average='macro')), rows=len(y)), open('metrics.json', 'w'))
    """,
}
COMMON = """
    import polars as pl, torch
    from torch import nn
    NUM, CAT = ['bill_length_mm', 'bill_depth_mm', 'flipper_length_mm', 'body_mass_g', 'year'], ['island', 'sex']

    def preparation(train):
        return dict(stats={c: (train[c].mean(), train[c].std() or 1.0) for c in NUM},
                    vocab={c: sorted(train[c].drop_nulls().unique().to_list()) for c in CAT}, classes=sorted(train['species'].unique().to_list()))

    def tensors(part, prep):
        x = torch.tensor(part.select([((pl.col(c) - m) / s).fill_null(0.0) for c, (m, s) in prep['stats'].items()]).to_numpy(), dtype=torch.float32)
        k = torch.tensor(part.select([pl.col(c).replace_strict(v, list(range(1, len(v) + 1)), default=0) for c, v in prep['vocab'].items()]).to_numpy(), dtype=torch.long)
        y = torch.tensor(part['species'].replace_strict(prep['classes'], list(range(len(prep['classes'])))).to_numpy(), dtype=torch.long)
        return x, k, y

    class Net(nn.Module):
        def __init__(self, prep):
            super().__init__()
            self.emb = nn.ModuleList(nn.Embedding(len(v) + 1, (len(v) + 2) // 2) for v in prep['vocab'].values())
            width = len(NUM) + sum(e.embedding_dim for e in self.emb)
            self.mlp = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 128), nn.ReLU(), nn.Dropout(0.1),
                                     nn.Linear(128, len(prep['classes'])))
        def forward(self, x, k): return self.mlp(torch.cat([x] + [e(k[:, i]) for i, e in enumerate(self.emb)], 1))
"""


def ours(work: Path, i: int, data: Path) -> tuple[float, dict]:
    "Seconds for `aiinfra new` + `dvc repro`, and where they went"
    name, t0 = f'bench-{i}', time.perf_counter()
    subprocess.run([str(BIN/'aiinfra'), 'new', name, '--data', str(data), '--target', 'species', '--dir', str(work/name)],
                   env=ENV, check=True, capture_output=True)
    t_new = time.perf_counter() - t0
    subprocess.run(['dvc', 'repro', '-q'], cwd=work/name, env=ENV, check=True, capture_output=True)
    total = time.perf_counter() - t0
    stages = {r['kind']: r['duration_s'] for r in query(sa.select(runs.c.kind, runs.c.duration_s).where(
        (runs.c.project == name) & runs.c.parent_id.is_(None) & (runs.c.kind.in_(['ingest', 'etl', 'train', 'evaluate']))), get_engine())}
    return total, {'aiinfra new': t_new, **{f'stage {k} (in its kernel)': v for k, v in stages.items()},
                   'process and kernel starts, dvc (the rest)': total - t_new - sum(stages.values())}


def plain(work: Path, i: int, data: Path, budget: dict) -> float:
    "Seconds for the four plain scripts, run one after another"
    folder = work/f'plain-{i}'; folder.mkdir()
    (folder/'common.py').write_text(textwrap.dedent(COMMON))
    for stage, code in PLAIN.items():
        (folder/f'{stage}.py').write_text(textwrap.dedent(code).replace('EPOCHS', str(budget['max_epochs'])).replace('BATCH', str(budget['batch_size'])))
    t0 = time.perf_counter()
    for stage in PLAIN: subprocess.run([sys.executable, f'{stage}.py', str(data)], cwd=folder, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - t0


def empty_stage(work: Path) -> tuple[float, float]:
    "Seconds for an empty notebook run as a stage is, and for an empty Python process: the floors of a stage on each side"
    nb = work/'empty.ipynb'
    if not nb.exists():
        empty = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('', metadata={'tags': ['parameters']})])
        empty.metadata['kernelspec'] = dict(name='python3', display_name='python3', language='python')
        nbformat.write(empty, nb)
    t0 = time.perf_counter()
    subprocess.run([str(BIN/'papermill'), '-k', 'python3', '--engine', 'aiinfra', '--log-level', 'WARNING', '--no-progress-bar', str(nb), str(work/'empty-out.ipynb')],
                   cwd=work, env=ENV, check=True, capture_output=True)
    t1 = time.perf_counter()
    subprocess.run([sys.executable, '-c', 'pass'], env=ENV, check=True)
    return t1 - t0, time.perf_counter() - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=3)
    a = ap.parse_args()
    from aiinfra_nb.scaffold import training_budget
    work = Path(tempfile.mkdtemp(prefix='aiinfra-bench-scaffold-'))
    os.environ['AIINFRA_DB_URL'] = ENV['AIINFRA_DB_URL'] = f"sqlite:///{work}/central.db"  # a store of its own
    data = package_file('palmerpenguins', 'data/penguins.csv')
    budget = training_budget(333)  # the rows with a target
    ours_s, plain_s, where, floors = [], [], [], []
    for i in range(a.rounds):
        t, parts = ours(work, i, data); ours_s.append(t); where.append(parts)
        plain_s.append(plain(work, i, data, budget))
        floors.append(empty_stage(work))
        print(f"round {i + 1}: ours {t:.1f} s, plain scripts {plain_s[-1]:.1f} s", file=sys.stderr)
    median = {k: statistics.median(w[k] for w in where) for k in where[0]}
    print("where our time goes (median s): " + ', '.join(f"{k} {v:.1f}" for k, v in sorted(median.items(), key=lambda kv: -kv[1])[:3]), file=sys.stderr)
    o, p = statistics.median(ours_s), statistics.median(plain_s)
    notebook_floor, process_floor = (statistics.median(f[j] for f in floors) for j in (0, 1))
    print(f"an empty stage: {notebook_floor:.2f} s as a recorded notebook, {process_floor:.2f} s as a Python process; "
          f"four of them: {4 * notebook_floor / p:.2f}x the plain scripts' whole time", file=sys.stderr)
    print(json.dumps(dict(benchmark='scaffold', seconds_per_project=round(o, 2), plain_seconds=round(p, 2), ratio_vs_plain=round(o / p, 2),
                          breakdown_s={k: round(v, 2) for k, v in median.items()},
                          empty_stage_s=dict(notebook=round(notebook_floor, 2), python=round(process_floor, 3)))))


if __name__ == '__main__':
    main()

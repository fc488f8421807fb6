"""Metric ingest into the ops store, side by side in one run.

Three ways of writing the same metric points (run_id, key, step, value, time) into a SQLite file with the
store's schema, WAL mode and synchronous=NORMAL:

- ours: `Run.log_metrics(dict, step)` from a training-like loop; the batching writer commits in the
  background; timed until `flush()` returns (every point committed).
- raw: the floor, hand-written `sqlite3.executemany` of tuples in transactions of the same batch size.
- core: SQLAlchemy Core `conn.execute(insert(metrics), list_of_dicts)`, for reference.

Each is repeated (fresh database each time) and the best run is kept, to damp a shared machine's noise.

It also times one `log_event` call (what a service pays per logged request; the write itself happens in
the background) outside any run, where the project and the store come from the cached settings, and
inside a `start_run` block. Goal: outside within 2x of inside.
The last line is one JSON object.
"""
import argparse, json, os, sqlite3, sys, tempfile, time
from pathlib import Path

import sqlalchemy as sa
from aiinfra_nb.ops import record
from aiinfra_nb.ops.store import create_store_engine, ensure_schema, get_engine, metrics

def fresh_db(d: Path, name: str) -> Path:
    "A new SQLite file with the store's schema"
    path = d/f'{name}.db'
    eng = create_store_engine(f'sqlite:///{path}'); ensure_schema(eng); eng.dispose()
    return path

def ours(d: Path, steps: int, keys: int) -> float:
    eng = get_engine(f"sqlite:///{fresh_db(d, f'ours{time.perf_counter_ns()}')}")
    run = record.Run.start('bench', project='bench', engine=eng)
    names = [f'metric_{i}' for i in range(keys)]
    t0 = time.perf_counter()
    for step in range(steps): run.log_metrics({k: step * 0.001 + i for i, k in enumerate(names)}, step=step)
    record.flush()
    return time.perf_counter() - t0

def raw(d: Path, steps: int, keys: int, batch: int) -> float:
    con = sqlite3.connect(fresh_db(d, f'raw{time.perf_counter_ns()}'), isolation_level=None)
    con.execute('PRAGMA journal_mode = WAL'); con.execute('PRAGMA synchronous = NORMAL')
    sql = 'INSERT INTO metrics (run_id, key, step, value, time) VALUES (?, ?, ?, ?, ?)'
    names, run_id, rows = [f'metric_{i}' for i in range(keys)], 'r' * 32, []
    t0 = time.perf_counter()
    for step in range(steps):
        now = time.time()
        rows.extend((run_id, k, step, step * 0.001 + i, now) for i, k in enumerate(names))
        if len(rows) >= batch or step == steps - 1:
            con.execute('BEGIN IMMEDIATE'); con.executemany(sql, rows); con.execute('COMMIT'); rows = []
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed

def core(d: Path, steps: int, keys: int, batch: int) -> float:
    eng = create_store_engine(f"sqlite:///{fresh_db(d, f'core{time.perf_counter_ns()}')}")
    names, run_id, rows = [f'metric_{i}' for i in range(keys)], 'r' * 32, []
    t0 = time.perf_counter()
    for step in range(steps):
        now = time.time()
        rows.extend(dict(run_id=run_id, key=k, step=step, value=step * 0.001 + i, time=now) for i, k in enumerate(names))
        if len(rows) >= batch or step == steps - 1:
            with eng.begin() as conn: conn.execute(sa.insert(metrics), rows)
            rows = []
    elapsed = time.perf_counter() - t0
    eng.dispose()
    return elapsed

def log_event_us(calls: int, inside: bool) -> float:
    "Microseconds per `log_event` call (queued, not yet committed), outside or inside a run"
    def loop():
        t0 = time.perf_counter()
        for i in range(calls): record.log_event('request served', logger='bench', status=200)
        return time.perf_counter() - t0
    if inside:
        with record.start_run('bench', project='bench'): elapsed = loop()
    else: elapsed = loop()
    record.flush()
    return elapsed / calls * 1e6

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--points', type=int, default=1_000_000, help='metric points per measurement')
    ap.add_argument('--keys', type=int, default=50, help='metrics logged per step')
    ap.add_argument('--repeat', type=int, default=3)
    a = ap.parse_args()
    steps = a.points // a.keys
    n = steps * a.keys
    os.environ.setdefault('AIINFRA_HOME', tempfile.mkdtemp())
    batch = record.writer(get_engine()).batch_rows  # the same transaction size for every contender
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        times = {'ours': [], 'raw': [], 'core': []}
        for i in range(a.repeat):  # interleaved, so that noise hits all three alike
            times['raw'].append(raw(d, steps, a.keys, batch))
            times['ours'].append(ours(d, steps, a.keys))
            times['core'].append(core(d, steps, a.keys, batch))
            print(f"round {i + 1}: " + ', '.join(f"{k} {n / v[-1]:,.0f} points/s" for k, v in times.items()), file=sys.stderr)
        events = {'outside': [], 'inside': []}
        for i in range(a.repeat * 2):
            for where in events: events[where].append(log_event_us(20_000, where == 'inside'))
    best = {k: n / min(v) for k, v in times.items()}
    ev = {k: min(v) for k, v in events.items()}
    print(f"{n:,} points, {a.keys} per step, batches of {batch:,} rows, best of {a.repeat}")
    print(f"  ops.record (batched writer):  {best['ours']:>12,.0f} points/s")
    print(f"  raw sqlite3 executemany:      {best['raw']:>12,.0f} points/s   (the floor)")
    print(f"  SQLAlchemy Core executemany:  {best['core']:>12,.0f} points/s   ({best['core'] / best['raw']:.2f} of raw)")
    print(f"  ratio ours / raw:             {best['ours'] / best['raw']:.2f}   (goal >= 0.5, and >= 200,000 points/s)")
    print(f"  log_event: {ev['outside']:.2f} us outside a run, {ev['inside']:.2f} us inside one: "
          f"{ev['outside'] / ev['inside']:.2f}x   (goal <= 2)")
    print(json.dumps({'benchmark': 'store_ingest', 'points_per_s': round(best['ours']),
                      'raw_sqlite_points_per_s': round(best['raw']), 'ratio_vs_raw': round(best['ours'] / best['raw'], 3),
                      'log_event_us_outside': round(ev['outside'], 2), 'log_event_us_inside': round(ev['inside'], 2),
                      'log_event_ratio': round(ev['outside'] / ev['inside'], 2)}))

if __name__ == '__main__':
    main()

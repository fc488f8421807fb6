"""Metric ingest into the ops store, side by side in one run.

Three ways of writing the same metric points (run_id, key, step, value, time) into a SQLite file with the
store's schema, WAL mode and synchronous=NORMAL:

- ours: `Run.log_metrics(dict, step)` from a training-like loop; the batching writer commits in the
  background; timed until `flush()` returns (every point committed).
- raw: the floor, hand-written `sqlite3.executemany` of tuples in transactions of the same batch size.
- core: SQLAlchemy Core `conn.execute(insert(metrics), list_of_dicts)`, for reference.

Each is repeated (fresh database each time) and the best run is kept, to damp a shared machine's noise.

When PostgreSQL is reachable (AIINFRA_TEST_PG_URL, default the local server), the same points go into a fresh
PostgreSQL database: ours (the writer, which uses COPY there) against a raw psycopg 3 `COPY ... FROM STDIN` of the same
rows in transactions of the same size.

Where the time goes is printed for ours: the caller's `log_metrics` calls, the writer's commits (the driver's
executemany or COPY), and the rest of the wait for `flush()`.

It also times one `log_event` call (what a service pays per logged request; the write itself happens in
the background) outside any run, where the project and the store come from the cached settings, and
inside a `start_run` block. Goal: outside within 2x of inside.
The last line is one JSON object.
"""
import argparse, json, os, sqlite3, sys, tempfile, time, uuid
from pathlib import Path

import sqlalchemy as sa
from aiinfra_nb.ops import record
from aiinfra_nb.ops.store import create_store_engine, ensure_schema, get_engine, metrics

def fresh_db(d: Path, name: str) -> Path:
    "A new SQLite file with the store's schema"
    path = d/f'{name}.db'
    eng = create_store_engine(f'sqlite:///{path}'); ensure_schema(eng); eng.dispose()
    return path

PG_ADMIN = os.environ.get('AIINFRA_TEST_PG_URL', 'postgresql+psycopg://postgres@127.0.0.1:5432/postgres')
COLUMNS = ('run_id', 'key', 'step', 'value', 'time')

def pg_database(admin) -> str:
    "A new PostgreSQL database with the store's schema; its URL"
    name = f'aiinfra_bench_{uuid.uuid4().hex[:10]}'
    with admin.connect() as c: c.exec_driver_sql(f'CREATE DATABASE {name}')
    url = sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    eng = create_store_engine(url); ensure_schema(eng); eng.dispose()
    return url

def timed_ours(url: str, steps: int, keys: int) -> tuple[float, dict]:
    "ours into the store at `url`: (seconds, where they went)"
    eng = get_engine(url)
    w, spent = record.writer(eng), {'commit': 0.0}
    commit = w._commit
    def timed(batch):  # an instrument around the writer's commit: how long the driver holds the rows
        t = time.perf_counter(); commit(batch); spent['commit'] += time.perf_counter() - t
    w._commit = timed
    run = record.Run.start('bench', project='bench', engine=eng)
    names = [f'metric_{i}' for i in range(keys)]
    t0 = time.perf_counter()
    for step in range(steps): run.log_metrics({k: step * 0.001 + i for i, k in enumerate(names)}, step=step)
    spent['log_metrics calls'] = time.perf_counter() - t0
    record.flush()
    total = time.perf_counter() - t0
    w._commit = commit
    spent['flush wait'] = total - spent['log_metrics calls']
    return total, spent

def point_batches(steps: int, keys: int, batch: int):
    "The points as the hand-written contenders send them: tuples in `COLUMNS` order, in batches of `batch` rows"
    names, run_id, rows = [f'metric_{i}' for i in range(keys)], 'r' * 32, []
    for step in range(steps):
        now = time.time()
        rows.extend((run_id, k, step, step * 0.001 + i, now) for i, k in enumerate(names))
        if len(rows) >= batch or step == steps - 1:
            yield rows
            rows = []

def raw_pg_copy(url: str, steps: int, keys: int, batch: int) -> float:
    "The floor on PostgreSQL: psycopg 3 COPY of the same rows, in transactions of `batch` rows"
    import psycopg
    con = psycopg.connect(sa.make_url(url).set(drivername='postgresql').render_as_string(hide_password=False))
    t0 = time.perf_counter()
    for rows in point_batches(steps, keys, batch):
        with con.transaction(), con.cursor() as cur, cur.copy(f"COPY metrics ({', '.join(COLUMNS)}) FROM STDIN") as cp:
            for r in rows: cp.write_row(r)
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed

def raw(d: Path, steps: int, keys: int, batch: int) -> float:
    con = sqlite3.connect(fresh_db(d, f'raw{time.perf_counter_ns()}'), isolation_level=None)
    con.execute('PRAGMA journal_mode = WAL'); con.execute('PRAGMA synchronous = NORMAL')
    sql = f"INSERT INTO metrics ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
    t0 = time.perf_counter()
    for rows in point_batches(steps, keys, batch):
        con.execute('BEGIN IMMEDIATE'); con.executemany(sql, rows); con.execute('COMMIT')
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed

def core(d: Path, steps: int, keys: int, batch: int) -> float:
    eng = create_store_engine(f"sqlite:///{fresh_db(d, f'core{time.perf_counter_ns()}')}")
    t0 = time.perf_counter()
    for rows in point_batches(steps, keys, batch):
        with eng.begin() as conn: conn.execute(sa.insert(metrics), [dict(zip(COLUMNS, r)) for r in rows])
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

def pg_rounds(steps: int, keys: int, batch: int, repeat: int) -> tuple[dict, dict]:
    "ours and raw COPY on PostgreSQL, interleaved; ({} and {}) when the server is not reachable"
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level='AUTOCOMMIT', connect_args={'connect_timeout': 3})
        with admin.connect() as c: c.exec_driver_sql('SELECT 1')
    except Exception as e:
        print(f"PostgreSQL not reachable at {PG_ADMIN} ({str(e).splitlines()[0]}): its figures are left out", file=sys.stderr)
        return {}, {}
    times, spent, made = {'pg_ours': [], 'pg_raw_copy': []}, None, []
    try:
        for i in range(repeat):
            made.append(url := pg_database(admin)); times['pg_raw_copy'].append(raw_pg_copy(url, steps, keys, batch))
            made.append(url := pg_database(admin)); t, s = timed_ours(url, steps, keys); times['pg_ours'].append(t)
            if t == min(times['pg_ours']): spent = s
            print(f"postgresql round {i + 1}: " + ', '.join(f"{k} {steps * keys / v[-1]:,.0f} points/s" for k, v in times.items()), file=sys.stderr)
    finally:
        from aiinfra_nb.ops import store
        for key in [k for k in store._engines if any(k[0] == u for u in made)]: store._engines.pop(key).dispose()
        record._forget_writers()
        with admin.connect() as c:
            for u in made: c.exec_driver_sql(f'DROP DATABASE IF EXISTS {sa.make_url(u).database} WITH (FORCE)')
    return times, spent

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
            t, spent = timed_ours(f"sqlite:///{fresh_db(d, f'ours{time.perf_counter_ns()}')}", steps, a.keys); times['ours'].append(t)
            if t == min(times['ours']): ours_spent = spent
            times['core'].append(core(d, steps, a.keys, batch))
            print(f"round {i + 1}: " + ', '.join(f"{k} {n / v[-1]:,.0f} points/s" for k, v in times.items()), file=sys.stderr)
        events = {'outside': [], 'inside': []}
        for i in range(a.repeat * 2):
            for where in events: events[where].append(log_event_us(20_000, where == 'inside'))
        pg, pg_spent = pg_rounds(steps, a.keys, batch, a.repeat)
    best = {k: n / min(v) for k, v in times.items()}
    ev = {k: min(v) for k, v in events.items()}
    print(f"{n:,} points, {a.keys} per step, batches of {batch:,} rows, best of {a.repeat}")
    print(f"  ops.record (batched writer):  {best['ours']:>12,.0f} points/s")
    print(f"  raw sqlite3 executemany:      {best['raw']:>12,.0f} points/s   (the floor)")
    print(f"  SQLAlchemy Core executemany:  {best['core']:>12,.0f} points/s   ({best['core'] / best['raw']:.2f} of raw)")
    print(f"  ratio ours / raw:             {best['ours'] / best['raw']:.2f}   (goal >= 0.5, and >= 200,000 points/s)")
    costs = lambda sp: ', '.join(f"{k} {v:.2f} s" for k, v in sorted(sp.items(), key=lambda kv: -kv[1])[:3])
    print(f"  where ours' time goes (SQLite): {costs(ours_spent)}")
    pg_best = {k: n / min(v) for k, v in pg.items()}
    if pg_best:
        print(f"  PostgreSQL, ours (COPY):      {pg_best['pg_ours']:>12,.0f} points/s")
        print(f"  PostgreSQL, raw psycopg COPY: {pg_best['pg_raw_copy']:>12,.0f} points/s   (the floor)")
        print(f"  ratio ours / raw COPY:        {pg_best['pg_ours'] / pg_best['pg_raw_copy']:.2f}   (goal >= 0.8)")
        print(f"  where ours' time goes (PostgreSQL): {costs(pg_spent)}")
    print(f"  log_event: {ev['outside']:.2f} us outside a run, {ev['inside']:.2f} us inside one: "
          f"{ev['outside'] / ev['inside']:.2f}x   (goal <= 2)")
    print(json.dumps({'benchmark': 'store_ingest', 'points_per_s': round(best['ours']),
                      'raw_sqlite_points_per_s': round(best['raw']), 'ratio_vs_raw': round(best['ours'] / best['raw'], 3),
                      'log_event_us_outside': round(ev['outside'], 2), 'log_event_us_inside': round(ev['inside'], 2),
                      'log_event_ratio': round(ev['outside'] / ev['inside'], 2),
                      **({'pg_points_per_s': round(pg_best['pg_ours']), 'raw_pg_copy_points_per_s': round(pg_best['pg_raw_copy']),
                          'pg_ratio_vs_raw': round(pg_best['pg_ours'] / pg_best['pg_raw_copy'], 3)} if pg_best else {})}))

if __name__ == '__main__':
    main()

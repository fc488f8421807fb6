"""The control panel at a company's scale, side by side in one run.

1. Refresh: the data of every tab (`ops.overview.panel`) from a SQLite store holding 50 projects, 25 services,
   1,000,000 log events, 200,000 audit records and 10,000 runs (with machine sessions and metrics), against the naive
   way: the same answers computed in polars from whole tables read into memory. Goal: <= 300 ms.
2. Scan: 50 project repositories (one made by `aiinfra new` and run, copied 49 times), cold and unchanged
   (`ops.projects.scan_projects`), against `dvc status` in each repository. Goals: <= 10 s cold, <= 1 s unchanged.

3. `%%sql` over a store table: a grouped count of a day of the million log events, answered in the store
   (`data.sql.sql`), against the same query in polars over the whole table read into memory (the way before).

The refresh runs after the scan (so the Projects tab joins 50 scanned repositories) and is the best of several; the
naive refresh and `dvc status` run once each (they are slow). The last line is one JSON object.
"""
import argparse, json, os, random, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import polars as pl

BIN = Path(sys.executable).parent


def fill(engine, now: float, events: int, audits: int, runs_n: int, seed: int = 0):
    "A company's store: projects, services, machines and sessions, runs with metrics, logs, audited calls"
    from aiinfra_nb.ops import store as st
    rng = random.Random(seed)
    names = [f'project-{i:02d}' for i in range(50)]
    chunk = lambda rows, n=50_000: (rows[i:i + n] for i in range(0, len(rows), n))
    with st.writing(engine) as c:
        c.execute(st.projects.insert(), [dict(name=n, owner='team', created_at=now - 90 * 86400) for n in names])
        c.execute(st.services.insert(), [dict(name=f'svc-{i:02d}', project=names[i], kind='model-api', status='up' if i % 7 else 'down',
                                             started_at=now - 86400, last_seen_at=now - (5 if i % 5 else 900)) for i in range(25)])
        c.execute(st.machines.insert(), [dict(name=f'm{i}', kind='gpu-h100' if i % 4 == 0 else 'cpu-4', registered_at=now) for i in range(40)])
        c.execute(st.machine_sessions.insert(), [dict(id=f's{i}', machine=f'm{i % 40}', kind='cpu-4', project=names[i % 50],
                                                     started_at=now - rng.uniform(0, 30 * 86400), last_heartbeat_at=now - rng.uniform(0, 600),
                                                     ended_at=None if i % 20 == 0 else now - rng.uniform(0, 86400), price_per_hour=rng.choice([0.2, 4.5]),
                                                     idle_since=now - 7200 if i % 40 == 0 else None) for i in range(4000)])
        c.execute(st.models.insert(), [dict(project=names[i % 50], name='model', version=i // 50 + 1, stage='production' if i < 50 else None,
                                            created_at=now) for i in range(150)])
    with st.writing(engine) as c:
        rows = [dict(id=f'r{i:06d}', project=names[i % 50], kind=rng.choice(['ingest', 'etl', 'train', 'evaluate']), name='stage',
                     status='failed' if i % 97 == 0 else 'finished', started_at=now - rng.uniform(0, 60 * 86400), duration_s=rng.uniform(1, 600))
                for i in range(runs_n)]
        for part in chunk(rows): c.execute(st.runs.insert(), part)
        for part in chunk([dict(run_id=f'r{i % runs_n:06d}', key='val_loss', step=s, value=1 / (s + 1), time=now) for i in range(2000) for s in range(10)]):
            c.execute(st.metrics.insert(), part)
    levels = ['DEBUG', 'INFO', 'INFO', 'INFO', 'WARNING', 'ERROR']
    for part in chunk(list(range(events)), 100_000):
        with st.writing(engine) as c:
            c.execute(st.events.insert(), [dict(time=now - rng.uniform(0, 30 * 86400), project=names[i % 50], service=f'svc-{i % 25:02d}',
                                               level=levels[i % 6], logger='app', message=f'event {i}') for i in part])
    for part in chunk(list(range(audits)), 100_000):
        with st.writing(engine) as c:
            c.execute(st.audit.insert(), [dict(time=now - rng.uniform(0, 7 * 86400), service=f'svc-{i % 25:02d}', project=names[i % 25],
                                              key_name=f'key-{i % 40}', model='model', status_code=rng.choice([200] * 18 + [401, 500]),
                                              latency_ms=rng.lognormvariate(2.5, 0.5), method='POST', path='/v2/models/model/infer') for i in part])


def naive(engine, now: float) -> dict:
    "The same answers, from whole tables read into polars"
    from aiinfra_nb.ops.machines import today_start
    with engine.connect() as c:
        t = {name: pl.read_database(f'SELECT * FROM {name}', c, infer_schema_length=None)
             for name in ('projects', 'runs', 'machine_sessions', 'audit', 'events', 'services', 'models', 'metrics')}
    day, hour = today_start(now), now - 3600
    a = t['audit']
    return dict(runs_today=t['runs'].filter(pl.col('started_at') >= day).height,
                calls_today=a.filter(pl.col('time') >= day).height,
                traffic=a.filter(pl.col('time') >= hour).group_by('service', 'model').agg(
                    pl.len(), (pl.col('status_code') >= 500).sum(), pl.col('latency_ms').quantile(0.5).alias('p50'), pl.col('latency_ms').quantile(0.95).alias('p95')),
                callers=a.filter(pl.col('time') >= now - 86400).group_by('key_name').len().sort('len', descending=True).head(10),
                logs=t['events'].sort('time', descending=True).head(100),
                projects=t['runs'].group_by('project').agg(pl.col('started_at').max()),
                runs=t['runs'].sort('started_at', descending=True).head(50))


def portfolio(work: Path, n: int) -> Path:
    "n repositories: one made by `aiinfra new` and run, copied"
    from aiinfra_nb.data.sources import package_file
    from aiinfra_nb.scaffold import new_project
    root = work/'portfolio'
    env = {**os.environ, 'DVC_NO_ANALYTICS': '1', 'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    first = new_project('repo-00', package_file('palmerpenguins', 'data/penguins.csv'), 'species', dir=root/'repo-00').path
    subprocess.run(['dvc', 'repro', '-q'], cwd=first, env=env, check=True, capture_output=True)
    for i in range(1, n): shutil.copytree(first, root/f'repo-{i:02d}', symlinks=True)
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--events', type=int, default=1_000_000)
    ap.add_argument('--audit', type=int, default=200_000)
    ap.add_argument('--runs', type=int, default=10_000)
    ap.add_argument('--repos', type=int, default=50)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix='aiinfra-bench-panel-'))
    os.environ['AIINFRA_DB_URL'] = f"sqlite:///{work}/store.db"
    from aiinfra_nb.ops.overview import panel
    from aiinfra_nb.ops.projects import scan_projects
    from aiinfra_nb.ops.store import get_engine
    engine, now = get_engine(), time.time()
    t0 = time.perf_counter(); fill(engine, now, a.events, a.audit, a.runs)
    print(f"store filled in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    root = portfolio(work, a.repos)
    t0 = time.perf_counter(); cold = scan_projects(root, engine=engine); cold_s = time.perf_counter() - t0
    t0 = time.perf_counter(); warm = scan_projects(root, engine=engine); warm_s = time.perf_counter() - t0
    assert len(cold) == a.repos and all(r['pipeline'] == 'up to date' for r in cold), [(r['repo'], r['pipeline'], r['stages'], r['error']) for r in cold if r['pipeline'] != 'up to date'][:3]
    assert not any(r['read'] for r in warm), [r['repo'] for r in warm if r['read']][:3]
    times, parts = [], {}
    for _ in range(5):
        t0 = time.perf_counter(); panel(now, run_id='r000001', engine=engine); times.append(time.perf_counter() - t0)
    import aiinfra_nb.ops.overview as ov  # where a refresh's time goes
    for name in ('overview', 'project_summary', 'machines_now', 'cost_by_project_day', 'traffic', 'top_callers', 'recent_requests'):
        t0 = time.perf_counter(); getattr(ov, name)(now=now, engine=engine) if name != 'recent_requests' else ov.recent_requests(engine=engine)
        parts[name] = time.perf_counter() - t0
    t0 = time.perf_counter(); naive(engine, now); naive_s = time.perf_counter() - t0
    print("refresh, top costs (ms): " + ', '.join(f"{k} {v * 1000:.0f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:3]), file=sys.stderr)

    from aiinfra_nb.data.sql import _store_frame, sql
    q = f"select level, count(*) as n from events where time > '{time.strftime('%Y-%m-%d', time.gmtime(now - 86400))}' group by level order by level"
    sql_times = []
    for _ in range(3):
        t0 = time.perf_counter(); in_store = sql(q, work/'no-catalog', engine); sql_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ctx = pl.SQLContext(events=_store_frame('events', engine)); whole = ctx.execute(q, eager=True)
    naive_sql_s = time.perf_counter() - t0
    assert in_store.rows() == whole.rows(), (in_store, whole)
    env = {**os.environ, 'DVC_NO_ANALYTICS': '1'}
    t0 = time.perf_counter()
    for repo in sorted(root.iterdir()): subprocess.run([str(BIN/'dvc'), 'status', '--json'], cwd=repo, env=env, capture_output=True, check=True)
    naive_scan_s = time.perf_counter() - t0
    print(json.dumps(dict(benchmark='panel', refresh_ms=round(min(times) * 1000, 1), naive_refresh_ms=round(naive_s * 1000, 1),
                          scan_cold_s=round(cold_s, 2), scan_warm_s=round(warm_s, 3), naive_scan_s=round(naive_scan_s, 2),
                          sql_ms=round(min(sql_times) * 1000, 1), naive_sql_ms=round(naive_sql_s * 1000, 1))))


if __name__ == '__main__':
    main()

"""The prediction log's cost to the service, the monitor's cost over Evidently's own, and the alert check's time, in one run.

- log_throughput_ratio: two `aiinfra serve` of one trained model on 127.0.0.1 (one worker each), one keeping every served row
  in the prediction log (`[monitor] sample = 1`), one keeping none (`sample = 0`); `wrk` loads each at 16 connections with
  one-row V1 predictions, rounds interleaved, the best of each kept. Goal >= 0.95.
- monitor_ratio_vs_evidently: `monitor_model` over 1,000,000 logged rows (its window read from the log's parquet files, the
  reference rows checked and answered, Evidently's data-drift preset and the answers' drift, the HTML report, the run and its
  metrics in the store) against Evidently's report with the same metrics on the same rows and reference loaded by hand with
  polars (its HTML written too), rounds interleaved, medians. Goal <= 1.2.
- alerts_check_s: `check_alerts` (every rule, the reconciliation) over a store holding 1,000,000 log lines and 200,000 audit
  rows, all of them in the last five minutes (the services' rules' window), the median of three. Goal <= 2 s.

The last line is one JSON object.
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import polars as pl

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).parent))
from serve import LUA, free_port, wait_ready, wrk  # noqa: E402  (the serve benchmark's load generator)

FEATURES = ['bill_length_mm', 'bill_depth_mm', 'flipper_length_mm', 'body_mass_g', 'year', 'island', 'sex']


def trained_project(base: Path):
    "A project with a multiclass model of the penguins, trained here, its validation rows kept"
    from aiinfra_nb.core import Project
    from aiinfra_nb.data.sources import package_file
    from aiinfra_nb.train.datamodule import TabularDataModule
    from aiinfra_nb.train.fit import fit
    root = base/'penguins'
    root.mkdir(parents=True)
    (root/'settings.ini').write_text(f"[project]\nname = penguins\n[store]\nurl = sqlite:///{base/'store.db'}\n")
    project = Project.open(root)
    data = pl.read_csv(package_file('palmerpenguins', 'data/penguins.csv'), null_values='NA').drop_nulls('species')
    dm = TabularDataModule(data, 'species', FEATURES[:5], FEATURES[5:], task='multiclass', split='random', val_fraction=0.3, batch_size=64)
    fitted = fit(dm, 'penguins', hidden=[32], max_epochs=20, project=project, validation_catalog=project.catalog, progress=False, resume=False)
    project.registry.promote('penguins', fitted.model_version)
    return project, fitted.model_version


def log_throughput(project, seconds: int, rounds: int) -> dict:
    "req/s of the service with the log and without it, one-row predictions"
    from aiinfra_nb.serve.auth import create_key
    key = create_key('bench', 'predict', engine=project.engine)['secret']
    env = {k: v for k, v in os.environ.items() if k != 'AIINFRA_DB_URL'} | {'AIINFRA_SERVICE_RATE_LIMIT': '1000000/second'}
    ports = {'with': free_port(), 'without': free_port()}
    servers = [subprocess.Popen([str(BIN/'aiinfra'), 'serve', '--port', str(ports[name])], cwd=project.root, stderr=subprocess.PIPE, text=True,
                                env={**env, 'AIINFRA_MONITOR_SAMPLE': '1' if name == 'with' else '0'}) for name in ports]
    body = json.dumps({'instances': [{'bill_length_mm': 39.1, 'bill_depth_mm': 18.7, 'flipper_length_mm': 181.0, 'body_mass_g': 3750.0,
                                      'year': 2007.0, 'island': 'Torgersen', 'sex': 'male'}]})
    script = project.root/'post.lua'
    script.write_text(LUA.format(body=body, key=key))
    best = {}
    try:
        for name, port, proc in zip(ports, ports.values(), servers): wait_ready(f'http://127.0.0.1:{port}/v2/health/ready', proc)
        for _ in range(rounds):
            for name, port in ports.items():
                rps, p99 = wrk(f'http://127.0.0.1:{port}/v1/models/penguins:predict', script, 16, seconds)
                print(f"service {name} the log: {rps:,.0f} req/s, p99 {p99:.1f} ms", file=sys.stderr)
                best[name] = max(best.get(name, 0), rps)
    finally:
        for s in servers: s.send_signal(signal.SIGTERM)
        for s in servers: s.wait(120)
    return best


def fill_log(project, version: int, rows: int) -> float:
    "Log `rows` served rows drawn from the validation rows (answered by the model), as the service would; when they started"
    from aiinfra_nb.models.tabular import Preprocessor, predict
    from aiinfra_nb.monitor import reference
    from aiinfra_nb.ops.predictions import PredictionLog
    meta, ref = reference(project, 'penguins', version)
    model, _ = project.registry.load('penguins', version)
    pre, log, t0 = Preprocessor.from_dict(meta['preprocessing']), PredictionLog(project), time.time()
    for i in range(0, rows, 20_000):
        chunk = ref.select(FEATURES).sample(min(20_000, rows - i), with_replacement=True, seed=i)
        assert log.served('penguins', version, chunk, predict(model, pre, 'multiclass', chunk), f'bench-{i}', 'bench', meta['features']['classes'])
        log.flush(300)
    log.close()
    return t0


def evidently_by_hand(project, version: int, since: float, out: Path) -> float:
    "Seconds of Evidently's report over the same rows, read by hand: the log's files, the reference with its answers"
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset
    from aiinfra_nb.models.tabular import Preprocessor, predict
    from aiinfra_nb.ops.predictions import answers, log_files
    t = time.perf_counter()
    current = pl.read_parquet(log_files(project.settings.data.dir, 'penguins', 'penguins', since=since))
    meta = json.loads((project.registry.dir('penguins', version)/'model.json').read_text())
    ref = pl.read_parquet(project.catalog.path(meta['validation']['dataset']))
    model, _ = project.registry.load('penguins', version)
    ref = ref.with_columns(pl.Series('predicted', answers(predict(model, Preprocessor.from_dict(meta['preprocessing']), 'multiclass', ref),
                                                          meta['features']['classes'])[1]))
    kinds = DataDefinition(numerical_columns=FEATURES[:5], categorical_columns=FEATURES[5:] + ['predicted'])
    as_data = lambda df: Dataset.from_pandas(df.select(FEATURES + ['predicted']).to_pandas(), data_definition=kinds)
    snapshot = Report([DataDriftPreset(columns=FEATURES), ValueDrift(column='predicted')], include_tests=True).run(as_data(current), as_data(ref))
    snapshot.save_html(str(out))
    snapshot.dict()
    return time.perf_counter() - t


def alert_store(base: Path, events: int, audits: int):
    "A project whose store holds `events` log lines and `audits` audit rows of the last five minutes"
    import numpy as np
    from aiinfra_nb.core import Project
    from aiinfra_nb.ops.store import audit, ensure_schema, events as events_table, get_engine
    root = base/'ops'
    root.mkdir()
    (root/'settings.ini').write_text(f"[project]\nname = ops\n[store]\nurl = sqlite:///{base/'ops.db'}\n")
    project = Project.open(root)
    engine = get_engine(str(project.engine.url))
    ensure_schema(engine)
    now, rng = time.time(), np.random.default_rng(0)
    with engine.begin() as c:
        for i in range(0, events, 100_000):
            c.execute(events_table.insert(), [dict(time=now - 86400 + j * 0.05, project='ops', service='ops-api', level='INFO', logger='uvicorn',
                                                   message=f'request {j} served') for j in range(i, min(events, i + 100_000))])
        for i in range(0, audits, 100_000):
            n = min(audits, i + 100_000) - i
            c.execute(audit.insert(), [dict(time=now - 290 + 280 * j / audits, service=f'api-{j % 5}', project='ops', request_id=f'r{j}',
                                            key_id='k1', status_code=int(s), latency_ms=float(l), client=f'10.0.0.{j % 3}')
                                       for j, s, l in zip(range(i, i + n), rng.choice([200] * 97 + [401, 500, 503], n), rng.gamma(2, 4, n))])
    return project


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--seconds', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--rows', type=int, default=1_000_000)
    a = ap.parse_args()
    if not shutil.which('wrk'): subprocess.run(['apt-get', 'install', '-y', '-q', 'wrk'], check=True, capture_output=True)
    base = Path(tempfile.mkdtemp(prefix='aiinfra-bench-monitor-'))
    os.environ['AIINFRA_HOME'] = str(base/'home')
    project, version = trained_project(base)
    rps = log_throughput(project, a.seconds, a.rounds)

    from aiinfra_nb.monitor import monitor_model
    since = fill_log(project, version, a.rows)
    import evidently  # noqa: F401  (imported once, before either side is timed: 3 s, the same for both)
    ours, theirs = [], []
    for i in range(a.rounds):
        t = time.perf_counter(); check = monitor_model(project, 'penguins', since=since - 1); ours.append(time.perf_counter() - t)
        assert check['metrics']['rows'] == a.rows, check['metrics']
        theirs.append(evidently_by_hand(project, version, since - 1, base/f'by-hand-{i}.html'))
        print(f"monitor over {a.rows:,} rows: ours {ours[-1]:.2f} s, Evidently by hand {theirs[-1]:.2f} s", file=sys.stderr)

    from aiinfra_nb.ops.alerts import check_alerts
    ops = alert_store(base, 1_000_000, 200_000)
    checks = []
    for _ in range(3):
        t = time.perf_counter(); found = check_alerts(ops); checks.append(time.perf_counter() - t)
    print(f"alerts check over 1,000,000 events and 200,000 audit rows: {statistics.median(checks):.2f} s ({found['open']} open: "
          f"{', '.join(sorted({a['rule'] for a in found['opened']})) or 'none new'})", file=sys.stderr)
    result = dict(benchmark='monitor', log_throughput_ratio=round(rps['with'] / rps['without'], 3),
                  monitor_ratio_vs_evidently=round(statistics.median(ours) / statistics.median(theirs), 3), alerts_check_s=round(statistics.median(checks), 3),
                  rps_with_log=round(rps['with']), rps_without_log=round(rps['without']), monitor_s=round(statistics.median(ours), 2),
                  evidently_s=round(statistics.median(theirs), 2), rows=a.rows)
    print(f"log: {result['log_throughput_ratio']}x the throughput without it (goal >= 0.95); monitor: {result['monitor_ratio_vs_evidently']}x "
          f"Evidently by hand (goal <= 1.2); alerts check {result['alerts_check_s']} s (goal <= 2)", file=sys.stderr)
    print(json.dumps(result))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()

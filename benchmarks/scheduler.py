"""The scheduler at portfolio scale, side by side in one run.

Fifty scaffolded projects (one made by `aiinfra new` on the Palmer penguins and reproduced once, then copied 49 times under
other names, each copy its own git repository, DVC cache and project name), all scheduled for the same minute on a real
Prefect server and worker (`[orchestrator] concurrency` runs at once), with nothing to do: their `dvc repro` is up to date.
Measured: the time from the scheduled minute until all fifty have finished (makespan), the lateness of each start after it
(the store's run start minus the minute: p50, p95), and the overhead of one scheduled run against the same `dvc repro` by hand,
side by side (a run triggered now, trigger to finished, against `dvc repro` in the project's folder; rounds interleaved,
medians kept).

Goals here (2 cores): all fifty finished within 180 s of the minute; overhead <= 3 s per run. The last line is one JSON object.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import sqlalchemy as sa

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def git(root: Path, *args):
    subprocess.run(['git', '-C', str(root), '-c', 'user.name=bench', '-c', 'user.email=bench@localhost', *args], check=True, capture_output=True)


def portfolio(base: Path, n: int, store_url: str) -> list[Path]:
    "One scaffolded project, reproduced and committed, then copied n-1 times under other names"
    from aiinfra_nb.data.sources import package_file
    from aiinfra_nb.scaffold import new_project
    os.environ['AIINFRA_DB_URL'] = store_url  # new_project writes it into the project's settings.ini
    first = Path(new_project('bench-00', package_file('palmerpenguins', 'data/penguins.csv'), 'species', dir=base/'bench-00').path)
    del os.environ['AIINFRA_DB_URL']
    env = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}", 'DVC_NO_ANALYTICS': '1'}
    subprocess.run(['dvc', 'repro', '-q'], cwd=first, env=env, check=True, capture_output=True)
    git(first, 'add', '-A'); git(first, 'commit', '-qm', 'reproduced: dvc.lock up to date')
    roots = [first]
    for i in range(1, n):
        root = base/f'bench-{i:02d}'
        shutil.copytree(first, root, symlinks=True)
        settings = root/'settings.ini'
        settings.write_text(settings.read_text().replace('name = bench-00', f'name = bench-{i:02d}', 1))
        git(root, 'commit', '-qam', f'bench-{i:02d}')
        roots.append(root)
    return roots


def schedule_runs(engine, names=None) -> list[dict]:
    from aiinfra_nb.ops.store import query, runs
    q = sa.select(runs.c.name, runs.c.status, runs.c.started_at, runs.c.ended_at).where(runs.c.kind == 'schedule')
    return query(q.where(runs.c.name.in_(names)) if names else q, engine)


def wait_ended(engine, names: list[str], since: float, timeout: float) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        done = [r for r in schedule_runs(engine, names) if r['started_at'] >= since and r['status'] != 'running']
        if len(done) >= len(names) or time.time() > deadline: return done
        time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--projects', type=int, default=50)
    ap.add_argument('--rounds', type=int, default=3, help='rounds of the overhead comparison')
    a = ap.parse_args()
    from aiinfra_nb.core import Project
    from aiinfra_nb.ops.store import get_engine
    from aiinfra_nb.orchestrate.scheduler import add_schedule, run_schedule, start_scheduler, stop_scheduler
    base = Path(tempfile.mkdtemp(prefix='aiinfra-bench-scheduler-'))
    os.environ['AIINFRA_HOME'] = str(base/'home')
    store = f"sqlite:///{base/'store.db'}"
    op = Project.open(base, environ={'AIINFRA_HOME': str(base/'home'), 'AIINFRA_ORCHESTRATOR_PORT': str(free_port())})
    t0 = time.time()
    roots = portfolio(base/'projects', a.projects, store)
    print(f"{len(roots)} projects made and reproduced in {time.time() - t0:.0f} s", file=sys.stderr)
    start_scheduler(op)
    engine = get_engine(store)
    try:
        # the overhead of one scheduled run, against the same dvc repro by hand (rounds interleaved)
        env = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}", 'DVC_NO_ANALYTICS': '1'}
        add_schedule(roots[0], cron='0 0 1 1 *', name='bench-now', project=op)
        by_hand, scheduled = [], []
        for _ in range(a.rounds):
            t = time.perf_counter(); subprocess.run(['dvc', 'repro', '-q'], cwd=roots[0], env=env, check=True, capture_output=True)
            by_hand.append(time.perf_counter() - t)
            t, since = time.perf_counter(), time.time()
            run_schedule('bench-now', project=op)
            (r,) = wait_ended(engine, ['bench-now'], since, 300)
            assert r['status'] == 'finished', r
            scheduled.append(time.perf_counter() - t)
        # fifty schedules for the same minute, at least a minute from now
        minute = (int(time.time() + 60) // 60 + 1) * 60
        m, h = time.gmtime(minute).tm_min, time.gmtime(minute).tm_hour
        names = []
        for root in roots:
            names.append(add_schedule(root, cron=f"{m} {h} * * *", project=op)['name'])
        print(f"{len(names)} schedules for {time.strftime('%H:%M', time.gmtime(minute))} UTC, added {minute - time.time():.0f} s before it", file=sys.stderr)
        done = wait_ended(engine, names, minute - 5, max(minute - time.time(), 0) + 900)
    finally:
        stop_scheduler(op)
    late = sorted(r['started_at'] - minute for r in done)
    q = lambda p: late[min(len(late) - 1, int(round(p * (len(late) - 1))))] if late else None
    result = dict(benchmark='scheduler', makespan_s=round(max(r['ended_at'] for r in done) - minute, 1) if done else None,
                  lateness_p50_s=round(q(0.5), 1) if late else None, lateness_p95_s=round(q(0.95), 1) if late else None,
                  overhead_s=round(statistics.median(scheduled) - statistics.median(by_hand), 2),
                  runs=len(done), finished=sum(r['status'] == 'finished' for r in done), projects=len(roots),
                  scheduled_run_s=round(statistics.median(scheduled), 2), by_hand_s=round(statistics.median(by_hand), 2),
                  concurrency=op.settings.orchestrator.concurrency)
    print(f"makespan {result['makespan_s']} s (goal <= 180), start lateness p50 {result['lateness_p50_s']} s, p95 {result['lateness_p95_s']} s; "
          f"one run {result['scheduled_run_s']} s scheduled against {result['by_hand_s']} s by hand: overhead {result['overhead_s']} s (goal <= 3)",
          file=sys.stderr)
    print(json.dumps(result))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()

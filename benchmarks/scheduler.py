"""The scheduler at portfolio scale, side by side in one run.

Fifty scaffolded projects (one made by `aiinfra new` on the Palmer penguins and reproduced once, then copied 49 times under
other names, each copy its own git repository, DVC cache and project name), all scheduled for the same minute on a real
Prefect server and worker (`[orchestrator] concurrency` runs at once), with nothing to do: their `dvc repro` is up to date.
Measured: the time from the scheduled minute until all fifty have finished (makespan), the lateness of each start after it
(the store's run start minus the minute: p50, p95), and the overhead of one scheduled run against the same `dvc repro` by hand,
side by side, rounds interleaved, medians kept: a run of a schedule every 20 s, from its scheduled time to its end in the store
(`overhead_s`), and a run triggered now (`aiinfra schedule run`), from the trigger to its end (`overhead_now_s`: it also waits for
the worker to look for work, and for Prefect to start the flow's process, which a scheduled run's worker does ahead of its time),
each against `dvc repro` in the project's folder.

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
    q = sa.select(runs.c.name, runs.c.status, runs.c.started_at, runs.c.ended_at, runs.c.extra).where(runs.c.kind == 'schedule')
    return query(q.where(runs.c.name.in_(names)) if names else q, engine)


def wait_ended(engine, names: list[str], since: float, timeout: float, n: int | None = None) -> list[dict]:
    "The runs of `names` started after `since` once `n` (default: one each) have ended, oldest first"
    deadline = time.time() + timeout
    while True:
        done = sorted((r for r in schedule_runs(engine, names) if r['started_at'] >= since and r['status'] != 'running'), key=lambda r: r['started_at'])
        if len(done) >= (n or len(names)) or time.time() > deadline: return done
        time.sleep(0.2)


def by_hand(root: Path) -> float:
    "Seconds of `dvc repro` in the project's folder"
    env = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}", 'DVC_NO_ANALYTICS': '1'}
    t = time.perf_counter(); subprocess.run(['dvc', 'repro', '-q'], cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def overheads(op, engine, root: Path, rounds: int) -> dict:
    "One scheduled run (from its scheduled time) and one triggered now (from the trigger), each against dvc repro by hand, interleaved"
    from aiinfra_nb.orchestrate.scheduler import add_schedule, client, pause_schedule, run_schedule
    hand, now, scheduled = [], [], []
    add_schedule(root, cron='0 0 1 1 *', name='bench-now', project=op)
    for _ in range(rounds):
        hand.append(by_hand(root))
        t = time.time(); run_schedule('bench-now', project=op)
        (r,) = wait_ended(engine, ['bench-now'], t, 300)
        assert r['status'] == 'finished', r
        now.append(r['ended_at'] - t)
    since = time.time()
    add_schedule(root, every='20s', name='bench-every', project=op)
    runs = []
    while len(runs) < rounds:
        runs = wait_ended(engine, ['bench-every'], since, 300, n=len(runs) + 1)
        assert runs[-1]['status'] == 'finished', runs[-1]
        hand.append(by_hand(root))  # between two scheduled runs
    pause_schedule('bench-every', project=op)
    with client(op.settings) as c:
        for r in runs[:rounds]: scheduled.append(r['ended_at'] - c.read_flow_run(r['extra']['flow_run_id']).expected_start_time.timestamp())
    med = lambda xs: round(statistics.median(xs), 2)
    return dict(overhead_s=med([s - h for s, h in zip(scheduled, hand[rounds:])]), overhead_now_s=med([n - h for n, h in zip(now, hand)]),
                scheduled_run_s=med(scheduled), run_now_s=med(now), by_hand_s=med(hand))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--projects', type=int, default=50)
    ap.add_argument('--rounds', type=int, default=3, help='rounds of the overhead comparison')
    a = ap.parse_args()
    from aiinfra_nb.core import Project
    from aiinfra_nb.ops.store import get_engine
    from aiinfra_nb.orchestrate.scheduler import add_schedule, start_scheduler, stop_scheduler
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
        over = overheads(op, engine, roots[0], a.rounds)
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
                  overhead_s=over['overhead_s'], runs=len(done), finished=sum(r['status'] == 'finished' for r in done), projects=len(roots),
                  **{k: v for k, v in over.items() if k != 'overhead_s'}, concurrency=op.settings.orchestrator.concurrency)
    print(f"makespan {result['makespan_s']} s (goal <= 180), start lateness p50 {result['lateness_p50_s']} s, p95 {result['lateness_p95_s']} s; "
          f"one scheduled run {result['scheduled_run_s']} s from its time against {result['by_hand_s']} s by hand: overhead {result['overhead_s']} s "
          f"(goal <= 3); triggered now: {result['run_now_s']} s, overhead {result['overhead_now_s']} s",
          file=sys.stderr)
    print(json.dumps(result))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()

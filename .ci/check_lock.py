"""Fails when the committed dvc.lock is not the one the committed code, notebooks and parameters produce.

`dvc status` compares every stage's dependencies with dvc.lock. On a fresh clone the DVC outputs are not there
(they live in the DVC cache and remotes), so "not in cache" outputs and deleted dependencies that are another
stage's outputs are expected; anything else (a changed or missing source file, a changed parameter or command)
means dvc.lock is stale: run `make lock` (dvc repro from an empty registry) and commit the lock it writes."""
import json, os, subprocess, sys
from pathlib import Path
import yaml


def stage_outputs(dvc_yaml: dict) -> set[str]:
    outs = set()
    for stage in dvc_yaml['stages'].values():
        for o in stage.get('outs', []) + stage.get('metrics', []) + stage.get('plots', []):
            outs.add(next(iter(o)) if isinstance(o, dict) else o)
    return outs


def stale(status: dict, outputs: set[str]) -> list[str]:
    "What makes each stage's lock entry stale, ignoring outputs that are merely absent"
    found = []
    for stage, changes in status.items():
        for change in changes:
            if change == 'changed command': found.append(f"{stage}: its command changed"); continue
            for path, how in (change.get('changed deps') or {}).items():
                if isinstance(how, dict): found += [f"{stage}: parameter {k} {v}" for k, v in how.items()]
                elif how == 'deleted' and any(path == o or path.startswith(o.rstrip('/') + '/') for o in outputs): continue
                else: found.append(f"{stage}: {path} {how}")
    return found


def main() -> int:
    env = {**os.environ, 'DVC_NO_ANALYTICS': '1'}
    dvc = Path(sys.executable).parent/'dvc'  # this environment's
    p = subprocess.run([str(dvc) if dvc.exists() else 'dvc', 'status', '--json'], capture_output=True, text=True, env=env, timeout=300)
    if p.returncode: print(f"lock check: dvc status failed: {p.stderr.strip()}", file=sys.stderr); return 1
    with open('dvc.yaml') as f: outputs = stage_outputs(yaml.safe_load(f))
    problems = stale(json.loads(p.stdout or '{}'), outputs)
    for line in problems: print(f"  {line}", file=sys.stderr)
    if problems:
        print("lock check FAILED: dvc.lock does not match the committed code and parameters: run `make lock` and commit dvc.lock", file=sys.stderr)
        return 1
    print("lock check: dvc.lock matches the code, notebooks and parameters")
    return 0


if __name__ == '__main__': sys.exit(main())

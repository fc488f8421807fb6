"""The nbdev sync check is real: a notebook changed without exporting fails `make test`."""
import json, os, subprocess, sys
from pathlib import Path
from conftest import copy_repo


def check_sync(repo: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(['bash', '.ci/check_sync.sh'], cwd=repo, capture_output=True, text=True, env=env, timeout=120)


def test_clean_tree_passes(tmp_path):
    p = check_sync(copy_repo(tmp_path))
    assert p.returncode == 0, p.stderr


def test_notebook_changed_without_export_fails(tmp_path):
    repo = copy_repo(tmp_path)
    nb_path = repo/'nbs/api/00_core.ipynb'
    nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb['cells'] if 'def atomic_write' in ''.join(c['source']))
    cell['source'] = ''.join(cell['source']) + '\n# changed in the notebook, not exported'
    nb_path.write_text(json.dumps(nb, indent=1))
    p = check_sync(repo)
    assert p.returncode == 1 and 'sync check FAILED' in p.stderr, (p.stdout, p.stderr)
    assert '# changed in the notebook, not exported' in (repo/'aiinfra_nb/core.py').read_text()  # left fixed
    assert check_sync(repo).returncode == 0

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


def test_markdown_written_as_comments_fails(tmp_path):
    "A markdown cell whose lines start with '# ' renders as a wall of headings: the check refuses it"
    repo = copy_repo(tmp_path)
    check = lambda: subprocess.run([sys.executable, '.ci/check_markdown.py', 'nbs'], cwd=repo, capture_output=True, text=True)
    assert check().returncode == 0
    nb_path = repo/'nbs/api/00_core.ipynb'
    nb = json.loads(nb_path.read_text())
    nb['cells'].insert(1, dict(cell_type='markdown', id='planted0', metadata={},
                               source=['# ## A section\n', '#\n', '# Prose behind comment marks.']))
    nb_path.write_text(json.dumps(nb, indent=1))
    p = check()
    assert p.returncode == 1 and 'nbs/api/00_core.ipynb cell 1' in p.stderr and 'markdown check FAILED' in p.stderr


def test_stale_dvc_lock_fails(tmp_path):
    "dvc.lock must be what the committed code produces: a changed dependency of a stage fails the check"
    repo = copy_repo(tmp_path)
    env = {**os.environ, 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}", 'DVC_NO_ANALYTICS': '1',
           'GIT_AUTHOR_NAME': 't', 'GIT_AUTHOR_EMAIL': 't@t', 'GIT_COMMITTER_NAME': 't', 'GIT_COMMITTER_EMAIL': 't@t'}
    for args in (['init', '-q'], ['add', '-A'], ['commit', '-qm', 'copy']): subprocess.run(['git', *args], cwd=repo, check=True, env=env)
    check = lambda: subprocess.run([sys.executable, '.ci/check_lock.py'], cwd=repo, capture_output=True, text=True, env=env, timeout=300)
    p = check()
    assert p.returncode == 0, p.stderr
    (repo/'contracts/flights.json').write_text((repo/'contracts/flights.json').read_text() + '\n')
    p = check()
    assert p.returncode == 1 and 'ingest: contracts/flights.json modified' in p.stderr and 'lock check FAILED' in p.stderr

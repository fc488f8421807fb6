"""One process, many projects: three scaffolded projects, each with a store of its own, opened side by side in threads
(`Project.open`), scanned, their registries written and read, their overview built, while the working directory and the
environment stay as they were, and nothing falls back to the project "here" (`Project.here`, the faces' default): what the
scheduler, the monitor and the alerts will do with fifty."""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from aiinfra_nb.core import Project
from aiinfra_nb.ops.overview import project_detail
from aiinfra_nb.ops.projects import scan_projects
from aiinfra_nb.ops.record import Liveness
from aiinfra_nb.scaffold import new_project
from aiinfra_nb.models.tabular import TabularNet
from aiinfra_nb.models.registry import Registry  # noqa: F401  (attaches Project.registry)

from aiinfra_nb.data.sources import package_file

NAMES = ('alpha', 'beta', 'gamma')


@pytest.fixture
def portfolio(tmp_path, monkeypatch):
    "Three projects made by `aiinfra new` under one folder, project i on store i"
    penguins = package_file('palmerpenguins', 'data/penguins.csv')
    for i, name in enumerate(NAMES):
        monkeypatch.setenv('AIINFRA_DB_URL', f"sqlite:///{tmp_path}/store-{i}.db")  # new_project writes it into the project's settings.ini
        new_project(name, penguins, 'species', dir=tmp_path/'portfolio'/name)
    monkeypatch.delenv('AIINFRA_DB_URL')
    (elsewhere := tmp_path/'elsewhere').mkdir()
    monkeypatch.chdir(elsewhere)  # no project here: whatever the threads read, they read through the project they were given
    return tmp_path/'portfolio'


def _work(root: Path) -> dict:
    project = Project.open(root)
    torch.manual_seed(0)
    registry = project.registry
    registry.save(TabularNet(n_numeric=2, cardinalities=[3], hidden=[4]), project.name,
                  features=dict(numeric=['a', 'b'], categorical=['c'], target='y', task='binary'), metrics={'auc': 0.5})
    registry.promote(project.name, 1)
    scan = scan_projects(root.parent, project=project)
    return dict(project=project, models=project.registry.list(), scan=scan, detail=project_detail(project.name, engine=project.engine, live=Liveness.of(project.settings)))


def _no_here(cls):
    raise AssertionError("Project.here() was called: work given its project read the working directory's instead")


def test_three_projects_in_one_process_side_by_side(portfolio, monkeypatch):
    cwd, env = os.getcwd(), dict(os.environ)
    monkeypatch.setattr(Project, 'here', classmethod(_no_here))  # a tripwire, not a stand-in: every path below must take its project
    with ThreadPoolExecutor(len(NAMES)) as pool: done = list(pool.map(_work, [portfolio/n for n in NAMES]))
    assert (os.getcwd(), dict(os.environ)) == (cwd, env)  # nothing moved: no chdir, no variable set
    for i, (name, d) in enumerate(zip(NAMES, done)):
        p = d['project']
        assert (p.name, p.root, str(p.engine.url)) == (name, portfolio/name, f"sqlite:///{portfolio.parent}/store-{i}.db")
        assert [(m['name'], m['version'], m['files']) for m in d['models']] == [(name, 1, 'ok')]  # its own registry, in its own store
        assert (portfolio/name/'data/models'/name/'1/model.safetensors').is_file()
        assert sorted(r['project'] for r in d['scan']) == list(NAMES)  # every repository of the portfolio, read by name from its own files
        mine = {r['project']: r for r in d['scan']}[name]
        assert mine['error'] is None and mine['branch'] and mine['production_models'] == 1, mine  # the store's part: this project's model only
        assert {r['project']: r for r in d['scan']}[NAMES[i - 1]]['production_models'] in (0, None)  # a neighbour's model is in its store, not this one
        assert [m['name'] for m in d['detail']['models']] == [name]

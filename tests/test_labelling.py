"""Labelling in JupyterLab, in headless Chromium: a person labels digits in the `Labeller` by clicking and by keys, undoes a
mistake, restarts the kernel and goes on where they stopped, while a second person labels the same dataset in another
notebook; the labels file holds exactly what was clicked. Screenshots in .test-artifacts/."""
import json, os, subprocess
import polars as pl
import pytest
from aiinfra_nb.core import Project
from aiinfra_nb.data.imagesets import ImageContract, digits_folder
from aiinfra_nb.data.labels import LabelStore
from test_browser import ARTIFACTS, BIN, CHROMIUM, FLAGS, kernel_ready, run_all_cells, wait_http
from test_serve import free_port

pytestmark = [pytest.mark.skipif(not os.path.exists(CHROMIUM), reason='no chromium: `make test` installs it (apt) when root'), pytest.mark.browser]


def notebook(path, project, who: str, show: str = 'unlabelled'):
    "A notebook that opens the Labeller on the digits for `who`"
    code = (f"from aiinfra_nb.core import Project\nfrom aiinfra_nb.data.labels import Labeller\n"
            f"lab = Labeller('raw/digits', labeller={who!r}, show={show!r}, project=Project.open({str(project)!r}))\nlab")
    cell = dict(cell_type='code', execution_count=None, id='labeller', metadata={}, outputs=[], source=code)
    path.write_text(json.dumps(dict(cells=[cell], metadata={'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
                                    nbformat=4, nbformat_minor=5)))


def labels(project) -> list[tuple]:
    "What the labels file holds: (item, labeller, label), sorted"
    return sorted(LabelStore(project.catalog, 'raw/digits').read().select('item', 'labeller', 'label').rows())


def showing(page, item: str):
    "Until the labeller shows `item`"
    page.locator(f'.aiinfra-labeller small:has-text("{item}")').first.wait_for(timeout=120_000)


def test_two_people_label_digits_in_jupyterlab(tmp_path):
    store = f"sqlite:///{tmp_path/'store.db'}"
    (root := tmp_path/'digits').mkdir()
    (root/'settings.ini').write_text(f"[project]\nname = digits\n[store]\nurl = {store}\n")
    project = Project.open(root)
    few = digits_folder(tmp_path/'few', 'table', labelled=5, limit=30)
    project.catalog.save_images(few, 'raw/digits', ImageContract('digits', classes=[str(i) for i in range(10)]), labels=few/'labels.csv', progress=False)
    (lab := tmp_path/'lab').mkdir()
    notebook(lab/'ann.ipynb', root, 'ann'); notebook(lab/'bob.ipynb', root, 'bob', show='all')
    dirs = {k: tmp_path/k.lower() for k in ('JUPYTER_RUNTIME_DIR', 'JUPYTER_CONFIG_DIR', 'IPYTHONDIR')}
    for d in dirs.values(): d.mkdir()
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}, 'AIINFRA_HOME': str(tmp_path/'home'), 'AIINFRA_DB_URL': store,
           'PATH': f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    port, token = free_port(), 'labeltoken'
    proc = subprocess.Popen([str(BIN/'jupyter'), 'lab', '--no-browser', '--allow-root', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={lab}'],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from playwright.sync_api import sync_playwright
    try:
        wait_http(f'http://127.0.0.1:{port}/api/status?token={token}', proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            ann, bob = (browser.new_page(viewport={'width': 1300, 'height': 900}) for _ in range(2))
            try:
                ann.goto(f'http://127.0.0.1:{port}/lab/workspaces/ann/tree/ann.ipynb?reset&token={token}', timeout=120_000)  # a workspace each: neither page opens the other's notebook
                ann.locator('.jp-Notebook').first.wait_for(timeout=120_000)
                run_all_cells(ann)
                showing(ann, 'images/0005.png')  # the five the table labels are done
                ann.get_by_role('button', name='5 [6]').click()  # a click
                showing(ann, 'images/0006.png')
                keys = ann.locator('.aiinfra-labeller input[type="text"]').first
                keys.click(); keys.press_sequentially('7')  # the key of 6
                showing(ann, 'images/0007.png')
                keys.press_sequentially('1')  # 0, a mistake ...
                showing(ann, 'images/0008.png')
                ann.get_by_role('button', name='undo [u]').click()  # ... taken back
                showing(ann, 'images/0007.png')
                keys.click(); keys.press_sequentially('8')  # 7
                showing(ann, 'images/0008.png')
                assert labels(project) == [('images/0005.png', 'ann', '5'), ('images/0006.png', 'ann', '6'), ('images/0007.png', 'ann', '7')]

                ann.get_by_text('Kernel', exact=True).first.click()  # a new kernel: the labeller resumes after the last label
                ann.get_by_text('Restart Kernel and Run All Cells…').first.click()
                ann.locator('.jp-Dialog .jp-mod-accept').first.click()
                kernel_ready(ann)
                showing(ann, 'images/0008.png')

                bob.goto(f'http://127.0.0.1:{port}/lab/workspaces/bob/tree/bob.ipynb?reset&token={token}', timeout=120_000)
                bob.locator('.jp-Notebook').first.wait_for(timeout=120_000)
                run_all_cells(bob)
                showing(bob, 'images/0000.png')
                for a, b, item, nxt in [('8 [9]', '0 [1]', 'images/0008.png', 'images/0001.png'), ('9 [0]', '1 [2]', 'images/0009.png', 'images/0002.png'),
                                        ('0 [1]', '2 [3]', 'images/0010.png', 'images/0003.png')]:  # both at once
                    ann.get_by_role('button', name=a).click(); bob.get_by_role('button', name=b).click()
                    showing(bob, nxt)
                showing(ann, 'images/0011.png')
                for page, who in ((ann, 'ann'), (bob, 'bob')):
                    page.screenshot(path=str(ARTIFACTS/f'labeller-{who}.png'), full_page=True)
                    assert 'Traceback' not in page.inner_text('.jp-Notebook')
            except Exception:
                ARTIFACTS.mkdir(exist_ok=True)
                for page, who in ((ann, 'ann'), (bob, 'bob')): page.screenshot(path=str(ARTIFACTS/f'labeller-{who}-failed.png'), full_page=True)
                raise
            finally: browser.close()
        assert labels(project) == sorted([('images/0005.png', 'ann', '5'), ('images/0006.png', 'ann', '6'), ('images/0007.png', 'ann', '7'),
                                          ('images/0008.png', 'ann', '8'), ('images/0009.png', 'ann', '9'), ('images/0010.png', 'ann', '0'),
                                          ('images/0000.png', 'bob', '0'), ('images/0001.png', 'bob', '1'), ('images/0002.png', 'bob', '2')])
        progress = pl.read_database("select extra from events where logger = 'aiinfra.labels' order by id desc limit 1", project.engine)
        assert json.loads(progress['extra'][0])['labelled'] == 11  # the five given, six by ann (bob's are of labelled items)
    finally:
        proc.terminate(); proc.communicate(timeout=60)

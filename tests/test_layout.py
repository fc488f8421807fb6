"""The import rule of the architecture (nbs/index.ipynb), checked on the generated package: a module imports only
from lower notebook bands; only the faces (`ui`, `cli`) import `ui`, nothing imports `cli`, except the package root's lazy `load_ipython_extension`."""
import ast, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bands() -> dict[str, str]:
    "module -> band, from the notebooks' numbers and their `default_exp`; a letter after the number comes after it (`08` < `08a` < `09`)"
    out = {}
    for nb in (ROOT/'nbs/api').glob('*.ipynb'):
        for c in json.loads(nb.read_text())['cells']:
            src = ''.join(c['source'])
            if src.startswith('#| default_exp'): out['aiinfra_nb.' + src.split()[-1]] = nb.name.split('_')[0]
    out['aiinfra_nb'] = out.pop('aiinfra_nb.__init__', '99')
    return out


def imports(path: Path, module: str) -> set[str]:
    "aiinfra_nb modules imported anywhere in `path` (lazy imports inside functions included)"
    found, pkg = set(), module.rsplit('.', 1)[0] if path.name != '__init__.py' else module
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level: base = '.'.join(pkg.split('.')[:len(pkg.split('.')) - node.level + 1] + ([base] if base else []))
            if base.startswith('aiinfra_nb'): found.add(base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith('aiinfra_nb')}
    return found


def test_modules_import_only_from_lower_bands():
    band = bands()
    bad = []
    for module, b in band.items():
        path = ROOT/(module.replace('.', '/') + ('/__init__.py' if module == 'aiinfra_nb' else '.py'))
        for dep in imports(path, module):
            dep = dep if dep in band else dep.rsplit('.', 1)[0]  # `from aiinfra_nb.ops import store` names the module store
            if dep == module or dep not in band: continue
            allowed = module == 'aiinfra_nb' and dep == 'aiinfra_nb.ui.magics'  # the one sanctioned exception
            face = dep.startswith('aiinfra_nb.cli') or (dep.startswith('aiinfra_nb.ui') and not module.startswith(('aiinfra_nb.ui', 'aiinfra_nb.cli')))
            if (band[dep] >= b or face) and not allowed:  # a face may show a lower face (magics and the CLI show the dashboard)
                bad.append(f"{module} (band {b}) imports {dep} (band {band[dep]})")
    assert not bad, bad
    assert band['aiinfra_nb.ops.runner'] < '10' and band['aiinfra_nb.models.tabular'] < band['aiinfra_nb.train.datamodule']


CATALOG = ('aiinfra_nb.data.io', 'aiinfra_nb.data.imagesets', 'aiinfra_nb.data.labels')  # what train may read data through

def test_vertical_layers_do_not_import_each_other():
    "data never imports train or serve (of models only the torch-free task); train reads data only through the catalog (data.io, and its image datasets and labels: data.imagesets, data.labels); serve never imports train or data; models imports only core, ops and models; ops imports core only"
    for module in bands():
        layer = module.split('.')[1] if '.' in module else None
        path = ROOT/(module.replace('.', '/') + ('/__init__.py' if module == 'aiinfra_nb' else '.py'))
        for dep in imports(path, module):
            if layer == 'data': assert not dep.startswith(('aiinfra_nb.train', 'aiinfra_nb.serve')), (module, dep)
            if layer == 'train' and dep.startswith('aiinfra_nb.data'): assert dep in CATALOG, (module, dep)
            if layer == 'ops': assert dep.startswith(('aiinfra_nb.core', 'aiinfra_nb.ops')), (module, dep)
            if layer == 'data' and dep.startswith('aiinfra_nb.models'): assert dep == 'aiinfra_nb.models.task', (module, dep)
            if layer == 'serve': assert not dep.startswith(('aiinfra_nb.train', 'aiinfra_nb.data')), (module, dep)
            if layer == 'models': assert dep.startswith(('aiinfra_nb.core', 'aiinfra_nb.ops', 'aiinfra_nb.models')), (module, dep)


def test_faces_restate_no_column_lists():
    "The CLI, `%aiinfra` and the panel render the `Rows` a library call returns: its columns and title are the library's, written once"
    tablers = {'show', 'table_html', 'text_table', '_call'}
    bad = []
    for path in [ROOT/'aiinfra_nb/cli.py', *sorted((ROOT/'aiinfra_nb/ui').glob('*.py'))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, 'id', getattr(node.func, 'attr', None)) in tablers): continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, (ast.List, ast.Tuple)) and len(arg.elts) > 1 and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in arg.elts):
                    bad.append(f"{path.name}:{node.lineno}: {ast.unparse(arg)[:80]}")
    assert not bad, bad


def _ambient(node) -> int:
    "How many bare `load_settings()` calls (the settings of wherever the process stands) are inside `node`"
    return sum(isinstance(n, ast.Call) and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == 'load_settings' and not (n.args or n.keywords)
               for n in ast.walk(node))


def test_here_is_read_in_one_place():
    "The ambient settings (working directory, environment) are read by `Project.here` alone; the package never changes directory"
    ambient, chdirs = {}, []
    for path in sorted((ROOT/'aiinfra_nb').rglob('*.py')):
        tree = ast.parse(path.read_text())
        if n := _ambient(tree): ambient[path.name] = n
        chdirs += [f"{path.name}:{c.lineno}" for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, 'attr', getattr(c.func, 'id', None)) == 'chdir']
    here = next(f for f in ast.walk(ast.parse((ROOT/'aiinfra_nb/core.py').read_text())) if isinstance(f, ast.FunctionDef) and f.name == 'here')
    assert ambient == {'core.py': 1} and _ambient(here) == 1, ambient
    assert not chdirs, chdirs

"""Fails when a notebook's markdown cell is written as code comments (`# ` before every line).

Notebooks are the documentation and are read in JupyterLab, where such a cell renders as a wall of
H1 headings. Flagged: a line `#` alone, a heading behind a comment (`# ## Section`), a paragraph as a
heading (a `# ` line over 90 characters), or a cell whose
lines all start with `# ` (a real title is one line, followed by a blank line or prose)."""
import json, re, sys
from pathlib import Path


def bad_lines(source: str) -> list[str]:
    "The lines of a markdown cell that betray comment prefixes"
    lines = source.splitlines()
    bad = [l for l in lines if re.match(r'^#\s*$|^# #', l) or (l.startswith('# ') and len(l) > 90)]
    prefixed = [l for l in lines if l.startswith('# ')]
    if len(lines) > 1 and len(prefixed) == len(lines): bad += prefixed
    return bad


def main(folder: str = 'nbs') -> int:
    found = []
    for p in sorted(Path(folder).rglob('*.ipynb')):
        if '.ipynb_checkpoints' in p.parts: continue
        for i, c in enumerate(json.loads(p.read_text())['cells']):
            if c['cell_type'] == 'markdown' and (bad := bad_lines(''.join(c['source']))):
                found.append(f"{p} cell {i}: {bad[0][:70]!r}")
    for f in found: print(f, file=sys.stderr)
    if found:
        print(f"markdown check FAILED: {len(found)} markdown cell(s) written as '# ' comments; write them as plain markdown", file=sys.stderr)
        return 1
    print("markdown check: every markdown cell is plain markdown")
    return 0


if __name__ == '__main__': sys.exit(main(*sys.argv[1:]))

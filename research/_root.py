"""research/ scripts' prologue: the repository root on sys.path, as benchmarks/_root.py does it (run from there)."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "benchmarks" / "_root.py"))

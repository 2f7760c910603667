"""The scripts' shared prologue, in one place: `python benchmarks/NAME.py` (or research/NAME.py) runs with the
script's folder on sys.path; importing this puts the repository root there too, so `benchmarks.common` and
`augment` import from this checkout."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

"""The hostile-file helpers (hostile_files, confined, confined_loaders) import by name, here and in the
confined child (which inherits sys.path): pytest's importlib mode does not put this folder on the path."""

import sys
from pathlib import Path

HERE = str(Path(__file__).parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

"""Readers for files we did not write or cannot trust: they never run code and never allocate more than the
file can justify.

- pickles.py: an opcode scan that bounds a pickle before any unpickler sees it, and the one restricted
  unpickler (allowlisted globals, Python 2 names mapped as pickle's own Unpickler maps them).
- arrays.py: numpy arrays, dtypes and scalars rebuilt from raw bytes into fresh numeric dtypes; `.npz` files.
- torch_files.py: torch storages and tensors inside published pickles, and `load_torch_file`, the one bounded
  loader of our own `.pt` files (torch.load with weights_only, after the archive has been checked).

Every refusal is an `UnsafePickleError` (a ValueError) whose message starts with the file's name.
"""

from .pickles import UnsafePickleError, load_pickle

__all__ = ["UnsafePickleError", "load_pickle"]

"""Cost of the bounded readers (eldistill.untrusted) against the plain loaders, at CIFAR-10 size.

Two files hold the state dict of EDM's 56 M DDPM++ network (random weights): a plain pickle (tensors as
torch's legacy storage blobs, the layout of the published EDM/EDM2 pickles) and our `.pt`. Each reader runs
in a fresh process (one thread) that reports its wall time and its peak resident memory above what it held
before reading:

    OMP_NUM_THREADS=1 python benchmarks/untrusted_load.py            # the table
    OMP_NUM_THREADS=1 python benchmarks/untrusted_load.py --only pickle:ours FILE   # one run (used by the table)

`plain` is pickle.load / torch.load(weights_only=True), safe here only because this script wrote the file.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

READERS = ("pickle:plain", "pickle:ours", "pt:plain", "pt:ours")


def _read(reader: str, path: str):
    kind, who = reader.split(":")
    if kind == "pickle" and who == "plain":
        with open(path, "rb") as f:
            return pickle.load(f)
    if kind == "pickle":
        from eldistill.untrusted import load_pickle
        from eldistill.untrusted.torch_files import PICKLE_GLOBALS

        with open(path, "rb") as f:
            return load_pickle(f, path, PICKLE_GLOBALS)
    if who == "plain":
        return torch.load(path, weights_only=True)
    from eldistill.untrusted.torch_files import load_torch_file

    return load_torch_file(path)


def _status_kib(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))


def one_run(reader: str, path: str) -> dict:
    import eldistill.untrusted.torch_files  # noqa: F401  (imports outside the measurement)

    with open("/proc/self/clear_refs", "w") as f:  # Linux: resets the peak (VmHWM) to the current resident size
        f.write("5")
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    state = _read(reader, path)
    seconds = time.perf_counter() - start
    grew = (_status_kib("VmHWM") - before) / 1024
    return {"reader": reader, "seconds": round(seconds, 3), "peak_growth_mib": round(grew), "tensors": len(state)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=READERS, help="run one reader on FILE and print its JSON line")
    parser.add_argument("file", nargs="?")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(one_run(args.only, args.file)))
        return
    from eldistill.nets import build_network, preset

    state = build_network(preset("cifar10")).state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        files = {"pickle": Path(tmp) / "state.pkl", "pt": Path(tmp) / "state.pt"}
        files["pickle"].write_bytes(pickle.dumps(state, protocol=4))
        torch.save(state, files["pt"])
        del state
        for reader in READERS:
            path = files[reader.split(":")[0]]
            out = subprocess.run(
                [sys.executable, __file__, "--only", reader, str(path)], capture_output=True, text=True, check=True
            )
            result = json.loads(out.stdout)
            print(
                f"{reader:13s} {path.stat().st_size / 2**20:7.1f} MiB file: {result['seconds']:6.2f} s, "
                f"peak memory +{result['peak_growth_mib']} MiB ({result['tensors']} tensors)"
            )


if __name__ == "__main__":
    main()

"""What the three report verbs share: the row key, protocol captions and strict parsing of table cells.

The key of a result row (`cell_key`) has the shape of config/paper/reported.csv's keys:

    <dataset tag>/<distiller>/<el|noel>/bs<batch>[/emb<archs>x<inits>][/aux-<aux_loss>]

- dataset tag: `cifar10-uncond` / `cifar10-cond` for CIFAR-10; otherwise the dataset name followed by its
  resolution (`ffhq64`, `imagenet64`, a hyphen when the name ends in a digit: `afhqv2-64`), plus the EDM2
  size when the teacher's name carries one (`imagenet512-xs` for an `edm2-img512-xs...` teacher).
- `/emb<a>x<i>` only for EL rows whose ensemble is not the paper's full 4 architectures x 4 inits.
- `/aux-<name>` only for an auxiliary loss other than none/el (the aux-loss comparison).
The diff rebuilds the same key from reported.csv's columns, because its hand-written keys are not
uniform (`baseline/...` prefixes, batch sometimes absent, `imagenet512` with the XS teacher).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

PAPER_PROTOCOL = "fid50k-tf-inception"  # the protocol column of reported.csv for FIDs
MINI_PROTOCOL = "mini-classifier"
FULL_ENSEMBLE = (4, 4)  # the paper's main EL: four architectures x four initialisations
NO_AUX = ("", "none", "el")
PROTOCOL_COLUMNS = ("protocol", "feature_net", "num_samples", "reference", "aggregation")
# files `tables` writes besides the paper tables
RESERVED_TABLES = ("cells", "claims", "convergence", "gradvar", "summary", "el_effect")
# The paper's convergence figures (`eldistill figures`): figure name -> (distiller, dataset, batch or None = any)
CONVERGENCE_PAIRS = {
    "convergence_di_cifar10": ("di", "cifar10", None),
    "convergence_sid2a_imagenet512": ("sid2a", "imagenet512", 2048),
}

_EDM2_SIZE = re.compile(r"img512-(xxl|xl|xs|s|m|l)(?![a-z])")


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == ""


def parse_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "1.0"):
        return True
    if text in ("false", "0", "no", "0.0"):
        return False
    raise ValueError(f"{where}: expected true/false, got {value!r}")


def dataset_tag(dataset: str, resolution, conditional: bool, teacher: str = "") -> str:
    name = str(dataset).strip().lower()
    if name == "cifar10":
        return "cifar10-cond" if conditional else "cifar10-uncond"
    tag = name
    if not is_missing(resolution):
        res = str(int(float(resolution)))
        if not name.endswith(res):
            tag = f"{name}-{res}" if name[-1:].isdigit() else f"{name}{res}"
    size = _EDM2_SIZE.search(str(teacher or "").lower())
    if size:
        tag += f"-{size.group(1)}"
    return tag


def cell_key(
    dataset,
    resolution,
    conditional: bool,
    distiller: str,
    el: bool,
    batch=None,
    n_archs=None,
    inits_per_arch=None,
    aux_loss=None,
    teacher: str = "",
) -> str:
    """The row key (format in the module docstring); `batch=None` leaves the `/bs` part out."""
    parts = [dataset_tag(dataset, resolution, conditional, teacher), str(distiller).lower(), "el" if el else "noel"]
    if not is_missing(batch):
        parts.append(f"bs{int(float(batch))}")
    if el and not is_missing(n_archs) and not is_missing(inits_per_arch):
        ensemble = (int(float(n_archs)), int(float(inits_per_arch)))
        if ensemble != FULL_ENSEMBLE:
            parts.append(f"emb{ensemble[0]}x{ensemble[1]}")
    aux = "" if is_missing(aux_loss) else str(aux_loss).strip().lower()
    if aux not in NO_AUX:
        parts.append(f"aux-{aux}")
    return "/".join(parts)


def protocol_note(protocols) -> str:
    """One sentence naming the FID protocol(s) of some rows, and saying when they are not the paper's."""
    names = sorted({str(p) for p in protocols if not is_missing(p)})
    if not names:
        return "FID protocol: none recorded (no evaluated cell)."
    text = f"FID protocol: {', '.join(names)}."
    if MINI_PROTOCOL in names:
        text += " The FID here is the miniature protocol and NOT comparable with the paper's numbers."
    elif any(n != PAPER_PROTOCOL for n in names):
        text += f" Protocols other than {PAPER_PROTOCOL} are NOT comparable with the paper's numbers."
    return text


def read_csv(path: str | Path, required: tuple[str, ...] = (), what: str = "table") -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file not found: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def protocol_short(protocols) -> str:
    """A figure title's protocol line."""
    names = sorted({str(p) for p in protocols if not is_missing(p)})
    if not names:
        return "FID protocol: none recorded"
    text = "FID protocol: " + ", ".join(names)
    if MINI_PROTOCOL in names:
        return text + " (miniature; NOT comparable with the paper)"
    if any(n != PAPER_PROTOCOL for n in names):
        return text + " (NOT the paper's protocol)"
    return text + " (the paper's protocol)"

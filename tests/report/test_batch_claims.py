"""claim/small-batch and claim/dmd-batch computed from hand-made cells, against a hand calculation."""

from __future__ import annotations

import math

import pandas as pd

from eldistill.report.tables import dmd_batch_needed, small_batch_degradation

PAPER = "fid50k-tf-inception"


def cells(rows) -> pd.DataFrame:
    columns = ["cell_id", "dataset", "resolution", "conditional", "distiller", "el", "batch", "total_images", "fid"]
    df = pd.DataFrame(rows, columns=columns)
    return df.assign(aux_loss=["el" if el else "none" for el in df["el"]], protocol=PAPER)


def test_small_batch_degradation_by_hand():
    df = cells(
        [
            ("a", "imagenet512", 512, True, "sid2a", False, 16, 100, 6.0),
            ("b", "imagenet512", 512, True, "sid2a", False, 2048, 100, 2.0),
            ("c", "imagenet512", 512, True, "sid2a", True, 16, 100, 2.5),
            ("d", "imagenet512", 512, True, "sid2a", True, 2048, 100, 2.0),
            ("d", "imagenet512", 512, True, "sid2a", True, 2048, 100, 2.0),  # a cell two experiments share
            ("e", "cifar10", 32, False, "sid", False, 16, 100, 8.0),  # no EL-on pair: not a group
        ]
    )
    claim = small_batch_degradation(df)
    # EL off: 6 / 2 - 1 = +200 %; EL on: 2.5 / 2 - 1 = +25 %; EL degrades 175 points less
    assert claim["key"] == "claim/small-batch" and claim["metric"] == "graceful_degradation"
    assert claim["value"] == 175.0 and claim["protocol"] == PAPER
    assert "6 vs 2 (+200.0%)" in claim["detail"] and "2.5 vs 2 (+25.0%)" in claim["detail"]
    # a second group averages in: off 4 / 4 = 0 %, on 3 / 2 = +50 % -> -50; mean (175 - 50) / 2 = 62.5
    more = cells(
        [
            ("f", "cifar10", 32, False, "sid", False, 16, 100, 4.0),
            ("g", "cifar10", 32, False, "sid", False, 256, 100, 4.0),
            ("h", "cifar10", 32, False, "sid", True, 16, 100, 3.0),
            ("i", "cifar10", 32, False, "sid", True, 256, 100, 2.0),
        ]
    )
    assert small_batch_degradation(pd.concat([df, more]))["value"] == 62.5
    assert small_batch_degradation(df[df["el"]]) is None  # no EL-off cells: nothing to compare


def test_dmd_batch_needed_by_hand():
    df = cells(
        [
            ("a", "cifar10", 32, False, "dmd", False, 16, 100, 9.0),
            ("b", "cifar10", 32, False, "dmd", False, 128, 100, 4.0),
            ("c", "cifar10", 32, False, "dmd", False, 336, 100, 3.0),
            ("d", "cifar10", 32, False, "dmd", True, 16, 100, 3.5),
            ("e", "cifar10", 32, False, "sid", True, 16, 100, 1.0),  # not DMD
        ]
    )
    claim = dmd_batch_needed(df)
    # DMD+EL at batch 16 reaches 3.5; DMD without EL first gets there at batch 336 (9 and 4 are worse)
    assert claim["key"] == "claim/dmd-batch" and claim["metric"] == "batch_size_vs_dmd" and claim["value"] == 336
    assert "batch 16: 9, batch 128: 4, batch 336: 3" in claim["detail"] and "needed batch 336" in claim["detail"]
    # DMD+EL at 16 better than DMD at every batch tried: more than the largest
    better = df.assign(fid=[9.0, 4.0, 3.0, 2.5, 1.0])
    claim = dmd_batch_needed(better)
    assert math.isinf(claim["value"]) and "needed batch > 336" in claim["detail"]
    assert dmd_batch_needed(df[~df["el"]]) is None

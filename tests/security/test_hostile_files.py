"""Hostile files are refused with a clean ValueError naming the file: no crash, no hang, no big allocation.

Every file is built here (hostile_files.py) and loaded by the real entry points in a child process under a
1 GiB address-space limit and a timeout (confined.py). A file passes only if the loader raised ValueError,
the message names the file and says why (the guard that caught it, not a later failed allocation), and the
child's peak memory grew by less than GROWTH_LIMIT. All cases share one child (a crash costs a restart)."""

from __future__ import annotations

import re

import pytest
from confined import run_confined
from hostile_files import LATENT_ATTACKS, NPZ_ATTACKS, PICKLE_ATTACKS, PT_ATTACKS, REFS_LAYOUT

GROWTH_LIMIT = 256 << 20

LOADERS = {
    "convert-teacher": "confined_loaders:convert_teacher",
    "reference": "eldistill.metrics.protocols:load_reference",
    "load_network": "eldistill.checkpoints:load_network",
    "load_classifier": "eldistill.metrics.classifier:load_classifier",
    "training state": "confined_loaders:read_training_state",
    "teacher_shape": "eldistill.launch:teacher_shape",
    "load_torch_file": "eldistill.untrusted.torch_files:load_torch_file",
    "dataset": "confined_loaders:first_dataset_item",
    "lpips": "confined_loaders:lpips_weights",
}
TORCH_LOADERS = ["load_network", "load_classifier", "training state", "teacher_shape", "lpips", "load_torch_file"]


def _cases():
    cases = [(f"{name} -> convert-teacher", "convert-teacher", name, ".pkl") for name in PICKLE_ATTACKS]
    cases += [(f"{name} -> reference", "reference", name, ".pkl") for name in sorted(REFS_LAYOUT)]
    cases += [(f"{name} -> {loader}", loader, name, ".pt") for name in PT_ATTACKS for loader in TORCH_LOADERS]
    cases += [(f"{name} -> reference", "reference", name, ".npz") for name in NPZ_ATTACKS]
    cases += [(f"{name} -> dataset", "dataset", name, ".zip") for name in LATENT_ATTACKS]
    return cases


CASES = _cases()
ZIP_ATTACKS = {**PT_ATTACKS, **NPZ_ATTACKS, **LATENT_ATTACKS}
SUFFIX = {
    **dict.fromkeys(PT_ATTACKS, ".pt"),
    **dict.fromkeys(NPZ_ATTACKS, ".npz"),
    **dict.fromkeys(LATENT_ATTACKS, ".zip"),
}
EXPECTED = {name: why for table in (PICKLE_ATTACKS, ZIP_ATTACKS) for name, (_, why) in table.items()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, (build, _) in PICKLE_ATTACKS.items():
        paths[(name, ".pkl")] = folder / f"{name}.pkl"
        paths[(name, ".pkl")].write_bytes(build())
    for name, (build, _) in ZIP_ATTACKS.items():
        paths[(name, SUFFIX[name])] = build(folder / f"{name}{SUFFIX[name]}")
    cases = [{"name": case, "loader": loader, "path": paths[(name, suffix)]} for case, loader, name, suffix in CASES]
    return run_confined(cases, LOADERS), paths


@pytest.mark.parametrize("case, loader, attack, suffix", CASES, ids=[c[0] for c in CASES])
def test_hostile_file_is_refused_cleanly(outcomes, case, loader, attack, suffix):
    results, paths = outcomes
    result = results[case]
    assert result["outcome"] == "ValueError", f"{case}: {result['outcome']}: {result['message'][-600:]}"
    assert paths[(attack, suffix)].name in result["message"], result["message"]
    assert re.search(EXPECTED[attack], result["message"]), result["message"]
    assert result["grew"] < GROWTH_LIMIT, f"{case}: peak memory grew by {result['grew'] >> 20} MiB"


def test_hostile_files_are_small():
    """The attacks cost the attacker almost nothing: every pickle is under 4 KB but deep nesting (200 KB) and
    the hash flood (1.4 MB)."""
    sizes = {name: len(build()) for name, (build, _) in PICKLE_ATTACKS.items()}
    assert all(size < 4096 for name, size in sizes.items() if name not in ("deep-nesting", "hash-flood")), sizes

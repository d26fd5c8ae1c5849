"""`eldistill evaluate-teacher`: the teacher's own FID with EDM's sampler, against an independent computation,
min over three seed ranges, and a rerun that reuses finished seed ranges."""

from __future__ import annotations

import pytest
import torch

from eldistill.checkpoints import save_network
from eldistill.generator import to_uint8
from eldistill.io import read_jsonl
from eldistill.metrics import MINI, frechet_distance, load_reference
from eldistill.metrics import teacher_eval as te
from eldistill.metrics.classifier import ClassifierFeatures
from eldistill.metrics.fid import FeatureStats
from eldistill.nets.sampler import heun_sample

SAMPLER = {"steps": 3, "S_churn": 0.0}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    from .conftest import make_generator

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_network(path, make_generator(seed=3), {"kind": "teacher"})
    return path


def independent_fid(teacher_file, seeds, classifier, mini_reference) -> float:
    """Heun samples of the same per-seed noise, the classifier's features, the Frechet distance."""
    from eldistill.checkpoints import load_network

    net = load_network(teacher_file)[0].eval()
    noise = torch.stack([torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(s)) for s in seeds])
    images = to_uint8(heun_sample(net, noise, num_steps=3))
    features, ref = ClassifierFeatures(classifier[0]), load_reference(mini_reference)
    stats = FeatureStats(features.dim)
    stats.update(features(images.repeat(1, 3, 1, 1).to(torch.float32)).numpy())
    return frechet_distance(*stats.mu_sigma(), ref.mu, ref.sigma)


def test_teacher_fid_min_of_three_seed_ranges_and_resume(
    teacher_file, classifier, mini_reference, tmp_path, monkeypatch
):
    out = tmp_path / "teacher-run"
    args = (teacher_file, out, MINI, mini_reference, SAMPLER, classifier[0], 48, "min-of-3-seeds")
    final = te.evaluate_teacher(*args, batch_size=16, cell_id="teacher-x")
    ranges = [r for r in read_jsonl(out / "fid.jsonl") if r["kind"] == "seed_range"]
    assert [r["seeds"] for r in ranges] == ["0-47", "48-95", "96-143"] and ranges[0]["nfe"] == 5
    for r, seeds in zip(ranges, (range(0, 48), range(48, 96), range(96, 144))):
        assert r["fid"] == pytest.approx(independent_fid(teacher_file, seeds, classifier, mini_reference), rel=1e-6)
    assert final["fid"] == min(r["fid"] for r in ranges) and final["kind"] == "final"
    assert final["cell_id"] == "teacher-x" and final["aggregation"] == "min-of-3-seeds"
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun (a retry after the time limit) reuses every finished seed range: nothing is sampled again
    monkeypatch.setattr(te, "generated_stats", lambda *a, **k: pytest.fail("recomputed a finished seed range"))
    assert te.evaluate_teacher(*args, batch_size=16, cell_id="teacher-x")["fid"] == final["fid"]
    # another sampler is another evaluation
    with pytest.raises(pytest.fail.Exception):
        te.evaluate_teacher(*args[:4], {"steps": 4}, *args[5:], batch_size=16, cell_id="teacher-x")


def test_refusals(teacher_file, classifier, mini_reference, tmp_path):
    with pytest.raises(ValueError, match="unknown sampler setting"):
        te.evaluate_teacher(teacher_file, tmp_path, MINI, mini_reference, {"stesp": 3}, classifier[0], 48)
    with pytest.raises(ValueError, match="teacher checkpoint not found"):
        te.evaluate_teacher(tmp_path / "no.pt", tmp_path, MINI, mini_reference, SAMPLER, classifier[0], 48)

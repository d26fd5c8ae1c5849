"""The evaluation pipeline end to end: self-FID, noise monotonicity, teacher vs untrained, fid.jsonl records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from eldistill.cli import main as cli_main
from eldistill.data import ImageDataset
from eldistill.generator import one_step, to_uint8
from eldistill.io import read_jsonl
from eldistill.metrics import MINI, PAPER, frechet_distance, load_reference, save_reference
from eldistill.metrics import evaluate as ev
from eldistill.metrics.classifier import ClassifierFeatures
from eldistill.metrics.fid import FeatureStats
from eldistill.metrics.protocols import ProtocolError

RECORD_FIELDS = {"fid", "protocol", "feature_net", "num_samples", "reference", "seeds", "aggregation", "checkpoint",
                 "images_seen", "iterations", "kind", "cell_id"}  # fmt: skip


def fid_of_uint8(images: torch.Tensor, features: ClassifierFeatures, reference) -> float:
    """FID of uint8 images (N, 1, H, W) through the same route as generated images."""
    stats = FeatureStats(features.dim)
    for i in range(0, len(images), 500):
        stats.update(features(images[i : i + 500].repeat(1, 3, 1, 1).to(torch.float32)).numpy())
    return frechet_distance(*stats.mu_sigma(), reference.mu, reference.sigma)


@pytest.fixture(scope="module")
def real(digits):
    return ImageDataset(digits).load_all()


def test_dataset_against_its_own_reference_is_zero_and_grows_with_noise(real, classifier, mini_reference):
    # the reference went through clean-fid's zip reader; these images through the generated-image route
    features, ref = ClassifierFeatures(classifier[0]), load_reference(mini_reference)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(real.shape, generator=gen)
    fids = []
    for std in (0, 8, 24, 64):
        noisy = (real.to(torch.float32) + std * noise).round().clip(0, 255).to(torch.uint8)
        fids.append(fid_of_uint8(noisy, features, ref))
    assert fids[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert fids[1] > 1e-3


@pytest.fixture(scope="module")
def teacher(digits, tmp_path_factory):
    from eldistill.checkpoints import load_network
    from eldistill.teacher import train_teacher

    folder = tmp_path_factory.mktemp("teacher")
    train_teacher(digits, folder / "teacher.pt", folder / "state", total_images=1920, lr_rampup_images=640,
                  ema_halflife_images=400, checkpoint_images=1920, log_images=640)  # fmt: skip
    return load_network(folder / "teacher.pt")[0]


def test_teacher_samples_rank_far_better_than_untrained(teacher, real, classifier, mini_reference, helpers):
    # measured once: real 4, teacher 33, untrained 507 (192 images each, this fixture's budgets)
    from eldistill.teacher import sample_teacher

    features, ref = ClassifierFeatures(classifier[0]), load_reference(mini_reference)
    teacher_fid = fid_of_uint8(to_uint8(sample_teacher(teacher, n=192, seed=1, num_steps=6)), features, ref)
    untrained = helpers.make_generator(seed=5)
    with torch.no_grad():
        raw = one_step(untrained, torch.randn((192, 1, 16, 16), generator=torch.Generator().manual_seed(1)), 2.5)
    untrained_fid = fid_of_uint8(to_uint8(raw), features, ref)
    subset = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:192]
    real_fid = fid_of_uint8(real[subset], features, ref)
    assert real_fid < teacher_fid and teacher_fid * 5 < untrained_fid, (real_fid, teacher_fid, untrained_fid)


def test_generation_is_per_seed_and_class_balanced(helpers):
    net = helpers.make_generator(label_dim=10)
    whole = ev.generate_uint8(net, 2.5, list(range(10)))
    halves = torch.cat([ev.generate_uint8(net, 2.5, list(range(5))), ev.generate_uint8(net, 2.5, [5, 6, 7, 8, 9])])
    torch.testing.assert_close(whole, halves, rtol=0, atol=1)  # batch size changes only float round-off
    assert whole.dtype == torch.uint8 and whole.shape == (10, 1, 16, 16)
    labels = ev.seed_labels(net, [3, 10, 27])
    assert labels.argmax(1).tolist() == [3, 0, 7] and labels.sum().item() == 3


@pytest.fixture
def run(tmp_path, helpers):
    """A run with two snapshots of different (untrained) generators and a final generator.pt."""
    run_dir, state = tmp_path / "run", tmp_path / "state"
    nets = [helpers.make_generator(seed=s) for s in (1, 2)]
    helpers.save_generator(state / "snapshots" / "generator-0000000640.pt", nets[0], 640)
    helpers.save_generator(state / "snapshots" / "generator-0000001280.pt", nets[1], 1280)
    helpers.save_generator(run_dir / "generator.pt", nets[1], 1280)
    return run_dir, state, nets


def independent_fid(net, seeds, features, ref):
    """np.cov + scipy sqrtm on features of per-seed images: the textbook computation, in float64."""
    images = ev.generate_uint8(net, 2.5, list(seeds)).repeat(1, 3, 1, 1).to(torch.float32)
    feats = features(images).numpy().astype(np.float64)
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma @ ref.sigma).real
    return ((mu - ref.mu) ** 2).sum() + np.trace(sigma) + np.trace(ref.sigma) - 2 * np.trace(covmean)


def test_evaluate_run_writes_records_and_skips_done_work(run, classifier, mini_reference, monkeypatch):
    run_dir, state, nets = run
    final = ev.evaluate_run(run_dir, MINI, mini_reference, state_dir=state, feature_net=classifier[0],
                            num_samples=96, aggregation="best-snapshot", batch_size=64)  # fmt: skip
    records = read_jsonl(run_dir / "fid.jsonl")
    # generator.pt is the last snapshot's bytes (the final EMA): measured once, its record names generator.pt
    assert (run_dir / "generator.pt").read_bytes() == (state / "snapshots" / "generator-0000001280.pt").read_bytes()
    assert [r["kind"] for r in records] == ["snapshot", "snapshot", "final"]
    for record in records:
        assert RECORD_FIELDS <= set(record), RECORD_FIELDS - set(record)
        assert record["protocol"] == MINI and record["num_samples"] == 96 and record["paper_comparable"] is False
        assert "test_acc=" in record["feature_net"] and record["cell_id"] == "test-cell"
    snaps = records[:2]
    assert [r["images_seen"] for r in snaps] == [640, 1280]
    assert final == records[-1] and final["aggregation"] == "best-snapshot"
    assert final["fid_final_checkpoint"] == snaps[1]["fid"]  # generator.pt's FID is the last snapshot's
    assert final["fid"] == min(r["fid"] for r in snaps) and final["seeds"] == "0-95"
    features, ref = ClassifierFeatures(classifier[0]), load_reference(mini_reference)
    assert snaps[0]["fid"] == pytest.approx(independent_fid(nets[0], range(96), features, ref), rel=1e-5)
    grid = Image.open(run_dir / "samples.png")
    assert grid.size == (8 * 16, 8 * 16) and grid.mode == "L"

    # a second call finds everything recorded and generates nothing
    def fail(*args, **kwargs):
        raise AssertionError("re-evaluated a recorded checkpoint")

    monkeypatch.setattr(ev, "generated_stats", fail)
    again = ev.evaluate_run(run_dir, MINI, mini_reference, state_dir=state, feature_net=classifier[0],
                            num_samples=96, aggregation="best-snapshot", batch_size=64)  # fmt: skip
    assert again == final and len(read_jsonl(run_dir / "fid.jsonl")) == 3
    monkeypatch.undo()

    # the paper's minimum over three seed ranges of the final checkpoint; generator.pt is read once for all three
    # and samples.png
    reads, real_load = [], ev.load_generator
    monkeypatch.setattr(ev, "load_generator", lambda path, device: reads.append(path) or real_load(path, device))
    best = ev.evaluate_run(run_dir, MINI, mini_reference, feature_net=classifier[0], num_samples=96,
                           aggregation="min-of-3-seeds", batch_size=64)  # fmt: skip
    per_range = best["fid_per_seed_range"]
    assert list(per_range) == ["0-95", "96-191", "192-287"] and best["seeds"] == "0-95,96-191,192-287"
    assert best["fid"] == min(per_range.values()) and len(set(per_range.values())) == 3
    assert reads == [run_dir / "generator.pt"]
    assert per_range["96-191"] == pytest.approx(independent_fid(nets[1], range(96, 192), features, ref), rel=1e-5)


def test_refusals(run, classifier, mini_reference, fake_detector, tmp_path, capsys):
    run_dir, state, _ = run
    with pytest.raises(ProtocolError, match="needs exactly 50,000"):
        ev.evaluate_run(run_dir, PAPER, mini_reference, feature_net=fake_detector, num_samples=5_000)
    with pytest.raises(ProtocolError, match=f"computed under protocol '{MINI}', not '{PAPER}'"):
        ev.evaluate_run(run_dir, PAPER, mini_reference, feature_net=fake_detector)
    # a miniature reference made with another classifier
    other = tmp_path / "other.npz"
    ref = load_reference(mini_reference)
    save_reference(other, ref.mu, ref.sigma, MINI, "mini-classifier:000000000000:test_acc=0.5000", 10, "d")
    with pytest.raises(ProtocolError, match="feature network"):
        ev.evaluate_run(run_dir, MINI, other, feature_net=classifier[0], num_samples=96)
    # the CLI turns the refusal into exit code 2 and a one-line message
    code = cli_main(["evaluate", "--run", str(run_dir), "--protocol", PAPER, "--reference", str(mini_reference),
                     "--num-samples", "1000", "--feature-net", str(fake_detector)])  # fmt: skip
    assert code == 2 and "needs exactly 50,000" in capsys.readouterr().err
    assert not (run_dir / "fid.jsonl").exists()


def test_cli_evaluate_final(run, classifier, mini_reference, capsys):
    run_dir, _, _ = run
    code = cli_main(["evaluate", "--run", str(run_dir), "--protocol", MINI, "--reference", str(mini_reference),
                     "--feature-net", str(classifier[0]), "--num-samples", "64", "--batch", "32"])  # fmt: skip
    assert code == 0 and "not comparable with paper" in capsys.readouterr().out
    (final,) = [r for r in read_jsonl(run_dir / "fid.jsonl") if r["kind"] == "final"]
    assert final["aggregation"] == "final" and final["checkpoint"] == str(run_dir / "generator.pt")
    assert json.loads(json.dumps(final)) == final


def test_paper_protocol_plumbing_with_a_stand_in_detector(run, digits, fake_detector, tmp_path, monkeypatch):
    """The Inception route end to end (ref-stats -> evaluate) with the detector's interface but not its weights;
    the 50,000-image rule is lifted for this test only, so the FID value itself means nothing."""
    from eldistill.metrics import protocols
    from eldistill.metrics.refstats import reference_stats

    run_dir, _, nets = run
    ref_path = tmp_path / "paper-ref.npz"
    info = reference_stats(digits, PAPER, ref_path, feature_net=fake_detector, batch_size=512)
    assert info["feature_net"].startswith("tf-inception-2015-12-05:") and info["num_images"] == 1797
    small = protocols.Protocol(PAPER, None, 64, True, "test-only")
    monkeypatch.setitem(protocols.PROTOCOLS, PAPER, small)
    final = ev.evaluate_run(run_dir, PAPER, ref_path, feature_net=fake_detector, batch_size=64,
                            with_inception_score=True)  # fmt: skip
    assert final["is_mean"] >= 1.0 and np.isfinite(final["is_std"])
    assert final["protocol"] == PAPER and final["paper_comparable"] is True and final["num_samples"] == 64
    assert final["feature_net"] == info["feature_net"] and final["reference"].startswith("paper-ref.npz:")
    # closed form: the stand-in's features are W m + b for per-channel means m; greyscale gives m = (g, g, g),
    # so both feature clouds lie on the line b + g W.sum(1), and FID = |w|^2 ((mean diff)^2 + (std diff)^2)
    w = torch.jit.load(str(fake_detector)).proj.weight.detach().double().sum(1).numpy()
    g = ev.generate_uint8(nets[1], 2.5, list(range(64))).double().mean(dim=(1, 2, 3)).numpy() / 255
    h = ImageDataset(digits).load_all().double().mean(dim=(1, 2, 3)).numpy() / 255
    expected = (w @ w) * ((g.mean() - h.mean()) ** 2 + (g.std(ddof=1) - h.std(ddof=1)) ** 2)
    assert final["fid"] == pytest.approx(expected, rel=1e-3)


def test_classifier_score_separates_digits_from_untrained_output(run, real, classifier, mini_reference):
    """With --inception-score the miniature protocol records IS computed with its own classifier."""
    from eldistill.metrics.fid import inception_score

    run_dir, _, _ = run
    final = ev.evaluate_run(run_dir, MINI, mini_reference, feature_net=classifier[0], num_samples=100,
                            batch_size=50, with_inception_score=True)  # fmt: skip
    features = ClassifierFeatures(classifier[0])
    real_is, _ = inception_score(features.probs(real[:1000].repeat(1, 3, 1, 1).to(torch.float32)).numpy())
    # measured once: real 5.2 (4-epoch classifier), untrained 1.005
    assert real_is > 4.0 and final["is_mean"] < 1.5, (real_is, final["is_mean"])


def test_a_damaged_snapshot_is_skipped_not_blocking_the_cell(run, classifier, mini_reference, capsys):
    """A truncated snapshot used to make `evaluate` fail for the whole cell."""
    run_dir, state, _ = run
    damaged = state / "snapshots" / "generator-0000000640.pt"
    damaged.write_bytes(damaged.read_bytes()[:500])
    final = ev.evaluate_run(run_dir, MINI, mini_reference, state_dir=state, feature_net=classifier[0],
                            num_samples=64, aggregation="best-snapshot", batch_size=64)  # fmt: skip
    assert "skipping a snapshot that cannot be read" in capsys.readouterr().err
    records = read_jsonl(run_dir / "fid.jsonl")
    assert [r["kind"] for r in records] == ["snapshot", "final"]  # generator.pt = the 1280 snapshot's bytes
    assert Path(records[0]["checkpoint"]).name == "generator-0000001280.pt"
    assert final["num_checkpoints_compared"] == 2
    damaged.unlink()
    (run_dir / "generator.pt").write_bytes(b"")  # the cell's own generator is no snapshot: still an error
    with pytest.raises(ValueError, match="generator.pt"):
        ev.evaluate_run(run_dir, MINI, mini_reference, feature_net=classifier[0], num_samples=64, batch_size=64)

"""Reference files (ours, EDM's .npz, EDM2's .pkl), protocol checks, and the offline Inception detector."""

from __future__ import annotations

import os
import pickle
import urllib.request

import numpy as np
import pytest
import torch

from eldistill.metrics import MINI, PAPER, get_protocol, load_reference, save_reference
from eldistill.metrics.inception import DETECTOR_FILE, InceptionFeatures, find_detector
from eldistill.metrics.protocols import ProtocolError, check_num_samples, load_feature_net


def spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a URL")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_our_reference_round_trip_records_protocol(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(8), spd(rng, 8)
    path = save_reference(tmp_path / "ref.npz", mu, sigma, MINI, "mini-classifier:abc:test_acc=0.9", 123, "d.zip")
    ref = load_reference(path)
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    assert (ref.protocol, ref.feature_net, ref.num_images) == (MINI, "mini-classifier:abc:test_acc=0.9", 123)
    assert ref.ref_id.startswith("ref.npz:")


def test_edm_npz_is_the_paper_protocol(tmp_path):
    rng = np.random.default_rng(1)
    mu, sigma = rng.standard_normal(2048), np.eye(2048)
    np.savez(tmp_path / "cifar10-32x32.npz", mu=mu, sigma=sigma)
    ref = load_reference(tmp_path / "cifar10-32x32.npz")
    assert ref.protocol == PAPER and ref.feature_net is None
    np.testing.assert_array_equal(ref.mu, mu)
    # a bare npz of other features records no protocol: refused
    np.savez(tmp_path / "other.npz", mu=mu[:10], sigma=np.eye(10))
    with pytest.raises(ValueError, match="other.npz.*records no protocol"):
        load_reference(tmp_path / "other.npz")


@pytest.mark.parametrize("protocol", [2, 5])
def test_edm2_pkl_read_without_executing_code(tmp_path, protocol):
    rng = np.random.default_rng(2)
    mu, sigma = rng.standard_normal(2048), np.diag(rng.uniform(0.5, 2.0, 2048))
    data = {"num_images": np.int64(1281167), "fid": {"mu": mu, "sigma": sigma}, "fd_dinov2": {"mu": mu[:1024]}}
    path = tmp_path / "img512.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    ref = load_reference(path)
    assert ref.protocol == PAPER and ref.num_images == 1281167
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pkl_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"fid": {"mu": _Evil(), "sigma": np.eye(2)}}))
    with pytest.raises(ValueError, match="evil.pkl.*refusing to load global"):
        load_reference(path)


def test_reference_of_another_protocol_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    save_reference(tmp_path / "mini.npz", rng.standard_normal(4), np.eye(4), MINI, "mini-classifier:aaa", 10, "d")
    ref = load_reference(tmp_path / "mini.npz")
    with pytest.raises(ProtocolError, match=f"mini.npz was computed under protocol '{MINI}', not '{PAPER}'"):
        ref.check(get_protocol(PAPER), "tf-inception-2015-12-05:xyz", tmp_path / "mini.npz")
    with pytest.raises(ProtocolError, match="feature network 'mini-classifier:aaa'"):
        ref.check(get_protocol(MINI), "mini-classifier:bbb", tmp_path / "mini.npz")
    ref.check(get_protocol(MINI), "mini-classifier:aaa", tmp_path / "mini.npz")  # the matching one passes


def test_paper_fid_needs_exactly_50k():
    paper = get_protocol(PAPER)
    with pytest.raises(ProtocolError, match="needs exactly 50,000"):
        check_num_samples(paper, 10_000)
    check_num_samples(paper, 50_000)
    check_num_samples(get_protocol(MINI), 500)
    with pytest.raises(ProtocolError, match="unknown"):
        get_protocol("fid10k")


def test_missing_detector_names_file_and_place(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("ELDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ELDISTILL_INCEPTION", raising=False)
    if (tmp_path / "cache" / DETECTOR_FILE).exists() or os.path.exists(f"/tmp/{DETECTOR_FILE}"):
        pytest.skip("a real detector is installed on this machine")
    with pytest.raises(ValueError) as err:
        load_feature_net(get_protocol(PAPER), None)
    message = str(err.value)
    assert DETECTOR_FILE in message and str(tmp_path / "cache" / DETECTOR_FILE) in message
    assert "nvlabs-fi-cdn.nvidia.com" in message
    with pytest.raises(ValueError, match="not found at"):
        find_detector(tmp_path / "nowhere" / DETECTOR_FILE)


def test_detector_loads_through_clean_fid_offline(tmp_path, monkeypatch, no_network, fake_detector):
    path = fake_detector
    monkeypatch.setenv("ELDISTILL_INCEPTION", str(path))
    features = InceptionFeatures()  # found through the environment variable
    x = torch.full((2, 3, 8, 8), 127.5)
    out = features(x)
    assert out.shape == (2, 2048)
    assert features.id.startswith("tf-inception-2015-12-05:")
    # the input is rounded to uint8 values before the detector (127.5 -> 128)
    scripted = torch.jit.load(str(path))
    expected = scripted(torch.full((2, 3, 8, 8), 128.0), return_features=True)
    torch.testing.assert_close(out, expected)
    # a detector file under another name is refused with the name it needs
    other = tmp_path / "detector.pt"
    other.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=f"must be named {DETECTOR_FILE}"):
        InceptionFeatures(other)

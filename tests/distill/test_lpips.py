"""LPIPS on a stand-in of the real architecture with random weights written by the test (the published weights
cannot be downloaded here): a distance, the weight files' layout, and cells that fail before training without
them."""

from __future__ import annotations

import pytest
import torch

from eldistill import dist
from eldistill.cell import LPIPS_FILES, CellError
from eldistill.distillers import build_distiller
from eldistill.distillers import lpips as lpips_module
from eldistill.distillers.lpips import LPIPS
from eldistill.train import Trainer


def write_standin_weights(folder) -> None:
    """Random weights in the published files' layouts: torchvision's VGG16 state dict (with a classifier the
    loader ignores) and the LPIPS heads `lin<k>.model.1.weight` (non-negative, as trained heads are)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    net = LPIPS()
    vgg = {f"features.{k}": torch.randn(v.shape, generator=gen) * 0.05 for k, v in net.features.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(vgg, folder / LPIPS_FILES[0])
    lin = {f"lin{k}.model.1.weight": torch.rand(m.weight.shape, generator=gen) for k, m in enumerate(net.lins)}
    torch.save(lin, folder / LPIPS_FILES[1])


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips")
    write_standin_weights(folder)
    return folder


@pytest.fixture
def lpips_dir(tmp_path, standin_dir):
    """A fresh copy per test (one test damages its files)."""
    import shutil

    return shutil.copytree(standin_dir, tmp_path / "lpips")


def test_a_distance_zero_on_equal_images_symmetric_and_positive(lpips_dir):
    net = LPIPS.from_folder(lpips_dir)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1, torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    assert torch.equal(net(a, a, resize=0), torch.zeros(3))
    torch.testing.assert_close(net(a, b, resize=0), net(b, a, resize=0))
    assert (net(a, b, resize=0) > 0).all()
    grey = a[:, :1]
    torch.testing.assert_close(
        net(grey, b[:, :1], resize=0), net(grey.expand(-1, 3, -1, -1), b[:, :1].expand(-1, 3, -1, -1), resize=0)
    )


def test_the_network_is_vgg16_with_torchvisions_indices():
    from torchvision.models import vgg16

    reference = {k: v.shape for k, v in vgg16(weights=None).features.state_dict().items()}
    assert {k: v.shape for k, v in LPIPS().features.state_dict().items()} == reference


def test_the_files_are_read_into_the_network(lpips_dir):
    net = LPIPS.from_folder(lpips_dir)
    vgg = torch.load(lpips_dir / LPIPS_FILES[0], weights_only=True)
    lin = torch.load(lpips_dir / LPIPS_FILES[1], weights_only=True)
    assert torch.equal(net.features[28].weight, vgg["features.28.weight"])  # the last convolution (relu5_3)
    assert torch.equal(net.lins[4].weight, lin["lin4.model.1.weight"])


def test_a_bad_weight_file_is_named(lpips_dir):
    lin = torch.load(lpips_dir / LPIPS_FILES[1], weights_only=True)
    del lin["lin2.model.1.weight"]
    torch.save(lin, lpips_dir / LPIPS_FILES[1])
    with pytest.raises(ValueError, match=r"lpips_vgg_lin.pth lacks 2.weight"):
        LPIPS.from_folder(lpips_dir)
    (lpips_dir / LPIPS_FILES[0]).unlink()
    with pytest.raises(ValueError, match=r"vgg16.pth does not exist"):
        LPIPS.from_folder(lpips_dir)


def test_cm_with_the_lpips_distance(lpips_dir, monkeypatch, net_factory):
    monkeypatch.setattr(lpips_module, "RESIZE", 32)  # the reference resizes to 224; 32 keeps the test fast
    d = build_distiller("cm", net_factory(), {"distance": "lpips"}, lpips=str(lpips_dir))
    a = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(d.distance(a, a), torch.zeros(2))
    expected = LPIPS.from_folder(lpips_dir)(
        torch.nn.functional.interpolate(a, size=32, mode="bilinear"), torch.zeros(2, 1, 32, 32), resize=0
    )
    torch.testing.assert_close(d.distance(a, torch.zeros_like(a)), expected)


def test_a_cell_that_needs_lpips_fails_before_training_naming_the_file(make_cell, tmp_path, lpips_dir):
    with pytest.raises(CellError, match="'lpips' must name the folder"):
        make_cell(distiller="cm", distiller_args={"distance": "lpips"})
    cell = make_cell(distiller="cm", distiller_args={"distance": "lpips"}, lpips=str(tmp_path / "none"))
    with pytest.raises(CellError, match=r"'lpips' lacks .*none/vgg16.pth"):
        cell.validate(check_files=True)
    # DMD1's regression needs it only when the regression is on
    make_cell(distiller="dmd", distiller_args={"regression_distance": "lpips"})
    with pytest.raises(CellError, match="'lpips'"):
        make_cell(distiller="dmd", distiller_args={"regression_distance": "lpips", "regression_weight": 0.25})
    ok = make_cell(distiller="cm", distiller_args={"distance": "lpips"}, lpips=str(lpips_dir))
    ok.validate(check_files=True)
    assert Trainer(ok, dist.setup(device="cpu")).distiller.lpips_folder == str(lpips_dir)


def test_the_cells_lpips_size_reaches_cm_and_dmds_regression(make_cell, lpips_dir, net_factory):
    """config lpips.resize -> cell.lpips_resize -> the distiller's LPIPS input size (16 in the rehearsal, 224 in
    the paper), for CM's distance and DMD1's regression alike; below VGG16's 16 pixels the cell is refused."""
    net = LPIPS.from_folder(lpips_dir)
    a, b = torch.rand(2, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8) * 2 - 1

    def resized(size):
        return net(*(torch.nn.functional.interpolate(x, size=size, mode="bilinear") for x in (a, b)), resize=0)

    cm = build_distiller("cm", net_factory(), {"distance": "lpips"}, lpips=str(lpips_dir), lpips_resize=16)
    torch.testing.assert_close(cm.distance(a, b), resized(16))
    assert not torch.allclose(resized(16), resized(32))  # the size matters, so the check above can fail
    args = {"regression_distance": "lpips", "regression_weight": 0.25}
    dmd = build_distiller("dmd", net_factory(), args, lpips=str(lpips_dir), lpips_resize=16)
    torch.testing.assert_close(dmd.lpips(a, b), resized(16))
    cell = make_cell(distiller="cm", distiller_args={"distance": "lpips"}, lpips=str(lpips_dir), lpips_resize=16)
    assert Trainer(cell, dist.setup(device="cpu")).distiller.lpips_resize == 16
    paper = make_cell(distiller="cm", distiller_args={"distance": "lpips"}, lpips=str(lpips_dir))
    assert paper.lpips_resize == 224 and paper.cell_id != cell.cell_id
    assert "lpips_resize" not in paper.result_settings()  # the paper's size: ids from before the setting stay
    with pytest.raises(CellError, match="'lpips_resize' must be an integer >= 16"):
        make_cell(distiller="cm", distiller_args={"distance": "lpips"}, lpips=str(lpips_dir), lpips_resize=8)

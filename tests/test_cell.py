"""The run-cell contract: strict keys, validation that names the field, ids that ignore hardware knobs."""

import json
import re

import pytest

from eldistill.cell import Cell, CellError


def base(**over):
    d = {"distiller": "sid", "teacher": "t.pt", "dataset": "d.zip", "batch": 32, "total_images": 3200}
    d.update(over)
    return d


def test_defaults_and_roundtrip(tmp_path):
    cell = Cell.from_dict(base(el={"weight": 0.5}))
    assert cell.el.enabled and cell.el.inits_per_arch == 4
    assert cell.cell_id.startswith("sid-el-b32-")
    cell.save(tmp_path / "c.json")
    again = Cell.load(tmp_path / "c.json")
    assert again.to_dict() == cell.to_dict()


def test_id_ignores_hardware_knobs_but_not_results_settings():
    a = Cell.from_dict(base())
    b = Cell.from_dict(base(batch_gpu=8, run_dir="x", state_dir="y", labels={"experiment": "z"}))
    c = Cell.from_dict(base(lr=2e-5))
    assert a.cell_id == b.cell_id
    assert a.cell_id != c.cell_id
    # embedder knobs do not matter while EL is off, and do once it is on
    assert Cell.from_dict(base(el={"inits_per_arch": 2})).cell_id == a.cell_id
    on4 = Cell.from_dict(base(el={"weight": 1.0})).cell_id
    on2 = Cell.from_dict(base(el={"weight": 1.0, "inits_per_arch": 2})).cell_id
    assert on4 != on2
    # the EL scope (global batch or per round) changes the objective: in the id when EL is on, not when off
    assert Cell.from_dict(base(el={"weight": 1.0})).el.scope == "global"
    assert Cell.from_dict(base(el={"weight": 1.0, "scope": "round"})).cell_id != on4
    assert Cell.from_dict(base(el={"scope": "round"})).cell_id == a.cell_id


@pytest.mark.parametrize(
    "over, key",
    [
        ({"distiller": "gan"}, "'distiller'"),
        ({"batch": -4}, "'batch'"),
        ({"batch": 32, "batch_gpu": 5}, "'batch'"),
        ({"precision": "fp8"}, "'precision'"),
        ({"bogus": 1}, "bogus"),
        ({"el": {"archs": ["cnn", "vit"]}}, "'el.archs'"),
        ({"el": {"wieght": 1}}, "wieght"),
        ({"el": {"weight": 1.0, "scope": "batch"}}, "'el.scope'"),
        ({"batch": 1, "el": {"weight": 1.0}}, "'batch' = 1; the unbiased EL"),
        ({"batch_gpu": 1, "el": {"weight": 1.0, "scope": "round"}}, "'batch_gpu' = 1; EL per round"),
        ({"distiller": "sid2a"}, "'init_generator'"),
        ({"augment_p": 1.5}, "'augment_p'"),
        ({"distiller": "dmd", "augment_p": 0.12}, "'augment_p'"),
        ({"dropout": 1.0}, "'dropout'"),
        ({"ema_beta": 1.0}, "'ema_beta'"),
        ({"weight_decay": -0.01}, "'weight_decay'"),
        ({"warmup_images": -5}, "'warmup_images'"),
        ({"network_optim": {"critic": {}}}, "'network_optim.critic'"),
        ({"distiller": "cm", "distiller_args": {"distance": "lpips"}}, "'lpips'"),
    ],
)
def test_bad_cells_name_the_key(over, key):
    with pytest.raises(CellError, match=key):
        Cell.from_dict(base(**over))


def test_world_size_and_missing_files(tmp_path):
    cell = Cell.from_dict(base(batch_gpu=8))
    with pytest.raises(CellError, match="world size"):
        cell.validate(world_size=3)
    with pytest.raises(CellError, match="'teacher'.*t.pt"):
        cell.validate(check_files=True)


def test_missing_required_and_bad_json(tmp_path):
    with pytest.raises(CellError, match="missing required key.*teacher"):
        Cell.from_dict({"distiller": "sid", "dataset": "d", "batch": 1, "total_images": 1})
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(CellError, match="bad.json"):
        Cell.load(p)
    assert json.loads(json.dumps(Cell.from_dict(base()).result_settings()))


@pytest.mark.parametrize(
    "over, message",
    [
        ({"lr": "abc"}, "'lr' must be a finite number, got 'abc'"),
        ({"lr": float("nan")}, "'lr' must be a finite number, got nan"),
        ({"glr": "1e-5"}, "'glr' must be a finite number or null, got '1e-5'"),
        ({"el": {"weight": "1.0"}}, "'el.weight' must be a finite number, got '1.0'"),
        ({"adam_betas": 0.9}, "'adam_betas' must be a list of finite numbers, got 0.9"),
        ({"el": {"weight": 1.0, "bandwidths": ["1", "2"]}}, "'el.bandwidths' must be a list of finite numbers"),
        ({"el": {"archs": "cnn"}}, "'el.archs' must be a list of strings, got 'cnn'"),
        ({"batch": 32.0}, "'batch' must be an integer, got 32.0"),
        ({"seed": True}, "'seed' must be an integer, got True"),
        ({"precision": 16}, "'precision' must be a string, got 16"),
        ({"distiller_args": ["alpha", 1]}, "'distiller_args' must be a mapping with string keys"),
        ({"init_generator": 3}, "'init_generator' must be a string or null, got 3"),
        ({"el": [1.0]}, "'el' must be a mapping, got a list"),
    ],
)
def test_wrong_types_are_named_not_a_type_error(over, message):
    """Each of these raised a bare TypeError (or slipped through) before the fields were type-checked."""
    with pytest.raises(CellError, match=re.escape(message)):
        Cell.from_dict(base(**over))


def test_a_json_list_is_not_a_cell(tmp_path):
    path = tmp_path / "cell.json"
    path.write_text(json.dumps([["distiller", "sid"]]))
    with pytest.raises(CellError, match=r"cell.json: a cell must be a JSON object .*, got a list"):
        Cell.load(path)


def test_a_stale_cell_id_is_refused_naming_both_ids(tmp_path):
    """A cell edited after its id was written must not pass as the cell it was (and reuse its results)."""
    finished = Cell.from_dict(base())
    edited = {**finished.to_dict(), "lr": 3e-4}  # another lr, the finished cell's id
    path = tmp_path / "stale.json"
    path.write_text(json.dumps(edited))
    actual = Cell.from_dict({k: v for k, v in edited.items() if k != "cell_id"}).cell_id
    with pytest.raises(CellError, match=f"'cell_id' is '{finished.cell_id}' but these settings have the id '{actual}'"):
        Cell.load(path)
    finished.save(path)
    assert Cell.load(path).cell_id == finished.cell_id  # an id that fits its settings loads


def test_total_images_must_be_whole_iterations():
    with pytest.raises(CellError, match=r"'total_images' = 3300 is not a multiple of batch = 32.*3328.*3296"):
        Cell.from_dict(base(total_images=3300))
    with pytest.raises(CellError, match=r"'total_images' = 20 .* ask for 32$"):
        Cell.from_dict(base(total_images=20))


def test_a_setting_added_later_keeps_existing_ids_at_its_default():
    """ema_rampup arrived after cells had ids: at EDM's 0.05 it stays out of the id (the sha256 of the settings
    written before it existed), any other value is a new cell."""
    import hashlib

    settings = Cell.from_dict(base()).result_settings()
    assert "ema_rampup" not in settings
    before = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    assert Cell.from_dict(base(ema_rampup=0.05)).cell_id == f"sid-noel-b32-{before}"
    assert Cell.from_dict(base(ema_rampup=0.5)).cell_id != f"sid-noel-b32-{before}"
    assert Cell.from_dict(base(ema_rampup=None)).cell_id != f"sid-noel-b32-{before}"
    with pytest.raises(CellError, match="'ema_rampup'"):
        Cell.from_dict(base(ema_rampup=0))


def test_ema_rampup_caps_the_half_life_at_a_fraction_of_the_images_seen():
    from eldistill.train import ema_beta

    # 4800 images seen, half-life 2000: EDM's 0.05 caps it at 240 images, 0.5 leaves 2000, None never caps
    assert ema_beta(4800, 32, 2000) == pytest.approx(0.5 ** (32 / 240))
    assert ema_beta(4800, 32, 2000, rampup=0.5) == pytest.approx(0.5 ** (32 / 2000))
    assert ema_beta(1000, 32, 2000, rampup=0.5) == pytest.approx(0.5 ** (32 / 500))
    assert ema_beta(32, 32, 2000, rampup=None) == pytest.approx(0.5 ** (32 / 2000))
    assert ema_beta(32, 32, 2000, fixed=0.9, rampup=0.5) == 0.9  # a fixed decay wins

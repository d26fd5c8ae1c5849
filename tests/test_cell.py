"""The run-cell contract: strict keys, validation that names the field, ids that ignore hardware knobs."""

import json

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

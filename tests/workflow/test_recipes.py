"""config/paper/RECIPES.md against the cells `eldistill grid --config config/paper.yaml` writes: every row's
value is what the cells hold, and every dataset x distiller of the grid has every setting documented."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from eldistill.distillers import REGISTRY
from eldistill.grid import RECIPES as RECIPE_NAMES
from eldistill.grid import build_grid, load_config

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "config" / "paper.yaml"
RECIPES = REPO / "config" / "paper" / "RECIPES.md"
HEADER = ["dataset", "distiller", "setting", "value", "reference", "source", "note"]
EDM_DATASETS = ("cifar10", "ffhq", "afhqv2", "imagenet64")  # the EDM teachers' datasets: all documented here
# The networks each distiller trains (DMD's GAN head exists when its GAN is on; its settings are documented anyway).
NETWORKS = {
    "di": ("generator", "fake_score"),
    "sid": ("generator", "fake_score"),
    "sida": ("generator", "fake_score"),
    "sid2a": ("generator", "fake_score"),
    "dmd": ("generator", "fake_score", "gan_head"),
    "cm": ("generator",),
}
CELL_SETTINGS = ("batch", "total_images", "precision", "dropout", "augment_p", "ema_halflife_images", "ema_beta")
OPTIM_KEYS = ("lr", "betas", "weight_decay", "warmup_images")
LPIPS_USERS = ("cm", "dmd")  # CM's distance and DMD1's regression measure with LPIPS at the cell's lpips_resize


def parse_recipes(text: str) -> dict[tuple[str, str], dict[str, tuple[object, int]]]:
    """(dataset, distiller) -> setting -> (value, line number), from every table with the recipe header."""
    recipes: dict[tuple[str, str], dict[str, tuple[object, int]]] = {}
    in_table = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        if cells == HEADER:
            in_table = True
            continue
        if not in_table or set("".join(cells)) <= {"-"}:
            continue
        assert len(cells) == len(HEADER), f"RECIPES.md line {number}: {len(cells)} columns, expected {len(HEADER)}"
        datasets, distillers, setting, value = cells[0], cells[1], cells[2], cells[3]
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            pytest.fail(f"RECIPES.md line {number}: value {value!r} is not JSON")
        for dataset in (d.strip() for d in datasets.split(",")):
            for distiller in (d.strip() for d in distillers.split(",")):
                known = distiller in REGISTRY or distiller in RECIPE_NAMES
                assert known, f"RECIPES.md line {number}: unknown distiller {distiller!r}"
                pair = recipes.setdefault((dataset, distiller), {})
                assert setting not in pair, (
                    f"RECIPES.md line {number}: {dataset}/{distiller} {setting} is also on line {pair[setting][1]}"
                )
                pair[setting] = (parsed, number)
    return recipes


def effective(cell, setting: str, documented=None):
    """The value a cell trains with for one RECIPES.md setting name. A documented total_images is the budget the
    config asks for, which the grid rounds up to whole iterations of the cell's batch."""
    if setting == "total_images" and isinstance(documented, int):
        return documented if cell.total_images == -(-documented // cell.batch) * cell.batch else cell.total_images
    head, _, rest = setting.partition(".")
    if head == "optim":
        network, key = rest.split(".")
        return cell.optim_settings(network)[key]
    if head == "distiller_args":
        return {**REGISTRY[cell.distiller].DEFAULTS, **cell.distiller_args}[rest]
    value = cell.to_dict()
    for part in setting.split("."):
        value = value[part]
    return value


def cell_keys(setting: str) -> set[str]:
    """The config keys an experiment would set to change this setting."""
    head = setting.split(".")[0]
    if head == "optim":
        return {"lr", "glr", "adam_betas", "weight_decay", "warmup_images", "network_optim"}
    return {head}


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a == pytest.approx(b, rel=1e-12, abs=0)
    return a == b


@pytest.fixture(scope="module")
def config():
    return load_config([PAPER])


@pytest.fixture(scope="module")
def recipes():
    return parse_recipes(RECIPES.read_text())


@pytest.fixture(scope="module")
def grid(config):
    return build_grid(config)


def recipe_cells(config, dataset: str, distiller: str):
    """The cells the grid writes for a plain experiment of this distiller on each teacher of the dataset."""
    cells = []
    for teacher, spec in config["teachers"].items():
        if spec["dataset"] != dataset:
            continue
        probe = copy.deepcopy(config)
        probe["experiments"] = {"recipe": {"table": "recipe", "teacher": teacher, "base": {"distiller": distiller}}}
        grid = build_grid(probe)
        cells += [grid.cells[row["cell_id"]] for row in grid.rows if row["cell_id"] in grid.cells]
    return cells


def test_the_edm_datasets_have_recipes(recipes):
    documented = {dataset for dataset, _ in recipes}
    assert set(EDM_DATASETS) <= documented


def test_every_row_is_what_the_grid_writes(config, recipes):
    wrong = []
    for (dataset, distiller), settings in sorted(recipes.items()):
        cells = recipe_cells(config, dataset, distiller)
        assert cells, f"RECIPES.md documents {dataset}/{distiller} but config/paper.yaml has no teacher of {dataset}"
        for cell in cells:
            for setting, (value, line) in settings.items():
                if not same(effective(cell, setting, value), value):
                    wrong.append(
                        f"line {line}: {dataset}/{distiller} ({cell.labels['teacher']}) {setting} = "
                        f"{effective(cell, setting, value)!r} in the cell, {value!r} in RECIPES.md"
                    )
    assert not wrong, "\n".join(wrong)


def test_every_grid_cell_follows_its_recipe(grid, recipes):
    """The paper's experiment cells hold the recipe except for the settings their experiment sets on purpose."""
    wrong = []
    for row in grid.rows:
        if row["cell_id"] not in grid.cells:
            continue  # a teacher evaluation (table `teachers`): nothing is trained
        cell = grid.cells[row["cell_id"]]
        pair = (cell.labels["dataset"], row["distiller"])  # a recipe name (dmd2) has its own rows
        if pair not in recipes:
            continue
        experiment = grid.config["experiments"][row["experiment"]]
        chosen = set(experiment["base"]) | set(experiment["vary"])
        for variant in experiment["variants"]:
            chosen |= set(variant)
        for setting, (value, line) in recipes[pair].items():
            if not cell_keys(setting) & chosen and not same(effective(cell, setting, value), value):
                got = effective(cell, setting, value)
                wrong.append(f"line {line}: {row['experiment']} {cell.cell_id} {setting} = {got!r}, not {value!r}")
    assert not wrong, "\n".join(wrong)


def test_every_setting_of_every_grid_pair_is_documented(grid, recipes):
    documented_datasets = {dataset for dataset, _ in recipes}
    missing = []
    for row in grid.rows:
        if row["cell_id"] not in grid.cells:
            continue  # a teacher evaluation (table `teachers`): nothing is trained
        cell = grid.cells[row["cell_id"]]
        dataset, distiller = cell.labels["dataset"], row["distiller"]
        if dataset not in documented_datasets:
            continue  # a dataset whose section another issue owns (ImageNet 512 / EDM2) until it lands
        cls = RECIPE_NAMES[distiller][0] if distiller in RECIPE_NAMES else distiller
        needed = set(CELL_SETTINGS) | {f"distiller_args.{k}" for k in REGISTRY[cls].DEFAULTS}
        needed |= {f"optim.{net}.{key}" for net in NETWORKS[cls] for key in OPTIM_KEYS}
        if cls in LPIPS_USERS:
            needed.add("lpips_resize")
        for setting in sorted(needed - set(recipes.get((dataset, distiller), {}))):
            missing.append(f"{dataset}/{distiller}: {setting}")
    assert not missing, "RECIPES.md lacks rows for:\n" + "\n".join(sorted(set(missing)))


def test_parser_rejects_a_conflicting_row():
    text = "\n".join(
        [
            "| " + " | ".join(HEADER) + " |",
            "|---|---|---|---|---|---|---|",
            "| cifar10 | sid | batch | 256 | 256 | x | |",
            "| cifar10, ffhq | sid | batch | 512 | 512 | y | |",
        ]
    )
    with pytest.raises(AssertionError, match="line 4: cifar10/sid batch is also on line 3"):
        parse_recipes(text)

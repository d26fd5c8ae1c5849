"""The experiment config -> validated run cells and GRID.csv (the `grid` verb).

The config (config/config.yaml, paper.yaml, ci.yaml) names experiments after what the paper shows. Each
experiment's cells are the cross product of its `vary` axes times its `variants`, layered as
defaults <- distillers[<distiller>] <- recipes[<dataset>][<distiller>] <- experiment.base <- vary values <-
variant (`recipes` holds each dataset x distiller's published settings, config/paper/RECIPES.md says whence).
Every cell becomes an `eldistill.cell.Cell`; two experiments that ask for the same settings share one cell (one
cell_id, trained once). SiD2A cells also pull in the SiD cell they start from. The Snakefile and `eldistill grid`
both call `build_grid`, so the workflow and the CLI agree on every id, path and error message.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from eldistill.cell import EMBEDDER_FAMILIES, Cell, CellError
from eldistill.io import atomic_write_bytes
from eldistill.resources import plan as resources_plan

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA = REPO / "config" / "schemas" / "config.schema.yaml"

GRID_COLUMNS = (
    "experiment",
    "table",
    "cell_id",
    "scale",
    "dataset",
    "resolution",
    "conditional",
    "distiller",
    "el",
    "el_weight",
    "batch",
    "n_archs",
    "inits_per_arch",
    "aux_loss",
    "total_images",
    "protocol",
    "gpus",  # optional for `eldistill tables`: wall seconds x gpus = gpu_seconds
)

# Cell settings an override may set directly; the rest of the override keys are resolved below.
CELL_KEYS = (
    "distiller",
    "batch",
    "total_images",
    "lr",
    "glr",
    "adam_betas",
    "weight_decay",
    "warmup_images",
    "network_optim",
    "dropout",
    "ema_halflife_images",
    "ema_beta",
    "snapshot_images",
    "log_images",
    "seed",
    "precision",
    "distiller_args",
)
# Used when neither the defaults nor any layer set them.
BUILTIN_DEFAULTS: dict[str, Any] = {"el": False, "el_weight": 1.0, "n_archs": 4, "inits_per_arch": 4, "el_args": {}}


class ConfigError(ValueError):
    """The experiment config is wrong; the message names the key."""


@dataclass
class Grid:
    config: dict[str, Any]  # validated, defaults filled
    rows: list[dict[str, Any]]  # GRID.csv rows, one per (experiment, cell)
    cells: dict[str, Cell]  # every cell to train (experiment cells and SiD2A init cells), by id
    plans: dict[str, dict[str, int]]  # eldistill.resources.plan of each cell
    init_of: dict[str, str] = field(default_factory=dict)  # sid2a cell id -> the SiD cell it starts from

    @property
    def scale(self) -> str:
        return self.config["scale"]

    @property
    def tables(self) -> list[str]:
        return sorted({row["table"] for row in self.rows})

    def cells_of_table(self, table: str) -> list[str]:
        return sorted({row["cell_id"] for row in self.rows if row["table"] == table})


# --- loading and validation ----------------------------------------------------------------------------------


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's --configfile semantics: mappings merge recursively, everything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(paths: list[str | Path]) -> dict[str, Any]:
    """Read and merge YAML config files, later files overriding earlier ones."""
    config: dict[str, Any] = {}
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
        config = merge(config, data)
    return config


def _key_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _with_defaults(validator_class):
    """A validator that also fills each missing property's `default` (as snakemake.utils.validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_config(config: dict[str, Any], schema_path: str | Path | None = None) -> dict[str, Any]:
    """Check the config against the JSON schema and return a copy with the schema's defaults filled in.
    The first error names the key, e.g. `experiments.frameworks.base.batch: -1 is less than the minimum of 1`."""
    schema_path = Path(schema_path or DEFAULT_SCHEMA)
    schema = yaml.safe_load(schema_path.read_text())
    config = copy.deepcopy(config)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        error = errors[0]
        # an error inside oneOf/anyOf is clearer from its most specific cause
        while error.context:
            error = min(error.context, key=lambda e: len(e.context))
        raise ConfigError(f"config: {_key_path(error.absolute_path)}: {error.message}")
    return config


# --- expansion -----------------------------------------------------------------------------------------------


def _check_vary(vary: dict[str, list], where: str, schema: dict[str, Any]) -> None:
    """Each value of a `vary` axis must be a valid value of that override key."""
    props = schema["$defs"]["overrides"]["properties"]
    for key, values in vary.items():
        for i, value in enumerate(values):
            try:
                jsonschema.Draft202012Validator(props[key]).validate(value)
            except jsonschema.ValidationError as e:
                raise ConfigError(f"config: {where}.vary.{key}[{i}]: {e.message}") from None


def _layers(
    config: dict[str, Any], experiment: dict[str, Any], combo: dict[str, Any], variant: dict[str, Any], force=None
) -> list[dict[str, Any]]:
    """The override layers of one cell, lowest first; the distiller's own layer and its recipe for the cell's
    dataset go right above the defaults and depend on the final distiller and teacher. `force` (a last layer)
    turns a cell into another, e.g. SiD2A's SiD."""
    upper = [experiment.get("base", {}), combo, variant] + ([force] if force else [])
    distiller, teacher = None, experiment.get("teacher")
    for layer in [config.get("defaults", {}), *upper]:
        distiller = layer.get("distiller", distiller)
        teacher = layer.get("teacher", teacher)
    dataset = config["teachers"].get(teacher, {}).get("dataset")
    recipe = config.get("recipes", {}).get(dataset, {}).get(distiller, {})
    return [
        BUILTIN_DEFAULTS,
        config.get("defaults", {}),
        config.get("distillers", {}).get(distiller, {}),
        recipe,
        *upper,
    ]


def _resolve(layers: list[dict[str, Any]]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for layer in layers:
        settings = merge(settings, layer)
    return settings


def _paths(scale: str) -> dict[str, str]:
    root = f"results/{scale}"
    return {
        "data": f"{root}/data/{{dataset}}.zip",
        "teacher": f"{root}/teachers/{{teacher}}.pt",
        "run": f"{root}/runs/{{cell_id}}",
        "state": f"{root}/state/{{cell_id}}",
    }


def _make_cell(
    config: dict[str, Any], settings: dict[str, Any], where: str, teacher_name: str, init_generator: str | None
) -> tuple[Cell, dict[str, int], dict[str, Any]]:
    scale = config["scale"]
    teacher = config["teachers"][teacher_name]
    dataset_name = teacher["dataset"]
    dataset = config["datasets"][dataset_name]
    paths = _paths(scale)
    if "distiller" not in settings:
        raise ConfigError(f"config: {where}.distiller: no distiller given (set it in defaults, base, vary or variants)")
    for key in ("batch", "total_images"):
        if key not in settings:
            raise ConfigError(f"config: {where}.{key}: not given (set it in defaults, base, vary or variants)")
    el_on = bool(settings["el"])
    el = dict(settings["el_args"])
    el.update(
        weight=float(settings["el_weight"]) if el_on else 0.0,
        archs=list(EMBEDDER_FAMILIES[: settings["n_archs"]]),
        inits_per_arch=settings["inits_per_arch"],
    )
    data = {key: copy.deepcopy(settings[key]) for key in CELL_KEYS if key in settings}
    data.update(
        teacher=paths["teacher"].format(teacher=teacher_name),
        dataset=paths["data"].format(dataset=dataset_name),
        el=el,
        init_generator=init_generator,
        labels={"scale": scale, "teacher": teacher_name, "dataset": dataset_name},
    )
    try:
        cell = Cell.from_dict(data, where=where)
    except CellError as e:
        raise ConfigError(f"config: {e}") from None
    hardware = config["hardware"]
    try:
        cell_plan = resources_plan(
            dataset_name,
            dataset["resolution"],
            teacher["params"],
            cell.batch,
            hardware["gpus_per_node"],
            total_images=cell.total_images,
            gpu_mem_gb=hardware["gpu_mem_gb"],
            max_gpus=hardware["max_gpus"],
        )
    except ValueError as e:
        raise ConfigError(f"config: {where}.batch = {cell.batch} on teacher '{teacher_name}': {e}") from None
    cell.batch_gpu = cell_plan["batch_gpu"]
    try:  # the global batch must split evenly over the GPUs the plan gives
        cell.validate(where, world_size=max(cell_plan["gpus"], 1))
    except CellError as e:
        raise ConfigError(f"config: {e} (hardware.gpus_per_node = {hardware['gpus_per_node']})") from None
    cell.run_dir = paths["run"].format(cell_id=cell.cell_id)
    cell.state_dir = paths["state"].format(cell_id=cell.cell_id)
    row = {
        "scale": scale,
        "dataset": dataset_name,
        "resolution": dataset["resolution"],
        "conditional": bool(teacher["conditional"]),
        "distiller": cell.distiller,
        "el": el_on,
        "el_weight": cell.el.weight,
        "batch": cell.batch,
        "n_archs": len(cell.el.archs),
        "inits_per_arch": cell.el.inits_per_arch,
        "aux_loss": settings.get("aux_loss") or ("el" if el_on else "none"),
        "total_images": cell.total_images,
        "protocol": config["protocol"]["name"],
        "gpus": cell_plan["gpus"],
    }
    return cell, cell_plan, row


def _check_references(config: dict[str, Any]) -> None:
    for name, dataset in config["datasets"].items():
        if "path" in dataset and "make" in dataset:
            raise ConfigError(f"config: datasets.{name}: give either make or path, not both")
        if "prepare" in dataset and "path" not in dataset:
            raise ConfigError(f"config: datasets.{name}.prepare: needs datasets.{name}.path (the file it writes)")
    for name, teacher in config["teachers"].items():
        if teacher["dataset"] not in config["datasets"]:
            known = ", ".join(sorted(config["datasets"]))
            raise ConfigError(
                f"config: teachers.{name}.dataset: unknown dataset '{teacher['dataset']}'; known: {known}"
            )
        dataset = config["datasets"][teacher["dataset"]]
        if teacher["conditional"] and not dataset["labels"]:
            raise ConfigError(
                f"config: teachers.{name}.conditional: dataset '{teacher['dataset']}' has no labels (datasets."
                f"{teacher['dataset']}.labels)"
            )
    for name in config.get("recipes", {}):
        if name not in config["datasets"]:
            known = ", ".join(sorted(config["datasets"]))
            raise ConfigError(f"config: recipes.{name}: unknown dataset '{name}'; known: {known}")
    protocol = config["protocol"]
    if protocol["name"] == "fid50k-tf-inception":
        if not protocol["feature_net_url"]:
            raise ConfigError("config: protocol.feature_net_url: required by the fid50k-tf-inception protocol")
        for name in config["datasets"]:
            if name not in protocol["references"]:
                raise ConfigError(f"config: protocol.references.{name}: no reference statistics for dataset '{name}'")


def _expand(experiment: dict[str, Any]):
    """(combo, variant index, variant) for the cross product of `vary` times `variants`."""
    axes = list(experiment["vary"])
    for values in itertools.product(*(experiment["vary"][axis] for axis in axes)):
        for v, variant in enumerate(experiment["variants"]):
            yield dict(zip(axes, values)), v, variant


def build_grid(config: dict[str, Any], schema_path: str | Path | None = None) -> Grid:
    """Validate the config and expand its experiments into cells; raise ConfigError naming the key."""
    config = validate_config(config, schema_path)
    schema = yaml.safe_load(Path(schema_path or DEFAULT_SCHEMA).read_text())
    _check_references(config)
    result = Grid(config=config, rows=[], cells={}, plans={})

    def add(cell: Cell, cell_plan: dict[str, int]) -> None:
        result.cells.setdefault(cell.cell_id, cell)
        result.plans.setdefault(cell.cell_id, cell_plan)

    for name, experiment in config["experiments"].items():
        where = f"experiments.{name}"
        _check_vary(experiment["vary"], where, schema)
        for combo, v, variant in _expand(experiment):
            layers = _layers(config, experiment, combo, variant)
            settings = _resolve(layers)
            cell_where = where + (f" {combo}" if combo else "") + (f".variants[{v}]" if variant else "")
            teacher = settings.get("teacher", experiment["teacher"])
            if teacher not in config["teachers"]:
                key = f"{cell_where}.teacher" if "teacher" in settings else f"{where}.teacher"
                known = ", ".join(sorted(config["teachers"]))
                raise ConfigError(f"config: {key}: unknown teacher '{teacher}'; known: {known}")
            init_cell = None
            if settings.get("distiller") == "sid2a":
                # SiD2A = SiDA started from the SiD generator of the same settings (distillers.sid2a's own
                # settings, e.g. its GAN schedule, do not apply to the SiD cell)
                sid = _resolve(_layers(config, experiment, combo, variant, {"distiller": "sid", "aux_loss": "none"}))
                init_cell, init_plan, _ = _make_cell(config, sid, f"{cell_where} (its SiD start)", teacher, None)
                add(init_cell, init_plan)
            init_generator = f"{init_cell.run_dir}/generator.pt" if init_cell else None
            cell, cell_plan, row = _make_cell(config, settings, cell_where, teacher, init_generator)
            if init_cell:
                result.init_of[cell.cell_id] = init_cell.cell_id
            add(cell, cell_plan)
            row = {"experiment": name, "table": experiment["table"], "cell_id": cell.cell_id, **row}
            if not any(r["experiment"] == name and r["cell_id"] == cell.cell_id for r in result.rows):
                result.rows.append(row)  # one row per (experiment, cell), even if an experiment lists it twice
    return result


def write_grid_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=GRID_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in GRID_COLUMNS})
    return atomic_write_bytes(buffer.getvalue().encode(), path)


def write_cells(result: Grid, out_dir: str | Path) -> list[Path]:
    """Each cell's JSON (what `eldistill train --config` reads) as OUT_DIR/<cell_id>.json."""
    paths = []
    for cell_id, cell in result.cells.items():
        path = Path(out_dir) / f"{cell_id}.json"
        atomic_write_bytes((json.dumps(cell.to_dict(), indent=2, sort_keys=True) + "\n").encode(), path)
        paths.append(path)
    return paths


def grid(
    config_paths: list[str | Path],
    out: str | Path | None = None,
    schema: str | Path | None = None,
    cells_dir: str | Path | None = None,
) -> Grid:
    """Python entry point of `eldistill grid`: load, validate, expand and (optionally) write GRID.csv and
    every cell's JSON."""
    result = build_grid(load_config(config_paths), schema)
    if out:
        write_grid_csv(result.rows, out)
    if cells_dir:
        write_cells(result, cells_dir)
    return result


# --- CLI -----------------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--config", nargs="+", required=True, help="config YAML file(s); later ones override")
    parser.add_argument("--out", help="GRID.csv to write (omit to only validate)")
    parser.add_argument("--cells", help="folder to write each cell's JSON into (<cell_id>.json)")
    parser.add_argument("--schema", default=str(DEFAULT_SCHEMA), help="JSON schema of the config (YAML)")


def run(args) -> int:
    try:
        result = grid(args.config, args.out, args.schema, args.cells)
    except ConfigError as e:
        print(f"error: {e}")
        return 2
    gpus = sum(p["gpus"] for p in result.plans.values())
    print(
        f"{result.scale}: {len(result.rows)} rows, {len(result.cells)} cells to train, tables "
        f"{', '.join(result.tables)}; {gpus} GPUs requested in total"
    )
    return 0

"""The experiment config -> validated run cells and GRID.csv (the `grid` verb).

The config (config/config.yaml, paper.yaml, ci.yaml) names experiments after what the paper shows. Each
experiment's cells are the cross product of its `vary` axes times its `variants`, layered as
defaults <- distillers[<distiller>] <- recipes[<dataset>][<distiller>] <- experiment.base <- vary values <-
variant (`recipes` holds each dataset x distiller's published settings, config/paper/RECIPES.md says whence).
Every cell becomes an `eldistill.cell.Cell`; two experiments that ask for the same settings share one cell (one
cell_id, trained once). SiD2A cells also pull in the SiD cell they start from. The Snakefile and `eldistill grid`
both call `build_grid`, so the workflow and the CLI agree on every id, path and error message.

Every experiment is expanded and checked, but only the selected ones become rows: an experiment with
`enabled: false` (e.g. the expensive EDM2 S..XXL baselines) or one left out of `only_experiments` is
validated and costed, not run. `full_grid.enabled: true` adds the whole datasets x distillers x EL x batch x
embedder-diversity product as one more experiment. `teacher_evals` are the teachers' own FIDs (EDM's
sampler settings), rows of the `teachers` table. `plan_table` gives each trained cell's hardware, segments
and GPU-hours (results/<scale>/plan.csv); `budget_text` is what `eldistill grid` and the workflow print.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from eldistill.cell import DISTILLERS, EMBEDDER_FAMILIES, Cell, CellError, needs_lpips
from eldistill.io import atomic_write_bytes
from eldistill.resources import (
    CPU_FLOPS,
    CPU_MAX_TEACHER_PARAMS,
    FLOPS_PER_PARAM_PIXEL,
    GPU_FLOPS,
    LATENT_DOWNSAMPLE,
    PRECISION_THROUGHPUT,
    RUNTIME_OVERHEAD_MIN,
    RUNTIME_SAFETY,
    gpu_hours,
    network_resolution,
    segments,
)
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
    "seed",  # optional for `eldistill tables`: the training seed (settings that differ only in it are repeats)
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
    "augment_p",
    "ema_halflife_images",
    "ema_beta",
    "ema_rampup",
    "snapshot_images",
    "log_images",
    "seed",
    "precision",
    "distiller_args",
)
# Recipes named after a paper that our distiller classes run with fixed options. The row (and the diff's key)
# keeps the recipe's name; the cell runs the class. DMD2 = DMD with its two time-scale update rule (the fake
# score takes 5 steps per generator step, `dfake_gen_update_ratio` of tianweiy/DMD2) and its GAN head.
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {"dmd2": ("dmd", {"gan": True, "gen_update_ratio": 5})}
TEACHER_TABLE = "teachers"  # the pseudo-experiment and table of the teacher evaluations
FULL_GRID = "full_grid"  # the experiment `full_grid.enabled` adds
# Used when neither the defaults nor any layer set them.
BUILTIN_DEFAULTS: dict[str, Any] = {"el": False, "el_weight": 1.0, "n_archs": 4, "inits_per_arch": 4, "el_args": {}}


class ConfigError(ValueError):
    """The experiment config is wrong; the message names the key."""


@dataclass
class Grid:
    config: dict[str, Any]  # validated, defaults filled
    rows: list[dict[str, Any]]  # GRID.csv rows, one per (experiment, cell)
    cells: dict[str, Cell]  # every cell to train (experiment cells and SiD2A init cells), by id
    plans: dict[str, dict[str, Any]]  # eldistill.resources.plan of each cell
    init_of: dict[str, str] = field(default_factory=dict)  # sid2a cell id -> the SiD cell it starts from
    owners: dict[str, list[str]] = field(default_factory=dict)  # cell id -> the selected experiments that need it
    teacher_evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # eval id -> teacher, sampler, plan
    skipped: list[str] = field(default_factory=list)  # experiments checked but not selected (enabled/only)

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


def read_yaml(path: str | Path) -> Any:
    """yaml.safe_load of a file, with libyaml's parser where PyYAML has it: same result, ~10x faster than the
    pure-Python one, and every SLURM job's two Snakemake processes read the schema."""
    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_config(paths: list[str | Path]) -> dict[str, Any]:
    """Read and merge YAML config files, later files overriding earlier ones."""
    config: dict[str, Any] = {}
    for path in paths:
        try:
            data = read_yaml(path)
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


def load_schema(schema_path: str | Path | None = None) -> dict[str, Any]:
    """The config's JSON schema (YAML)."""
    return read_yaml(schema_path or DEFAULT_SCHEMA)


def validate_config(
    config: dict[str, Any], schema_path: str | Path | None = None, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Check the config against the JSON schema (read from `schema_path` unless given as `schema`) and return a
    copy with the schema's defaults filled in. The first error names the key, e.g.
    `experiments.frameworks.base.batch: -1 is less than the minimum of 1`."""
    if schema is None:
        schema = load_schema(schema_path)
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
                jsonschema.Draft202012Validator({"$defs": schema["$defs"], **props[key]}).validate(value)
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
    # a recipe name (dmd2) sits on top of its class's (dmd) settings
    names = [RECIPES[distiller][0], distiller] if distiller in RECIPES and distiller not in DISTILLERS else [distiller]
    recipes = config.get("recipes", {}).get(dataset, {})
    return [
        BUILTIN_DEFAULTS,
        config.get("defaults", {}),
        *(config.get("distillers", {}).get(name, {}) for name in names),
        *(recipes.get(name, {}) for name in names),
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
        "lpips": f"{root}/lpips",
    }


def prepared_resolution(dataset: dict[str, Any]) -> int:
    """The pixel size `prepare-dataset` writes: `prepare.resolution`, else the dataset's `resolution` (which labels
    the rows either way: the rehearsal prepares 8x8 pixels under the paper's `ffhq64`)."""
    return dataset.get("prepare", {}).get("resolution") or dataset["resolution"]


def network_size(dataset: dict[str, Any]) -> int:
    """The spatial size the teacher works at: the prepared pixels, or their latents (8x smaller) for an EDM2
    latent dataset (channels 4). eldistill.resources.plan passes such a size through unchanged."""
    pixels = prepared_resolution(dataset)
    return pixels // LATENT_DOWNSAMPLE if dataset["channels"] == 4 else pixels


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
    recipe = settings["distiller"]
    if recipe in RECIPES and recipe not in DISTILLERS:  # a recipe name: the class, with the recipe's options
        data["distiller"], options = RECIPES[recipe]
        data["distiller_args"] = merge(options, settings.get("distiller_args", {}))
    asked, batch = data.get("total_images"), data.get("batch")
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (asked, batch)) and asked % batch:
        data["total_images"] = -(-asked // batch) * batch  # a cell trains whole iterations (Cell refuses the rest)
    data.update(
        teacher=paths["teacher"].format(teacher=teacher_name),
        dataset=paths["data"].format(dataset=dataset_name),
        el=el,
        init_generator=init_generator,
        labels={"scale": scale, "teacher": teacher_name, "dataset": dataset_name},
    )
    if needs_lpips(data["distiller"], data.get("distiller_args", {})):
        if not config.get("lpips"):
            raise ConfigError(f"config: lpips: {where} measures with LPIPS; give the urls (and sha256) of its weights")
        data["lpips"] = paths["lpips"]  # the workflow downloads the files there (rule download_lpips)
        data["lpips_resize"] = config["lpips"]["resize"]
    try:
        cell = Cell.from_dict(data, where=where)
    except CellError as e:
        raise ConfigError(f"config: {e}") from None
    hardware = config["hardware"]
    try:
        cell_plan = resources_plan(
            dataset_name,
            network_size(dataset),
            teacher["params"],
            cell.batch,
            hardware["gpus_per_node"],
            total_images=cell.total_images,
            gpu_mem_gb=hardware["gpu_mem_gb"],
            max_gpus=hardware["max_gpus"],
            max_runtime_min=hardware["max_runtime_min"],
            gpu_flops=hardware["gpu_flops"],
            precision=cell.precision,
            el_embedders=cell.el.embedders,
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
        "distiller": recipe,
        "el": el_on,
        "el_weight": cell.el.weight,
        "batch": cell.batch,
        "n_archs": len(cell.el.archs),
        "inits_per_arch": cell.el.inits_per_arch,
        "aux_loss": settings.get("aux_loss") or ("el" if el_on else "none"),
        "total_images": cell.total_images,
        "total_images_asked": asked,  # not a GRID.csv column: `eldistill grid` states the rounding
        "protocol": config["protocol"]["name"],
        "gpus": cell_plan["gpus"],
        "seed": cell.seed,
    }
    return cell, cell_plan, row


def _unknown(kind: str, key: str, name, known) -> ConfigError:
    return ConfigError(f"config: {key}: unknown {kind} '{name}'; known: {', '.join(sorted(known))}")


def _check_references(config: dict[str, Any]) -> None:
    """Every name the config mentions must exist, in experiments that are switched off too: a typo in an
    experiment that is off today fails today, not on the day it is switched on."""
    datasets, teachers, experiments = config["datasets"], config["teachers"], config["experiments"]
    for name, dataset in datasets.items():
        if "path" in dataset and "make" in dataset:
            raise ConfigError(f"config: datasets.{name}: give either make or path, not both")
        if "prepare" in dataset and "path" not in dataset:
            raise ConfigError(f"config: datasets.{name}.prepare: needs datasets.{name}.path (the file it writes)")
        pixels = dataset.get("prepare", {}).get("resolution")
        if pixels is not None and dataset["channels"] == 4 and pixels % LATENT_DOWNSAMPLE:
            raise ConfigError(
                f"config: datasets.{name}.prepare.resolution: {pixels} is not a multiple of {LATENT_DOWNSAMPLE}: a "
                f"latent dataset (channels 4) encodes its images with the VAE's {LATENT_DOWNSAMPLE}x down-sampling"
            )
        if dataset["channels"] == 4 and "path" in dataset and not dataset.get("vae"):
            raise ConfigError(
                f"config: datasets.{name}.vae: a latent dataset (channels 4) needs the VAE folder that decodes "
                "its generators' latents for FID (a local copy of stabilityai/sd-vae-ft-mse)"
            )
    for name, teacher in teachers.items():
        if teacher["dataset"] not in datasets:
            raise _unknown("dataset", f"teachers.{name}.dataset", teacher["dataset"], datasets)
        dataset = datasets[teacher["dataset"]]
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
    for name in protocol["references"]:
        if name not in datasets:
            raise _unknown("dataset", f"protocol.references.{name}", name, datasets)
    if protocol["name"] in ("fid50k-tf-inception", "rehearsal"):
        if not protocol["feature_net_url"]:
            raise ConfigError(f"config: protocol.feature_net_url: required by the {protocol['name']} protocol")
        for name in datasets:
            if name not in protocol["references"]:
                raise ConfigError(f"config: protocol.references.{name}: no reference statistics for dataset '{name}'")
    layers = [("defaults", config["defaults"])] + [(f"distillers.{d}", o) for d, o in config["distillers"].items()]
    for dataset_name, recipes in config.get("recipes", {}).items():
        layers += [(f"recipes.{dataset_name}.{d}", o) for d, o in recipes.items()]
    for key, layer in layers:
        if layer.get("teacher") is not None and layer["teacher"] not in teachers:
            raise _unknown("teacher", f"{key}.teacher", layer["teacher"], teachers)
    for name, experiment in experiments.items():
        where = f"experiments.{name}"
        mentions = [
            (f"{where}.teacher", experiment["teacher"]),
            (f"{where}.base.teacher", experiment["base"].get("teacher")),
        ]
        mentions += [(f"{where}.vary.teacher[{i}]", t) for i, t in enumerate(experiment["vary"].get("teacher", []))]
        mentions += [(f"{where}.variants[{i}].teacher", v.get("teacher")) for i, v in enumerate(experiment["variants"])]
        for key, teacher in mentions:
            if teacher is not None and teacher not in teachers:
                raise _unknown("teacher", key, teacher, teachers)
    for i, name in enumerate(config["only_experiments"] or []):
        if name not in experiments and name not in (TEACHER_TABLE, FULL_GRID):
            raise _unknown("experiment", f"only_experiments[{i}]", name, [*experiments, TEACHER_TABLE, FULL_GRID])
    for i, teacher in enumerate(config["full_grid"]["teachers"]):
        if teacher not in teachers:
            raise _unknown("teacher", f"full_grid.teachers[{i}]", teacher, teachers)
    for name, evaluation in config["teacher_evals"].items():
        if evaluation["teacher"] not in teachers:
            raise _unknown("teacher", f"teacher_evals.{name}.teacher", evaluation["teacher"], teachers)
    if FULL_GRID in experiments:
        raise ConfigError(f"config: experiments.{FULL_GRID}: the name is reserved for the full_grid switch")


def _expand(experiment: dict[str, Any]):
    """(combo, variant index, variant) for the cross product of `vary` times `variants`."""
    axes = list(experiment["vary"])
    for values in itertools.product(*(experiment["vary"][axis] for axis in axes)):
        for v, variant in enumerate(experiment["variants"]):
            yield dict(zip(axes, values)), v, variant


def full_grid_experiment(full: dict[str, Any]) -> dict[str, Any]:
    """The full product as one experiment: teachers x distillers x batch x EL off, plus EL on for every
    embedder ensemble in `diversity` ((architectures, initialisations) pairs): EL off has no ensemble."""
    variants = [{"el": False}] + [{"el": True, "n_archs": a, "inits_per_arch": i} for a, i in full["diversity"]]
    if False not in full["el"]:
        variants = variants[1:]
    if True not in full["el"]:
        variants = variants[:1]
    return {
        "description": "the full datasets x distillers x EL x batch x embedder-diversity product",
        "table": FULL_GRID,
        "teacher": full["teachers"][0],
        "enabled": True,
        "base": {},
        "vary": {"teacher": full["teachers"], "distiller": full["distillers"], "batch": full["batch"]},
        "variants": variants,
    }


def selected(config: dict[str, Any], name: str) -> bool:
    """An experiment runs when it is enabled and, if only_experiments is given, listed there."""
    only = config["only_experiments"]
    enabled = True if name == TEACHER_TABLE else config["experiments"][name].get("enabled", True)
    return enabled and (only is None or name in only)


def teacher_eval_id(name: str, teacher: str, sampler: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps({"teacher": teacher, **sampler}, sort_keys=True).encode()).hexdigest()
    return f"teacher-{name}-{digest[:10]}"


def _teacher_evals(config: dict[str, Any], result: Grid) -> None:
    """The teachers' own FIDs: one evaluation job and one row of the `teachers` table each."""
    scale, hardware, protocol = config["scale"], config["hardware"], config["protocol"]
    for name, evaluation in config["teacher_evals"].items():
        teacher_name = evaluation["teacher"]
        teacher = config["teachers"][teacher_name]
        dataset = config["datasets"][teacher["dataset"]]
        sampler = {k: v for k, v in evaluation.items() if k not in ("teacher", "label")}
        eval_id = teacher_eval_id(name, teacher_name, sampler)
        on_gpu = hardware["gpus_per_node"] > 0 and teacher["params"] >= CPU_MAX_TEACHER_PARAMS
        nfe = 2 * sampler["steps"] - 1
        seed_ranges = 3 if protocol["aggregation"] == "min-of-3-seeds" else 1
        runtime = teacher_eval_runtime(
            protocol["num_samples"] * seed_ranges, nfe, teacher["params"], network_size(dataset), on_gpu,
            hardware["gpu_flops"],
        )  # fmt: skip
        count, per_job = segments(runtime, hardware["max_runtime_min"])
        result.teacher_evals[eval_id] = {
            "name": name,
            "teacher": teacher_name,
            "teacher_path": _paths(scale)["teacher"].format(teacher=teacher_name),
            "dataset": teacher["dataset"],
            "sampler": sampler,
            "plan": {"gpus": 1 if on_gpu else 0, "nodes": 1, "runtime_min": per_job, "segments": count,
                     "total_min": runtime, "mem_mb": 32000 if on_gpu else 4000, "precision": "fp32"},
        }  # fmt: skip
        if selected(config, TEACHER_TABLE):
            result.rows.append(
                {
                    "experiment": TEACHER_TABLE,
                    "table": TEACHER_TABLE,
                    "cell_id": eval_id,
                    "scale": scale,
                    "dataset": teacher["dataset"],
                    "resolution": dataset["resolution"],
                    "conditional": bool(teacher["conditional"]),
                    "distiller": evaluation["label"],
                    "el": False,
                    "el_weight": 0.0,
                    "batch": "",
                    "n_archs": "",
                    "inits_per_arch": "",
                    "aux_loss": "none",
                    "total_images": "",
                    "protocol": protocol["name"],
                    "gpus": 1 if on_gpu else 0,
                    "seed": 0,  # nothing trained: one evaluation, as a cell of seed 0
                }
            )


def teacher_eval_runtime(
    images: int, nfe: int, params: int, resolution: int, on_gpu: bool, gpu_flops: float = GPU_FLOPS
) -> int:
    """Minutes to sample `images` with `nfe` forward passes each (a forward ~ FLOPS_PER_PARAM_PIXEL / 12, fp32)."""
    flops = images * nfe * (FLOPS_PER_PARAM_PIXEL / 12) * params * network_resolution(resolution) ** 2
    speed = gpu_flops * PRECISION_THROUGHPUT["fp32"] if on_gpu else CPU_FLOPS
    return math.ceil(flops / speed * RUNTIME_SAFETY / 60) + RUNTIME_OVERHEAD_MIN


def build_grid(config: dict[str, Any], schema_path: str | Path | None = None) -> Grid:
    """Validate the config and expand its experiments into cells; raise ConfigError naming the key."""
    schema = load_schema(schema_path)
    config = validate_config(config, schema=schema)
    _check_references(config)
    result = Grid(config=config, rows=[], cells={}, plans={})
    experiments = dict(config["experiments"])
    if config["full_grid"]["enabled"]:
        experiments[FULL_GRID] = full_grid_experiment(config["full_grid"])

    def add(cell: Cell, cell_plan: dict[str, Any], owner: str | None) -> None:
        result.cells.setdefault(cell.cell_id, cell)
        result.plans.setdefault(cell.cell_id, cell_plan)
        owners = result.owners.setdefault(cell.cell_id, [])
        if owner and owner not in owners:
            owners.append(owner)

    for name, experiment in experiments.items():
        where = f"experiments.{name}" if name != FULL_GRID else FULL_GRID
        _check_vary(experiment["vary"], where, schema)
        run = name == FULL_GRID or selected(config, name)
        if not run:
            result.skipped.append(name)
        for combo, v, variant in _expand(experiment):
            layers = _layers(config, experiment, combo, variant)
            settings = _resolve(layers)
            cell_where = where + (f" {combo}" if combo else "") + (f".variants[{v}]" if variant else "")
            teacher = settings.get("teacher", experiment["teacher"])
            init_cell = None
            if settings.get("distiller") == "sid2a":
                # SiD2A = SiDA started from the SiD generator of the same settings (distillers.sid2a's own
                # settings, e.g. its GAN schedule, do not apply to the SiD cell)
                sid = _resolve(_layers(config, experiment, combo, variant, {"distiller": "sid", "aux_loss": "none"}))
                init_cell, init_plan, _ = _make_cell(config, sid, f"{cell_where} (its SiD start)", teacher, None)
                if run:
                    add(init_cell, init_plan, name)
            init_generator = f"{init_cell.run_dir}/generator.pt" if init_cell else None
            cell, cell_plan, row = _make_cell(config, settings, cell_where, teacher, init_generator)
            if not run:
                continue
            if init_cell:
                result.init_of[cell.cell_id] = init_cell.cell_id
            add(cell, cell_plan, name)
            row = {"experiment": name, "table": experiment["table"], "cell_id": cell.cell_id, **row}
            if not any(r["experiment"] == name and r["cell_id"] == cell.cell_id for r in result.rows):
                result.rows.append(row)  # one row per (experiment, cell), even if an experiment lists it twice
    _teacher_evals(config, result)
    return result


# --- the budget -------------------------------------------------------------------------------------------

PLAN_COLUMNS = (
    "job",
    "cell_id",
    "experiments",
    "gpus",
    "nodes",
    "precision",
    "segments",
    "runtime_min",
    "total_min",
    "gpu_hours_first",
    "gpu_hours_worst",
)


def plan_table(result: Grid) -> list[dict[str, Any]]:
    """One row per job family the workflow submits (trained cells, teacher evaluations): hardware, segments and
    GPU-hours (first attempt; worst case = every segment retried hardware.retries times within the limit)."""
    hardware = result.config["hardware"]
    rows = []
    for job, plans in (
        ("distill", result.plans),
        ("evaluate_teacher", {k: v["plan"] for k, v in result.teacher_evals.items()}),
    ):
        for cell_id, cell_plan in plans.items():
            owners = result.owners.get(cell_id, [TEACHER_TABLE] if job == "evaluate_teacher" else [])
            if job == "evaluate_teacher" and not selected(result.config, TEACHER_TABLE):
                continue
            first, worst = gpu_hours(cell_plan, hardware["retries"], hardware["max_runtime_min"])
            rows.append(
                {
                    "job": job,
                    "cell_id": cell_id,
                    "experiments": ";".join(owners),
                    **{k: cell_plan[k] for k in ("gpus", "nodes", "precision", "segments", "runtime_min", "total_min")},
                    "gpu_hours_first": round(first, 2),
                    "gpu_hours_worst": round(worst, 2),
                }
            )
    return rows


def write_plan_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PLAN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(buffer.getvalue().encode(), path)


def budget_text(result: Grid, per_job: bool = False) -> str:
    """GPU-hours per experiment and in total (a cell two experiments share counts once in the total); with
    `per_job`, first one line per job (cell or teacher evaluation), the rows of plan.csv."""
    rows = plan_table(result)
    limit = result.config["hardware"]["max_runtime_min"]
    per: dict[str, list[float]] = {}
    for row in rows:
        for owner in row["experiments"].split(";"):
            sums = per.setdefault(owner, [0, 0.0, 0.0, 0])
            sums[0] += 1
            sums[1] += row["gpu_hours_first"]
            sums[2] += row["gpu_hours_worst"]
            sums[3] += row["segments"] > 1
    lines = [
        f"GPU-hours of the {result.scale} grid (eldistill.resources.plan; worst case = every job retried "
        f"{result.config['hardware']['retries']}x, each try <= {limit} min):",
    ]
    if per_job:
        lines.append(
            f"  {'job':<36} {'GPUs':>5} {'segments':>8} {'min/job':>8} {'first attempt':>14} {'worst case':>12}"
        )
        for r in rows:
            lines.append(
                f"  {r['cell_id']:<36} {r['gpus']:>5} {r['segments']:>8} {r['runtime_min']:>8} "
                f"{r['gpu_hours_first']:>14,.1f} {r['gpu_hours_worst']:>12,.1f}"
            )
    lines.append(f"  {'experiment':<20} {'jobs':>5} {'segmented':>9} {'first attempt':>14} {'worst case':>12}")
    for owner, (n, first, worst, split) in per.items():
        lines.append(f"  {owner:<20} {n:>5} {split:>9} {first:>14,.0f} {worst:>12,.0f}")
    first = sum(r["gpu_hours_first"] for r in rows)
    worst = sum(r["gpu_hours_worst"] for r in rows)
    lines.append(
        f"  {'total':<20} {len(rows):>5} {sum(r['segments'] > 1 for r in rows):>9} {first:>14,.0f} {worst:>12,.0f}"
    )
    if result.skipped:
        lines.append(f"  not selected (checked only): {', '.join(result.skipped)}")
    return "\n".join(lines)


def write_grid_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=GRID_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in GRID_COLUMNS})  # teacher-evaluation rows have no seed
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
    parser.add_argument("--plan", help="plan.csv to write: each job's GPUs, segments and GPU-hours")
    parser.add_argument("--per-job", action="store_true", help="also print each job's GPU-hours (plan.csv's rows)")
    parser.add_argument("--schema", default=str(DEFAULT_SCHEMA), help="JSON schema of the config (YAML)")


def run(args) -> int:
    try:
        result = grid(args.config, args.out, args.schema, args.cells)
    except ConfigError as e:
        print(f"error: {e}")
        return 2
    if args.plan:
        write_plan_csv(plan_table(result), args.plan)
    rounded = [r for r in result.rows if r.get("total_images_asked", r["total_images"]) != r["total_images"]]
    if rounded:
        r = rounded[0]
        print(
            f"note: {len(rounded)} row(s) round total_images up to whole iterations, e.g. {r['experiment']} "
            f"{r['cell_id']}: {r['total_images_asked']} -> {r['total_images']} images at batch {r['batch']}"
        )
    print(
        f"{result.scale}: {len(result.rows)} rows, {len(result.cells)} cells to train, "
        f"{len(result.teacher_evals)} teacher evaluations, tables {', '.join(result.tables)}"
    )
    print(budget_text(result, per_job=args.per_job))
    return 0

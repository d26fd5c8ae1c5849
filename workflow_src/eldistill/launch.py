"""`eldistill launch`: submit run cells straight to SLURM with submitit, for users who drive runs from Python.

Each cell becomes one SLURM job (or one task of a job array) that runs `eldistill train --config CELL.json`
and leaves its results in the cell's run_dir (results/<scale>/runs/<cell_id>/), exactly where Snakemake
would, so the workflow's tables pick them up. Hardware comes from `eldistill.resources.plan`:
- CPU or one GPU: one task, one training process;
- one node, several GPUs: one task that runs `torchrun --standalone --nproc_per_node=<gpus>`;
- several nodes: one task per GPU started by srun; each training process reads its rank from SLURM's
  variables (`eldistill.resources.distributed_env`).
On preemption or time-out (SLURM's SIGTERM, or submitit's pre-time-out signal) the training process saves
its state and exits with code 3; the job then requeues itself, at most `max_requeues` times, and resumes
from the saved state. Every start, requeue and finish is recorded in run_dir/requeues.jsonl.
Snakemake stays the one scheduler of the grid: never call this from a Snakemake rule.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import torch
from tqdm import tqdm

from eldistill.cell import Cell
from eldistill.io import append_jsonl, read_jsonl
from eldistill.resources import plan
from eldistill.untrusted.torch_files import load_torch_file

EXIT_REQUEUE = 3  # the training loop's "stopped by a signal after saving its state" (INTERFACES.md)
STOP_SIGNAL = signal.SIGUSR1  # what we send the training process to make it save and stop
LAUNCH_CELL_NAME = "launch-cell.json"  # the resolved cell the job trains, kept in state_dir


# --- what to submit -----------------------------------------------------------------------------------------
def resolve_cell(spec: str | Path, results: str | Path = "results") -> Cell:
    """A cell from a JSON file, or from its id: results/*/runs/<id>/config.json (a cell Snakemake or an
    earlier launch ran) or results/*/cells/<id>.json."""
    path = Path(spec)
    if path.is_file():
        return Cell.load(path)
    if path.suffix or os.sep in str(spec):
        raise ValueError(f"cell file not found: {spec}")
    found = sorted(Path(results).glob(f"*/runs/{spec}/config.json")) + sorted(
        Path(results).glob(f"*/cells/{spec}.json")
    )
    if not found:
        raise ValueError(f"cell '{spec}': no such file, and no cell with that id under {results}/*/runs or */cells")
    return Cell.load(found[0])


def place_cell(cell: Cell, results_dir: str | Path | None) -> Cell:
    """Fill run_dir and state_dir from results/<scale>/ when the cell does not name them."""
    if results_dir is not None:
        cell.run_dir = cell.run_dir or str(Path(results_dir) / "runs" / cell.cell_id)
        cell.state_dir = cell.state_dir or str(Path(results_dir) / "state" / cell.cell_id)
    for key in ("run_dir", "state_dir"):
        if not getattr(cell, key):
            raise ValueError(f"cell {cell.cell_id}: '{key}' is empty; pass --results results/<scale>")
    final = Path(cell.run_dir) / "generator.pt"
    if final.exists():  # GPU hours are not spent twice: a finished cell is only retrained on purpose
        raise ValueError(f"cell {cell.cell_id} already finished ({final}); delete that file to train it again")
    return cell


def teacher_shape(path: str | Path) -> tuple[int, int]:
    """(network resolution, parameter count) of one of our teacher files, without building the network."""
    try:
        data = load_torch_file(path, "cpu", "network file")
        resolution = int(data["config"]["img_resolution"])
        params = sum(t.numel() for t in data["state_dict"].values() if torch.is_tensor(t))
        kind = data["meta"].get("kind")
    except FileNotFoundError:
        raise ValueError(f"teacher file not found: {path}") from None
    except Exception as e:
        raise ValueError(f"{path}: not one of our network files ({type(e).__name__}: {e})") from None
    if kind != "teacher":  # refused here, before any job is submitted (training would refuse it too)
        raise ValueError(f"teacher: {path} is a network file of kind {kind!r}; 'teacher' needs one of kind 'teacher'")
    return resolution, params


@dataclass
class Partition:
    name: str
    nodes: int  # nodes that can run jobs (not down or drained)
    gpus_per_node: int
    cpus_per_node: int


def read_partition(name: str | None = None) -> Partition:
    """What a partition can give, from sinfo (the default partition when name is None)."""
    if not shutil.which("sinfo"):
        raise ValueError("no SLURM here: 'sinfo' is not on PATH")
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%N|%G|%c|%t"], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise ValueError(f"sinfo failed: {out.stderr.strip()}")
    rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
    partitions = sorted({r[0].rstrip("*") for r in rows})
    if name is None:
        defaults = [r[0].rstrip("*") for r in rows if r[0].endswith("*")]
        if not defaults:
            raise ValueError(f"no default partition; pass --partition (one of {', '.join(partitions)})")
        name = defaults[0]
    mine = [r for r in rows if r[0].rstrip("*") == name]
    if not mine:
        raise ValueError(f"partition '{name}' does not exist; sinfo shows: {', '.join(partitions) or 'none'}")
    usable = {r[1]: r for r in mine if not re.match(r"(down|drain|drng|fail|maint|inval)", r[4])}
    gpus = [_gres_gpus(r[2]) for r in usable.values()]
    cpus = [int(r[3]) for r in usable.values()]
    return Partition(name, len(usable), max(gpus, default=0), max(cpus, default=0))


def _gres_gpus(gres: str) -> int:
    """GPUs in sinfo's GRES column, e.g. 'gpu:4', 'gpu:a100:8(S:0-1)', '(null)'."""
    total = 0
    for item in gres.split(","):
        match = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if match:
            total += int(match.group(1))
    return total


@dataclass
class Request:
    """One job's hardware: what plan() decided, shaped for SLURM."""

    gpus: int
    nodes: int
    batch_gpu: int
    runtime_min: int
    mem_mb: int
    cpus_per_task: int
    cpu_tasks: int = 1  # CPU-only cells: DDP processes (gloo), one srun task each

    @property
    def tasks_per_node(self) -> int:
        """One task per GPU across nodes; one task (torchrun inside) on one node; cpu_tasks without GPUs."""
        if not self.gpus:
            return self.cpu_tasks
        return self.gpus // self.nodes if self.nodes > 1 else 1

    @property
    def world_size(self) -> int:
        return self.gpus or self.cpu_tasks

    def key(self) -> tuple:
        return (self.gpus, self.nodes, self.runtime_min, self.mem_mb, self.cpus_per_task, self.cpu_tasks)


def plan_cell(
    cell: Cell, part: Partition, gpus: int | None = None, cpus_per_gpu: int = 8, cpus: int = 2, cpu_tasks: int = 1
) -> Request:
    """plan() for a cell on a partition, or the user's GPU count; refused here when the partition cannot give it."""
    resolution, params = teacher_shape(cell.teacher)
    dataset = str(cell.labels.get("dataset") or Path(cell.dataset).stem)
    p = plan(
        dataset, resolution, params, cell.batch, part.gpus_per_node, total_images=cell.total_images,
        precision=cell.precision, el_embedders=cell.el.embedders,
    )  # fmt: skip
    # a cell longer than one job's time (p["segments"] > 1) continues through requeues on time-out (max_requeues)
    if gpus is not None:  # the user's count; per-GPU batch re-derived so the batch still divides
        if gpus < 0 or (gpus and cell.batch % gpus):
            raise ValueError(f"cell {cell.cell_id}: --gpus {gpus} must be >= 0 and divide the batch {cell.batch}")
        nodes = max(1, math.ceil(gpus / max(part.gpus_per_node, 1)))
        share = cell.batch // max(gpus, 1)
        batch_gpu = max(d for d in range(1, min(share, max(p["batch_gpu"], 1)) + 1) if share % d == 0)
        p.update(gpus=gpus, nodes=nodes, batch_gpu=batch_gpu if gpus else cell.batch)
    per_node = p["gpus"] // p["nodes"]
    if p["gpus"] and p["gpus"] % p["nodes"]:
        raise ValueError(f"cell {cell.cell_id}: {p['gpus']} GPUs do not split evenly over {p['nodes']} nodes")
    if per_node > part.gpus_per_node or p["nodes"] > part.nodes:
        raise ValueError(
            f"cell {cell.cell_id} needs {p['gpus']} GPU(s) ({p['nodes']} node(s) x {per_node}), but partition "
            f"'{part.name}' has {part.nodes} usable node(s) with {part.gpus_per_node} GPU(s) each"
        )
    req = Request(p["gpus"], p["nodes"], p["batch_gpu"], p["runtime_min"], p["mem_mb"], cpus)
    if req.gpus:
        req.cpus_per_task = cpus_per_gpu * (per_node if req.nodes == 1 else 1)
    else:
        if not isinstance(cpu_tasks, int) or cpu_tasks < 1 or cpu_tasks * cpus > part.cpus_per_node:
            raise ValueError(
                f"cell {cell.cell_id}: 'cpu_tasks' = {cpu_tasks} x {cpus} CPU(s) does not fit a node of partition "
                f"'{part.name}' ({part.cpus_per_node} CPUs)"
            )
        req.cpu_tasks = cpu_tasks
        req.batch_gpu = cell.batch // cpu_tasks if cell.batch % cpu_tasks == 0 else cell.batch
    req.cpus_per_task = max(1, min(req.cpus_per_task, part.cpus_per_node // req.tasks_per_node or 1))
    cell.batch_gpu = cell.batch_gpu or req.batch_gpu
    cell.validate(f"cell {cell.cell_id}", world_size=req.world_size, check_files=True)
    return req


# --- inside the job -----------------------------------------------------------------------------------------
class TrainCell(submitit.helpers.Checkpointable):
    """The job's callable: runs the training process, stops it cleanly on preemption or time-out and
    requeues the job (bounded), so the next start resumes from the saved state."""

    def __init__(self, cell_path: str, nproc: int = 1, max_requeues: int = 3):
        self.cell_path = str(cell_path)
        self.nproc = nproc  # > 1: torchrun --standalone on this node
        self.max_requeues = max_requeues
        self._proc: subprocess.Popen | None = None
        self._stopping = False

    def __getstate__(self):  # what is pickled for a (re)submission: the arguments only
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None, _stopping=False)

    def train_command(self) -> list[str]:
        train = ["-m", "eldistill.cli", "train", "--config", self.cell_path]
        if self.nproc > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.nproc}",
                *train,
            ]
        return [sys.executable, *train]

    def __call__(self) -> dict[str, Any]:
        cell = Cell.load(self.cell_path)
        log = Path(cell.run_dir) / "requeues.jsonl"
        env = submitit.JobEnvironment()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        leader = env.global_rank == 0
        if leader:
            append_jsonl({"event": "start", "job_id": env.job_id, "restarts": restarts, "time": time.time()}, log)
        # our handlers replace submitit's: stop the training process, let it save, then decide here
        for sig in (signal.SIGTERM, getattr(signal, "SIG" + env.USR_SIG)):
            signal.signal(sig, self._on_stop_signal)
        # SLURM delivers the pre-time-out signal to every process of the step: the training process ignores
        # it (SIG_IGN survives exec) and hears from us instead, as the signal its loop handles
        usr = getattr(signal, "SIG" + env.USR_SIG)
        if self._stopping:  # stopped before the training even began: nothing new to save
            code = EXIT_REQUEUE
        else:
            self._proc = subprocess.Popen(self.train_command(), preexec_fn=lambda: signal.signal(usr, signal.SIG_IGN))
            if self._stopping:  # the signal came while the process was being created
                self._signal_training()
            code = self._proc.wait()
            if self.nproc > 1 and self._stopping and code != 0:
                code = EXIT_REQUEUE  # torchrun reports its workers' "saved, requeue me" (3) as a failure (1)
        if code == 0:
            if leader:
                append_jsonl(
                    {"event": "finished", "job_id": env.job_id, "restarts": restarts, "time": time.time()}, log
                )
            metrics = read_jsonl(Path(cell.run_dir) / "metrics.jsonl") if leader else []
            return {"cell_id": cell.cell_id, "run_dir": cell.run_dir, "metrics": metrics[-1] if metrics else {}}
        if code != EXIT_REQUEUE:
            raise RuntimeError(f"cell {cell.cell_id}: training exited with code {code}; see the job's stderr log")
        if not leader:  # rank 0 decides about the requeue; SLURM ends this task with the job
            sys.exit(EXIT_REQUEUE)
        if restarts >= self.max_requeues:
            append_jsonl({"event": "requeue_refused", "job_id": env.job_id, "restarts": restarts}, log)
            raise RuntimeError(
                f"cell {cell.cell_id}: stopped after {restarts} requeue(s), the limit (--max-requeues "
                f"{self.max_requeues}); its state is saved in {cell.state_dir}: launch it again to resume"
            )
        append_jsonl({"event": "requeue", "job_id": env.job_id, "restarts": restarts + 1, "time": time.time()}, log)
        requeue = subprocess.run(["scontrol", "requeue", str(env.job_id)], capture_output=True, text=True, timeout=60)
        if requeue.returncode and slurm_state(str(env.job_id)) not in REQUEUE_STATES:
            raise RuntimeError(f"cell {cell.cell_id}: scontrol requeue failed: {requeue.stderr.strip()}")
        # requeued (by us, or by SLURM on its own): leave without a result file, so the client waits for the
        # next start (submitit leaves the same way after its own requeue)
        sys.exit(EXIT_REQUEUE)

    def _on_stop_signal(self, signum, frame) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._proc is not None:
            self._signal_training()

    def _signal_training(self) -> None:
        for pid in self._training_pids():
            try:
                os.kill(pid, STOP_SIGNAL)
            except ProcessLookupError:
                pass

    def _training_pids(self) -> list[int]:
        """The training process, or torchrun's workers (torchrun itself would die of SIGUSR1)."""
        if self.nproc <= 1:
            return [self._proc.pid]
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self._proc.pid:  # field 4 of /proc/PID/stat: the parent pid
                children.append(int(stat.parent.name))
        return children

    def checkpoint(self, *args, **kwargs):
        """submitit's hook, used only if its own signal handler runs (before ours is installed): resubmit
        with the same arguments, within the bound."""
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeues:
            return None
        return submitit.helpers.DelayedSubmission(TrainCell(self.cell_path, self.nproc, self.max_requeues))


# --- submission ---------------------------------------------------------------------------------------------
def launch(
    cells: list[str | Path | Cell],
    *,
    array: bool = False,
    partition: str | None = None,
    max_requeues: int = 3,
    folder: str | Path | None = None,
    results: str | Path | None = None,
    gpus: int | None = None,
    timeout_min: int | None = None,
    cpus_per_task: int = 2,
    cpu_tasks: int = 1,
    signal_delay_s: int = 90,
    dry_run: bool = False,
) -> list:
    """Submit cells to SLURM; returns one submitit job per cell (in order), or, with dry_run, the
    (cell, Request) pairs that would be submitted. Every check happens before anything is submitted."""
    if not cells:
        raise ValueError("launch: no cell given")
    if not isinstance(max_requeues, int) or max_requeues < 0:
        raise ValueError(f"launch: 'max_requeues' must be a non-negative integer, got {max_requeues!r}")
    root_results = Path(results).parent if results else Path("results")
    loaded = [place_cell(c if isinstance(c, Cell) else resolve_cell(c, root_results), results) for c in cells]
    part = read_partition(partition)
    planned = []
    for cell in loaded:
        req = plan_cell(cell, part, gpus=gpus, cpus=cpus_per_task, cpu_tasks=cpu_tasks)
        if timeout_min is not None:
            req.runtime_min = timeout_min
        planned.append((cell, req))
    if dry_run:
        return planned

    root = Path(folder) if folder else Path(planned[0][0].state_dir).parent.parent / "logs" / "submitit"
    jobs: list = [None] * len(planned)
    groups: dict[tuple, list[int]] = {}
    for i, (_cell, req) in enumerate(planned):  # one array per distinct hardware request
        groups.setdefault(req.key() if array else (i,), []).append(i)
    for members in groups.values():
        req = planned[members[0]][1]
        executor = submitit.SlurmExecutor(folder=root / "%j", max_num_timeout=max_requeues)
        params = dict(
            partition=part.name,
            time=req.runtime_min,
            nodes=req.nodes,
            ntasks_per_node=req.tasks_per_node,
            cpus_per_task=req.cpus_per_task,
            mem=f"{req.mem_mb}MB",
            signal_delay_s=signal_delay_s,
            additional_parameters={"requeue": True},  # requeueable even where the site's JobRequeue is 0
            job_name=f"eld-{planned[members[0]][0].cell_id}" if len(members) == 1 else "eld-array",
        )
        if req.gpus:
            params["gpus_per_node"] = req.gpus // req.nodes
        executor.update_parameters(**params)
        fns = []
        for i in members:
            cell = planned[i][0]
            cell_path = Path(cell.state_dir) / LAUNCH_CELL_NAME
            cell.save(cell_path)
            nproc = req.gpus if req.nodes == 1 and req.gpus > 1 else 1
            fns.append(TrainCell(str(cell_path.resolve()), nproc, max_requeues))
        if len(fns) == 1:
            submitted = [executor.submit(fns[0])]
        else:
            with executor.batch():
                submitted = [executor.submit(fn) for fn in fns]
        for i, job in zip(members, submitted):
            jobs[i] = job
    return jobs


def slurm_state(job_id: str) -> str:
    """The job's state from squeue (finished jobs stay listed for MinJobAge), then from sacct (clusters with
    accounting), else 'UNKNOWN'."""
    for cmd in (
        ["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"],
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"],
    ):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]  # sacct writes e.g. "CANCELLED by 0": the state is the first word
    return "UNKNOWN"


REQUEUE_STATES = {"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "PENDING", "COMPLETING", "PREEMPTED"}
FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def wait(jobs: list, cells: list[Cell], poll_s: float = 2.0, timeout_s: float | None = None) -> list[dict]:
    """Show each job's progress (images seen, from its metrics.jsonl) until all finish; return their results
    ({"cell_id", "error"} for a failed job)."""
    results: list[dict | None] = [None] * len(jobs)
    bars = [tqdm(total=c.total_images, desc=c.cell_id, unit="img", position=i) for i, c in enumerate(cells)]
    start = time.time()
    while any(r is None for r in results):
        for i, (job, cell) in enumerate(zip(jobs, cells)):
            if results[i] is not None:
                continue
            metrics = Path(cell.run_dir) / "metrics.jsonl"
            records = read_jsonl(metrics) if metrics.exists() else []
            if records:
                bars[i].n = min(int(records[-1].get("images_seen", 0)), cell.total_images)
                bars[i].refresh()
            tasks = [job.task(k) for k in range(job.num_tasks)]  # a multi-node job: one result file per task
            if all(t.paths.result_pickle.exists() for t in tasks):
                try:
                    results[i] = job.results()[0]
                except Exception as e:  # the job's own error, with its traceback
                    results[i] = {"cell_id": cell.cell_id, "error": str(e)}
            elif slurm_state(job.job_id) in FAILED_STATES:
                results[i] = {"cell_id": cell.cell_id, "error": f"job {job.job_id} {slurm_state(job.job_id)}"}
        if timeout_s is not None and time.time() - start > timeout_s:
            raise TimeoutError(f"jobs still running after {timeout_s:.0f} s")
        if any(r is None for r in results):
            time.sleep(poll_s)
    for bar in bars:
        bar.close()
    return results  # type: ignore[return-value]


# --- CLI ----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cell", action="append", required=True, help="cell JSON file or cell id (repeatable)")
    parser.add_argument("--array", action="store_true", help="submit the cells as one SLURM job array")
    parser.add_argument("--wait", action="store_true", help="show progress and the final metrics")
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    parser.add_argument("--max-requeues", type=int, default=3, help="requeues after preemption/time-out (3)")
    parser.add_argument("--folder", help="submitit log folder (default: results/<scale>/logs/submitit)")
    parser.add_argument("--results", help="results/<scale>: where cells without run_dir/state_dir write")
    parser.add_argument("--gpus", type=int, help="override the planned GPU count (nodes follow)")
    parser.add_argument("--timeout-min", type=int, help="override the planned wall-clock limit per job")
    parser.add_argument("--cpus-per-task", type=int, default=2, help="CPUs of a CPU-only cell (GPU cells: 8 per GPU)")
    parser.add_argument("--cpu-tasks", type=int, default=1, help="CPU-only cells: DDP processes (srun tasks)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")


def run(args: argparse.Namespace) -> int:
    try:
        out = launch(
            args.cell,
            array=args.array,
            partition=args.partition,
            max_requeues=args.max_requeues,
            folder=args.folder,
            results=args.results,
            gpus=args.gpus,
            timeout_min=args.timeout_min,
            cpus_per_task=args.cpus_per_task,
            cpu_tasks=args.cpu_tasks,
            dry_run=args.dry_run,
        )
    except ValueError as e:
        print(f"eldistill launch: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cell, req in out:
            print(
                f"{cell.cell_id}: {req.nodes} node(s) x {req.gpus // req.nodes if req.gpus else 0} GPU(s), "
                f"batch_gpu {cell.batch_gpu}, {req.runtime_min} min, {req.mem_mb} MB, -> {cell.run_dir}"
            )
        return 0
    cells = [Cell.load(Path(j.submission().function.cell_path)) for j in out]
    for job, cell in zip(out, cells):
        print(f"{cell.cell_id}: job {job.job_id}, log {job.paths.stdout}, results in {cell.run_dir}")
    if not args.wait:
        return 0
    results = wait(out, cells)
    failed = 0
    for r in results:
        if "error" in r:
            failed += 1
            print(f"{r['cell_id']}: FAILED\n{r['error']}", file=sys.stderr)
        else:
            print(f"{r['cell_id']}: finished, final metrics {r.get('metrics')}")
    return 1 if failed else 0

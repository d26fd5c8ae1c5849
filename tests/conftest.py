"""Shared fixtures. Tests run on the CPU with one thread per process: CI has two cores."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from eldistill.checkpoints import save_network
from eldistill.nets import build_network
from eldistill.nets.latent import edm2_scale_bias
from eldistill.rehearsal.standins import tiny_autoencoderkl

REPO = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO / "slurm" / "local"

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM (slurmctld + slurmd + munge) on localhost, started for the test session
    and stopped afterwards by the process ids in its pid files. Skips when the machine cannot run it
    (not root, or no apt-get to install the Debian packages)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("a local SLURM needs root and Debian's apt-get")
    already_up = subprocess.run(["bash", "-c", "sinfo -h >/dev/null 2>&1"]).returncode == 0
    env = dict(os.environ, FAKE_GPUS=os.environ.get("FAKE_GPUS", "1"))
    subprocess.run(["bash", str(SLURM_SCRIPTS / "start_slurm.sh")], check=True, env=env, timeout=600)
    yield {"partition": "debug", "gpus_per_node": int(env["FAKE_GPUS"])}
    if not already_up:  # leave a cluster the user started alone
        subprocess.run(["bash", str(SLURM_SCRIPTS / "stop_slurm.sh"), "--purge"], timeout=120)


# --- ImageNet-512 stand-ins: files in EDM2's formats, made offline (data, metrics and loop tests) ----------


def write_latent_zip(path: Path, mean: np.ndarray, std: np.ndarray, labels=None) -> Path:
    """mean, std: (N, C, h, w). Records `NNNNN/img-mean-std-NNNNNNNN.npy` = float32 concat(mean, std) (2C, h, w),
    np.save'd one by one, plus dataset.json {"labels": [[name, label], ...] or null}; as EDM2 writes them."""
    entries = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(len(mean)):
            idx = f"{i:08d}"
            name = f"{idx[:5]}/img-mean-std-{idx}.npy"
            buffer = io.BytesIO()
            np.save(buffer, np.concatenate([mean[i], std[i]]).astype(np.float32))
            z.writestr(name, buffer.getvalue())
            entries.append([name, None if labels is None else int(labels[i])])
        meta = {"labels": None if labels is None else entries}
        z.writestr("dataset.json", json.dumps(meta))
    return path


def raw_stats_records(n: int, res: int, seed: int = 0):
    """Records whose posterior is N(m_c, s_c^2) per channel c, constant over samples and pixels."""
    m = np.array([5.0, 3.0, 0.5, -2.0], np.float32).reshape(1, 4, 1, 1)
    s = np.array([1.0, 2.0, 0.5, 3.0], np.float32).reshape(1, 4, 1, 1)
    mean = np.broadcast_to(m, (n, 4, res, res)).copy()
    std = np.broadcast_to(s, (n, 4, res, res)).copy()
    return mean, std, m.reshape(4), s.reshape(4)


def random_records(n: int, res: int, seed: int = 0):
    """Records that look like real SD latents: mean around EDM2's raw mean, a small positive std."""
    rng = np.random.default_rng(seed)
    scale, bias = (t.numpy() for t in edm2_scale_bias())
    raw_mean = -bias / scale
    mean = raw_mean.reshape(1, 4, 1, 1) + rng.normal(size=(n, 4, res, res)).astype(np.float32) * (0.5 / scale).reshape(
        1, 4, 1, 1
    )
    std = np.full((n, 4, res, res), 0.1, np.float32)
    return mean.astype(np.float32), std


def tiny_edm2(label_dim: int = 3, res: int = 8, seed: int = 0) -> torch.nn.Module:
    """An EDM2 preconditioned U-Net over 4-channel latents with random weights (a stand-in EDM2 teacher)."""
    torch.manual_seed(seed)
    config = {
        "class_name": "EDM2Precond",
        "img_resolution": res,
        "img_channels": 4,
        "label_dim": label_dim,
        "use_fp16": False,
        "model_channels": 8,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "attn_resolutions": [4],
        "logvar_channels": 8,
    }
    net = build_network(config)
    with torch.no_grad():
        net.unet.out_gain.fill_(1.0)  # EDM2 starts the output gain at 0, which makes every loss trivial
    return net


def save_tiny_edm2_teacher(path: Path, label_dim: int = 3, res: int = 8) -> Path:
    scale, bias = edm2_scale_bias()
    encoder = {"class_name": "StabilityVAEEncoder", "scale": scale.tolist(), "bias": bias.tolist()}
    return save_network(path, tiny_edm2(label_dim, res), meta={"kind": "teacher", "encoder": encoder})


def tiny_vae(folder: Path, seed: int = 0) -> Path:
    """A diffusers AutoencoderKL with a tiny random config (8x down/up-sampling, 4 latent channels),
    saved as a local folder the way sd-vae-ft-mse is used (config.json + weights)."""
    torch.manual_seed(seed)
    tiny_autoencoderkl().save_pretrained(folder)
    return folder


@pytest.fixture
def latent():
    """The writers above, for tests in this folder."""
    return type(
        "LatentFiles",
        (),
        {
            f.__name__: staticmethod(f)
            for f in (write_latent_zip, raw_stats_records, random_records, tiny_edm2, save_tiny_edm2_teacher, tiny_vae)
        },
    )

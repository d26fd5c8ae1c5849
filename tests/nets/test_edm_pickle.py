"""Published-format pickles load into our networks without running their code; hostile pickles are refused.

The pickles are written by the `write_edm_pickle` fixture (conftest.py): EDM's persistence records, whose
embedded module source and reconstruct hook both raise if anything ever executes them."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
import torch

from eldistill.checkpoints import Inert, UnsafePickleError, load_edm_pickle, load_network, read_edm_pickle, run
from eldistill.cli import main
from eldistill.nets import build_network, preset

SMALL_SONG = dict(img_channels=3, channel_mult=[1, 2], attn_resolutions=[8], augment_dim=9, dropout=0.1)
SMALL_ADM = {
    "class_name": "EDMPrecond",
    "model_type": "DhariwalUNet",
    "img_resolution": 16,
    "img_channels": 3,
    "model_channels": 64,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attn_resolutions": [8],
}
SMALL_EDM2 = {
    "class_name": "EDM2Precond",
    "img_resolution": 16,
    "img_channels": 4,
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_blocks": 1,
    "attn_resolutions": [8],
    "channels_per_head": 32,
    "logvar_channels": 16,
}


def outputs(net, config, labels):
    torch.manual_seed(5)
    x = torch.randn(3, config["img_channels"], config["img_resolution"], config["img_resolution"])
    with torch.no_grad():
        return net.eval()(x, torch.tensor([0.05, 1.0, 20.0]), labels)


@pytest.mark.parametrize(
    "config",
    [
        preset("mini", **SMALL_SONG),
        preset("mini", **SMALL_SONG, label_dim=10),
        preset("mini", class_name="VPPrecond", embedding_type="fourier", encoder_type="residual", channel_mult_noise=2),
        {**SMALL_ADM, "label_dim": 0},
        {**SMALL_ADM, "label_dim": 10},
        {**SMALL_EDM2, "label_dim": 0},
        {**SMALL_EDM2, "label_dim": 10},
    ],
    ids=["songunet-uncond", "songunet-cond", "ncsnpp-vp", "adm-uncond", "adm-cond", "edm2-uncond", "edm2-cond"],
)
def test_published_format_loads_with_strict_keys(tmp_path, config, randomize, write_edm_pickle):
    edm2 = config["class_name"] == "EDM2Precond"
    net = randomize(build_network(config), seed=11)
    if edm2:  # EDM2 snapshots store the EMA weights in float16
        net = net.half()
    path = write_edm_pickle(tmp_path / "snapshot.pkl", net, edm2=edm2)
    loaded = load_edm_pickle(path)
    assert type(loaded) is type(net) and loaded.config == net.config
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # fp16 upcast
    labels = torch.eye(10)[[0, 4, 9]] if config.get("label_dim") else None
    torch.testing.assert_close(outputs(loaded, config, labels), outputs(net.float(), config, labels), rtol=0, atol=0)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_edm_pickles_of_every_protocol_load(tmp_path, write_edm_pickle, protocol, randomize):
    """Protocol 2 spells builtins as __builtin__ and bytes as _codecs.encode: read as pickle itself reads them."""
    net = randomize(build_network(preset("mini")), seed=3)
    path = write_edm_pickle(tmp_path / "snap.pkl", net, protocol=protocol)
    if protocol == 2:
        assert b"_codecs" in path.read_bytes() and b"__builtin__" in path.read_bytes()
    loaded = load_edm_pickle(path)
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_naive_loader_would_run_the_embedded_source(tmp_path, write_edm_pickle, monkeypatch):
    """The test pickles are faithful: plain pickle.load with an upstream-like hook executes module_src."""
    import types

    path = write_edm_pickle(tmp_path / "snap.pkl", build_network(preset("mini")))
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = lambda meta: exec(meta["module_src"], {})  # what upstream does
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    with pytest.raises(RuntimeError, match="embedded module source .* was executed"):
        pickle.loads(path.read_bytes())
    assert isinstance(load_edm_pickle(path), torch.nn.Module)  # ours, with the same modules importable


def test_aliases_and_edm2_encoder_info(tmp_path, write_edm_pickle):
    net = build_network({**SMALL_EDM2, "label_dim": 0})
    path = write_edm_pickle(tmp_path / "sida.pkl", net, edm2=True, class_name="EDM_2_Precond_Generator")
    out = tmp_path / "teacher.pt"
    assert run(type("Args", (), {"input": str(path), "output": str(out), "key": "ema"})()) == 0
    raw = torch.load(out, weights_only=True)  # our format needs no code either
    converted, meta = load_network(out)
    assert meta["kind"] == "teacher" and meta["source_class"] == "EDM_2_Precond_Generator"
    assert len(meta["source_sha256"]) == 64 and raw["config"]["class_name"] == "EDM2Precond"
    assert meta["encoder"]["vae_name"] == "stabilityai/sd-vae-ft-mse"
    assert meta["encoder"]["scale"] == pytest.approx([0.12, 0.11, 0.13, 0.15])


def test_default_backbone_follows_the_source_class(tmp_path, write_edm_pickle):
    song = build_network(preset("mini"))
    path = write_edm_pickle(
        tmp_path / "sida.pkl", song, class_name="EDMPrecond_EncoderDecoder", drop_kwargs=("model_type",)
    )
    assert load_edm_pickle(path).config["model_type"] == "SongUNet"  # SiDA's default backbone
    adm = build_network({**SMALL_ADM, "label_dim": 0})
    path = write_edm_pickle(tmp_path / "edm.pkl", adm, drop_kwargs=("model_type",))
    assert load_edm_pickle(path).config["model_type"] == "DhariwalUNet"  # EDM's EDMPrecond default


def test_cli_convert_teacher(tmp_path, write_edm_pickle, capsys):
    path = write_edm_pickle(tmp_path / "edm.pkl", build_network(preset("mini")))
    out = tmp_path / "t.pt"
    assert main(["convert-teacher", str(path), str(out)]) == 0
    assert "edm.pkl" in capsys.readouterr().out
    assert load_network(out)[1]["source"] == "edm.pkl"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(hostile_payloads(tmp_path / "pwned")["os.system"])
    assert main(["convert-teacher", str(evil), str(tmp_path / "evil.pt")]) == 1
    assert "os.system" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "evil.pt").exists()


# --- hostile pickles -------------------------------------------------------------------------------------


def hostile_payloads(marker):
    """Protocol-0 pickles that would create `marker` (a file) if a loader resolved their global."""
    cmd = f"touch {marker}"
    return {
        "os.system": f"cos\nsystem\n(V{cmd}\ntR.".encode(),
        "posix.system": f"cposix\nsystem\n(V{cmd}\ntR.".encode(),
        "builtins.eval": f"cbuiltins\neval\n(V__import__('os').system('{cmd}')\ntR.".encode(),
        "builtins.exec": f"cbuiltins\nexec\n(V__import__('os').system('{cmd}')\ntR.".encode(),
        "subprocess.check_call": f"csubprocess\ncheck_call\n((Vtouch\nV{marker}\nltR.".encode(),
        "subprocess.Popen": f"csubprocess\nPopen\n((Vtouch\nV{marker}\nltR.".encode(),
    }


@pytest.mark.parametrize("name", list(hostile_payloads("x")))
def test_hostile_globals_refused_without_side_effect(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(hostile_payloads(marker)[name])
    with pytest.raises(UnsafePickleError, match=name.replace(".", r"\.")):
        load_edm_pickle(path)
    assert not marker.exists()


def test_hostile_global_nested_in_a_valid_snapshot(tmp_path, write_edm_pickle):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = write_edm_pickle(tmp_path / "snap.pkl", build_network(preset("mini")), extra={"augment_pipe": Evil()})
    with pytest.raises(UnsafePickleError, match="system"):
        load_edm_pickle(path)
    assert not marker.exists()


def test_bound_method_hooks_become_inert(tmp_path, write_edm_pickle):
    """SiDA-EDM2 pickles carry hooks pickled as builtins.getattr(obj, name): read, never looked up."""
    net = build_network(preset("mini"))
    net.model.enc["16x16_conv"].register_forward_pre_hook({}.copy)  # a bound method: pickles via getattr
    path = write_edm_pickle(tmp_path / "hooked.pkl", net)
    loaded = load_edm_pickle(path)
    assert not loaded.model.enc["16x16_conv"]._forward_pre_hooks
    path.write_bytes(b"cbuiltins\ngetattr\n((tV__class__\ntR.")  # getattr((), '__class__')
    assert isinstance(read_edm_pickle(path), Inert)


def test_storage_bytes_must_be_weights_only(tmp_path):
    """A hostile payload hidden in the bytes given to torch.storage._load_from_bytes is refused too."""
    marker = tmp_path / "pwned"
    inner = hostile_payloads(marker)["os.system"]
    path = tmp_path / "storage.pkl"
    assert len(inner) < 256
    path.write_bytes(b"ctorch.storage\n_load_from_bytes\n(C" + bytes([len(inner)]) + inner + b"tR.")  # SHORT_BINBYTES
    with pytest.raises(UnsafePickleError, match="storage.pkl: embedded torch storage: refusing .*os.system"):
        load_edm_pickle(path)
    assert not marker.exists()


def test_numpy_1x_spelling_is_read(tmp_path):
    """2022-era pickles name numpy.core.multiarray (numpy 1.x); numpy 2 writes numpy._core. Both load."""
    value = {"skip_scale": np.sqrt(np.float64(0.5)), "scale": np.array([0.12, -0.5], dtype=np.float32)}
    data = pickle.dumps(value, protocol=3)  # protocol 3: newline-terminated GLOBAL opcodes, easy to respell
    assert b"numpy._core" in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(b"numpy._core", b"numpy.core"))
    loaded = read_edm_pickle(path)
    assert loaded["skip_scale"] == np.sqrt(0.5) and loaded["scale"].tolist() == value["scale"].tolist()
    bad = tmp_path / "objects.pkl"
    bad.write_bytes(pickle.dumps(np.array([None, 1], dtype=object), protocol=3))
    with pytest.raises(UnsafePickleError, match="objects"):
        read_edm_pickle(bad)


def test_unknown_torch_global_and_persistent_id_refused(tmp_path):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps(torch.nn.functional.relu))
    with pytest.raises(UnsafePickleError, match="relu"):
        read_edm_pickle(path)
    path.write_bytes(b"Pfoo\n.")  # protocol-0 persistent id
    with pytest.raises(UnsafePickleError, match="persistent"):
        read_edm_pickle(path)


def test_truncated_and_foreign_pickles_name_the_file(tmp_path, write_edm_pickle):
    path = write_edm_pickle(tmp_path / "cut.pkl", build_network(preset("mini")))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.pkl"):
        load_edm_pickle(path)
    other = tmp_path / "plain.pkl"
    other.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ValueError, match="plain.pkl.*'ema'"):
        load_edm_pickle(other)

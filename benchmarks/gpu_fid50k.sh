#!/usr/bin/env bash
# Paper-protocol FID (fid50k-tf-inception: TF-Inception features, exactly 50,000 one-step samples) on one GPU,
# timed end to end through `eldistill evaluate`. Run from the repository root with the venv active:
#
#   bash benchmarks/gpu_fid50k.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else results/bench/gpu_fid50k
#
# Inputs (environment variables; every default is a stand-in, and the script says so in its output):
#   GENERATOR  our generator .pt (meta kind=generator)   default: untrained CIFAR-shape DDPM++ (55.7 M params)
#   REFERENCE  EDM's cifar10-32x32.npz (or EDM2 .pkl)    default: synthetic 2048-d N(0, I) statistics
#   DETECTOR   inception-2015-12-05.pt                   default: $ELDISTILL_INCEPTION or the eldistill cache;
#              if absent, a torchvision InceptionV3 with random weights, scripted with the detector's interface
#              (same cost, so the timing holds; the FID value is then meaningless)
#   DEVICE (cuda)  BATCH (500)  AGGREGATION (final | min-of-3-seeds)  PREPARE_ONLY (1: build inputs and stop)
set -euo pipefail
OUT_DIR="${1:-${OUT:-results/bench/gpu_fid50k}}"
DEVICE="${DEVICE:-cuda}"
BATCH="${BATCH:-500}"
AGGREGATION="${AGGREGATION:-final}"
mkdir -p "$OUT_DIR/run"
export OUT_DIR GENERATOR="${GENERATOR:-}" REFERENCE="${REFERENCE:-}" DETECTOR="${DETECTOR:-}"

# written to a file: torch.jit.script needs the stand-in's source on disk
cat > "$OUT_DIR/prepare.py" <<'PY'
"""Prepare the run folder, the reference and the detector; write OUT_DIR/inputs.json."""
import json, os, shutil
from pathlib import Path

import numpy as np
import torch

out = Path(os.environ["OUT_DIR"])
inputs = {}
if os.environ["GENERATOR"]:
    shutil.copy(os.environ["GENERATOR"], out / "run" / "generator.pt")
    inputs["generator"] = os.environ["GENERATOR"]
else:
    from eldistill.checkpoints import save_network
    from eldistill.nets import build_network, preset

    torch.manual_seed(0)
    net = build_network(preset("cifar10"))
    meta = {"kind": "generator", "sigma_init": 2.5, "images_seen": 0, "iterations": 0, "cell_id": "gpu-fid50k-standin"}
    save_network(out / "run" / "generator.pt", net, meta)
    inputs["generator"] = "STAND-IN: untrained cifar10 preset (%.1f M params)" % (sum(p.numel() for p in net.parameters()) / 1e6)

if os.environ["REFERENCE"]:
    inputs["reference"] = os.environ["REFERENCE"]
else:
    np.savez(out / "synthetic-ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # EDM's layout: mu, sigma
    inputs["reference"] = "STAND-IN: synthetic N(0, I) statistics"
    os.environ["REFERENCE"] = str(out / "synthetic-ref.npz")
inputs["reference_path"] = os.environ["REFERENCE"]

from eldistill.metrics.inception import DETECTOR_FILE, find_detector

try:
    detector = find_detector(os.environ["DETECTOR"] or None)
    inputs["detector"] = str(detector)
except ValueError as missing:
    import torch.nn.functional as F
    import torchvision

    print(f"no real detector ({missing}); building a random-weight stand-in of the same architecture")

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
            self.layers.fc = torch.nn.Identity()

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            x = F.interpolate(x.to(torch.float32), size=(299, 299), mode="bilinear", align_corners=False)
            features, _ = self.layers._forward((x - 128) / 128)
            return features

    detector = out / "standin" / DETECTOR_FILE
    detector.parent.mkdir(exist_ok=True)
    torch.jit.script(StandIn().eval()).save(str(detector))
    inputs["detector"] = f"STAND-IN (random weights, timing only): {detector}"
inputs["detector_path"] = str(detector)
(out / "inputs.json").write_text(json.dumps(inputs, indent=2) + "\n")
print(json.dumps(inputs, indent=2))
PY
python "$OUT_DIR/prepare.py"

[ "${PREPARE_ONLY:-0}" = "1" ] && exit 0
REF_PATH=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['reference_path'])" "$OUT_DIR/inputs.json")
DET_PATH=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['detector_path'])" "$OUT_DIR/inputs.json")
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"

START=$(date +%s.%N)
eldistill evaluate --run "$OUT_DIR/run" --protocol fid50k-tf-inception --reference "$REF_PATH" \
    --feature-net "$DET_PATH" --num-samples 50000 --aggregation "$AGGREGATION" --device "$DEVICE" --batch "$BATCH" \
    2> >(tr '\r' '\n' | grep -v '^$' | tail -n 3 >&2)
END=$(date +%s.%N)
python - "$START" "$END" "$OUT_DIR" "$AGGREGATION" <<'PY'
import json, sys
start, end, out, aggregation = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
images = 50_000 * (3 if aggregation == "min-of-3-seeds" else 1)
result = {"seconds": round(end - start, 1), "images": images, "img_per_s": round(images / (end - start), 1),
          "inputs": json.load(open(f"{out}/inputs.json")),
          "final_record": [r for r in map(json.loads, open(f"{out}/run/fid.jsonl")) if r["kind"] == "final"][-1]}
print(json.dumps(result, indent=2))
open(f"{out}/result.json", "w").write(json.dumps(result, indent=2) + "\n")
PY

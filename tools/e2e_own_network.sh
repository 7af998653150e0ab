#!/bin/bash
# Route 1 of docs/own_network.md end to end on Facades (labels -> photo, BtoA), after
# tools/train_reference_unet.py wrote $S/latest_net_G.pth. Figures: docs/results/own_network_facades.md
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
PY=${PY:-/work/main/.venv/bin/python}
export S=${STORES:-/work/stores/ownnet}   # never inside the repository
t() { local s=$(date +%s.%N); "$@"; echo "TIME $(echo "$(date +%s.%N) - $s" | bc) s: ${*:3:2}"; }
t $PY -m compnn_index.cli import-pix2pix $S/latest_net_G.pth --size 256 --out $S/facades_ref.pt
t $PY -m compnn_index.cli build --model $S/facades_ref.pt --data ../shared/data/facades --direction BtoA \
    --limit 100 --layers decoder2 --threads 2 --overwrite --out $S/facades_ref_store
$PY - <<'PY'
import os
import numpy as np
from PIL import Image
S = os.environ["S"]
ab = np.asarray(Image.open("../shared/data/facades/test/1.jpg").convert("RGB"))
Image.fromarray(ab[:, 256:]).save(f"{S}/test1_labels.png")
Image.fromarray(ab[:, 256:]).resize((300, 300)).save(f"{S}/test1_labels_300.png")
PY
t $PY -m compnn_index.cli query $S/facades_ref_store $S/test1_labels.png --top-k 16 --threads 2 --out $S/q_exact
t $PY -m compnn_index.cli query $S/facades_ref_store $S/test1_labels_300.png --resize --search patchmatch --top-k 16 --threads 2 --out $S/q_pm_resized
t $PY -m compnn_index.cli evaluate $S/facades_ref_store --data ../shared/data/facades --split test --limit 5 --sample every \
    --top-k 1,16 --search patchmatch --threads 2 --out $S/eval

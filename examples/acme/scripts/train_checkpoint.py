"""Train ACME's digit reader and write the checkpoint the recipe starts from.

    cd examples/acme && PYTHONPATH=src python scripts/train_checkpoint.py

(from the repository's virtual environment). Writes ``checkpoints/digitnet.safetensors`` (a state dict,
no pickle) and prints its sha256, which ``checkpoints/digitnet.sha256`` records. The team's own loop
(``acme.train.fit``: AdamW, one-cycle, label smoothing) on its own splits (``acme.data.splits``,
seed 0); on a real team's GPUs this would be days, here it is about a minute on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "src"))

from acme.data import splits  # noqa: E402
from acme.model import make_net  # noqa: E402
from acme.train import accuracy, fit  # noqa: E402

EPOCHS = 12
SEED = 0


def main() -> None:
    torch.manual_seed(SEED)
    data = splits(seed=SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = make_net(num_classes=data["num_classes"])
    training = SimpleNamespace(
        epochs=EPOCHS, device=torch.device("cpu"), options={"lr": 3e-3}, distilling=False, criterion=None,
        train_loader=lambda: DataLoader(data["train"], batch_size=64, shuffle=True, generator=generator),
        val_loader=DataLoader(data["val"], batch_size=256), log=print)
    fit(model, training)
    test = accuracy(model, DataLoader(data["test"], batch_size=256), torch.device("cpu"))
    out = HERE / "checkpoints" / "digitnet.safetensors"
    out.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    (out.with_suffix(".sha256")).write_text(f"{digest}  {out.name}\n")
    print(f"test accuracy {test:.2%}; wrote {out} ({out.stat().st_size:,} bytes), sha256 {digest}")


if __name__ == "__main__":
    main()

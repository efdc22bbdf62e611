"""Train and cross-validate `sarcoma-petct`: sarcoma GTV segmentation on CT + FDG-PET in SUV (the
recipe and data are models/sarcoma.py's, shared with `sarcoma-ct`).

    python models/train_sarcoma_petct.py --all             # 5 folds, evaluation, report, ship (about 2 h, 1 core)
    python models/train_sarcoma_petct.py --fold 0          # train fold 0 (checkpointed, --resume continues)
    python models/train_sarcoma_petct.py --fold all        # the model that ships, on all 45
    python models/train_sarcoma_petct.py --evaluate 0      # predict fold 0's patients with its model
    python models/train_sarcoma_petct.py --report --ship   # cross-validation table, model card, shipping
"""

from __future__ import annotations

from sarcoma import Recipe, cli

RECIPE = Recipe(name="sarcoma-petct", version="1.0", modalities=("CT", "PT"))

if __name__ == "__main__":
    cli(RECIPE, __doc__)

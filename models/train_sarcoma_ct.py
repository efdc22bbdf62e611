"""Train and cross-validate `sarcoma-ct`: sarcoma GTV segmentation on CT alone (the recipe and
data are models/sarcoma.py's, shared with `sarcoma-petct`).

    python models/train_sarcoma_ct.py --all             # 5 folds, evaluation, report, ship (about 2 h, 1 core)
    python models/train_sarcoma_ct.py --fold 0          # train fold 0 (checkpointed, --resume continues)
    python models/train_sarcoma_ct.py --fold all        # the model that ships, on all 45
    python models/train_sarcoma_ct.py --evaluate 0      # predict fold 0's patients with its model
    python models/train_sarcoma_ct.py --report --ship   # cross-validation table, model card, shipping
"""

from __future__ import annotations

from sarcoma import Recipe, cli

RECIPE = Recipe(name="sarcoma-ct", version="2.0", modalities=("CT",))

if __name__ == "__main__":
    cli(RECIPE, __doc__)

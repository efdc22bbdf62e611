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

HISTORY = """**Version 1.1** (3 mm, channels 8/16/32, 4000 steps on 24 patients, 96 x 144 x 144 mm window)
was validated on the 21 patients it never saw: median Dice 0.639 (7 below 0.5), median absolute
diameter error 33.5 mm (signed +33.4 mm: it over-segmented tissue around the tumour), T agreement
85.7 %, most of it from calling T4 tumours T4 because it oversized everything. On the same 21
patients this version's cross-validation gives a median Dice of 0.703 (5 below 0.5), a diameter
error of 12.6 mm (signed +3.9 mm) and a T agreement of 81.0 %; `sarcoma-petct` there: 0.788 (2),
8.1 mm (+1.9 mm), 90.5 %. With a PET, `mk.analyze` uses `sarcoma-petct`.

"""
RECIPE = Recipe(name="sarcoma-ct", version="2.0", modalities=("CT",), history=HISTORY)

if __name__ == "__main__":
    cli(RECIPE, __doc__)

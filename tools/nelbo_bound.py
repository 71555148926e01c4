"""NELBO of a checkpoint on the binarized-MNIST test set with the training objective's prior term
(the unbiased score-matching estimate of the cross-entropy; stage 1: analytic KL to N(0, I)).

    python tools/nelbo_bound.py CHECKPOINT STAGE [DATA_DIR]
"""
import json
import sys
import time

from lsgm_core.checkpoint import load_model
from lsgm_core.data import load_dataset
from lsgm_core.train import bound_nelbo

model, stage = load_model(sys.argv[1]), int(sys.argv[2])
test = load_dataset("binarized-mnist", "test", sys.argv[3] if len(sys.argv) > 3 else None)
start = time.time()
value = bound_nelbo(model, test, stage, limit=len(test), batch_size=500, seed=0)
print(json.dumps({"checkpoint": sys.argv[1], "stage": stage, "n": len(test),
                  "nelbo_bound_nats": round(value, 3), "seconds": round(time.time() - start, 1)}))

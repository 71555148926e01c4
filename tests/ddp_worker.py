"""The training CLI, run under torchrun by tests/test_training.py, with every rank also writing
its final parameters (and the prior's EMA) to OUT/params-rank<R>.safetensors.

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py --config ... --out OUT ...

It runs lsgm_core.train.main unchanged; only Trainer.train is wrapped to dump the weights.
"""
import sys
from pathlib import Path

from safetensors.torch import save_file

from lsgm_core import train

_train = train.Trainer.train


def _train_and_dump(self, *args, **kwargs):
    result = _train(self, *args, **kwargs)
    tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in (self.ema.state_dict() if self.ema else {}).items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
              str(Path(self.out) / f"params-rank{self.rank}.safetensors"))
    return result


train.Trainer.train = _train_and_dump

if __name__ == "__main__":
    sys.exit(train.main())

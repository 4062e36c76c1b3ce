"""Run under `python -m paddle.distributed.launch`: train through recsys.train.main's path, then save this
rank's parameters to OUT/params_rank<R>.npz so that a test can compare the ranks.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/dp_worker.py OUT [train flags...]
"""

import sys
from pathlib import Path

import numpy as np
import paddle.distributed as dist

from recsys import movielens, train

out = Path(sys.argv[1])
args = train.parse_args(sys.argv[2:])
dist.init_parallel_env()
trainer, _ = train.train(args, movielens.load(args.dataset, args.data_dir, args.split), log=print)
np.savez(out / f"params_rank{dist.get_rank()}.npz", **trainer.params())

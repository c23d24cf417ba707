"""Data-parallel training over MPI (host arrays) and NCCL (GPUs): see :mod:`.world`,
:mod:`.transport`, :mod:`.data_parallel` and :mod:`.batch_share` (losses that are means over
masked tokens). Importing this package does not import ``mpi4py``; only a transport made under an
MPI launcher does."""
from minillm.distributed.batch_share import BatchShare, current_batch_share, sharing_batch
from minillm.distributed.data_parallel import DataParallel, ShardedAdamW, split_rows
from minillm.distributed.world import (
    World,
    abort_on_failure,
    check_batch_split,
    current_world,
    from_main,
    launcher_rank_and_size,
    set_world,
    silent,
    start_ranks,
)

__all__ = ["BatchShare", "DataParallel", "ShardedAdamW", "World", "abort_on_failure", "check_batch_split",
           "current_batch_share", "current_world", "from_main", "launcher_rank_and_size", "set_world", "sharing_batch",
           "silent", "split_rows", "start_ranks"]

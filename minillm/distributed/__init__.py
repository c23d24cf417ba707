"""Data-parallel training over MPI (host arrays) and NCCL (GPUs): see :mod:`.world`,
:mod:`.transport` and :mod:`.data_parallel`. Importing this package does not import ``mpi4py``;
only a transport made under an MPI launcher does."""
from minillm.distributed.data_parallel import DataParallel, ShardedAdamW, split_rows
from minillm.distributed.world import World, abort_on_failure, current_world, launcher_rank_and_size, set_world

__all__ = ["DataParallel", "ShardedAdamW", "World", "abort_on_failure", "current_world", "launcher_rank_and_size",
           "set_world", "split_rows"]

"""minillm: a large language model from first principles (NumPy on the CPU, CuPy on the GPU).

    import minillm as mm
    from minillm import functional as F

    x = mm.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    F.softmax(x).sum().backward()
"""
# minillm.host first: it sets OpenBLAS's thread wait before NumPy loads OpenBLAS (see its docstring)
from minillm import host

# isort: split

from minillm import amp, debug, functional, profiler
from minillm.autograd import Function, enable_grad, is_grad_enabled, no_grad
from minillm.backend import cuda_available, get_array_module, manual_seed
from minillm.debug import GradcheckError, gradcheck
from minillm.tensor import Tensor, ones, randn, tensor, zeros

__version__ = "0.1.0"

host.tune_allocator()   # large host arrays stay in the heap between steps (see minillm.host)

__all__ = [
    "Function", "GradcheckError", "Tensor", "amp", "cuda_available", "debug", "enable_grad", "functional",
    "get_array_module", "gradcheck", "is_grad_enabled", "manual_seed", "no_grad", "ones",
    "host", "profiler", "randn", "tensor", "zeros",
]

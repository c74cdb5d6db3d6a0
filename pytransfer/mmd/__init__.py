"""``pytransfer.mmd``: multi-kernel maximum mean discrepancy.

The fused linear-time quad-tuple estimator and the tiled quadratic U-statistic (JTLN eq.
12-14, Gretton et al. 2012), Gaussian kernel families with a moment-based bandwidth, test-power
kernel weights (DAN) and JTLN's class-pair cost matrix.
"""

from pytransfer.mmd.class_pair import class_pair_mmd
from pytransfer.mmd.functional import mk_mmd
from pytransfer.mmd.spec import KernelSpec, bandwidth, gaussian_kernels
from pytransfer.mmd.weights import optimize_kernel_weights

__all__ = ["KernelSpec", "bandwidth", "class_pair_mmd", "gaussian_kernels", "mk_mmd",
           "optimize_kernel_weights"]

"""The IBB bound of the RIB loss, on the C++/CUDA extension ``ribkernels._C`` when it is
available (built ahead of time, else JIT-built on first use) and on eager PyTorch otherwise.
Importing this package loads nothing: the extension is loaded by the first op that runs.

* :func:`ibb_loss` — the per-batch bound (autograd to the features); β a float or a 0-d tensor on
  the features' device.
* :func:`ibb_loss_batch_beta` — the bound with β fitted to the batch and averaged (one extension
  op, no host sync): what ``IBBLoss`` computes at every training step with ``beta="auto"``.
* :func:`ribkernels.ibb.calibrate.calibrate_beta_batch` — that β fit alone.
* :func:`soft_assign` — phi, the soft cluster assignment.
* :func:`soft_counts` — the A x K sums that make Q.
* :func:`kmeans_step`, :func:`kmeans` — the cluster refresh.
* :func:`extension_status` — where the extension came from and which devices it serves.
"""
from .. import _extension
from .._extension import status as extension_status
from . import _registrations
from .kmeans import KMeansResult, KMeansStep, kmeans, kmeans_step
from .loss import ibb_loss, ibb_loss_batch_beta
from .soft_assign import soft_assign
from .soft_counts import soft_counts

_extension.on_load(_registrations.register)  # the IBB ops' autograd and fake kernels

__all__ = ["ibb_loss", "ibb_loss_batch_beta", "soft_assign", "soft_counts", "kmeans", "kmeans_step", "KMeansStep",
           "KMeansResult", "extension_status"]

"""Autograd formulas and fake (meta) kernels of the ``torch.ops.ribkernels`` ops, registered once
the extension is loaded (see ``ribkernels._extension``). Gradients flow to ``features`` only: centroids, log Q,
labels and beta (a float or a 0-d tensor) are constants of the bound."""
import torch

_DONE = False


def _fake_ibb_forward(features, labels, centroids, log_q, beta, normalize, check_labels=True):
    n, A = features.shape[0], centroids.shape[0]
    return features.new_empty(n), features.new_empty(n, A), features.new_empty(n)


def _fake_ibb_backward(grad_loss, features, labels, centroids, log_q, phi, inv_norm, loss, beta,
                       normalize):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


def _fake_fit_beta(features, centroids, target_entropy, normalize, grid=48):
    return features.new_empty(())


def _fake_forward_fit(features, labels, centroids, log_q, log_beta_ema, momentum, target_entropy,
                      normalize, check_labels=True, grid=48):
    n, A = features.shape[0], centroids.shape[0]
    return (features.new_empty(n), features.new_empty(n, A), features.new_empty(n),
            features.new_empty(()), features.new_empty(()))


def _fake_soft_assign(features, centroids, beta, normalize):
    return features.new_empty(features.shape[0], centroids.shape[0]), features.new_empty(features.shape[0])


def _fake_soft_assign_backward(grad_phi, features, centroids, phi, inv_norm, beta, normalize):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


def _fake_soft_counts(features, labels, centroids, beta, num_classes, normalize):
    return features.new_empty(centroids.shape[0], num_classes)


def _fake_kmeans_step(features, centroids):
    n, A, D = features.shape[0], centroids.shape[0], features.shape[1]
    return (features.new_empty(n, dtype=torch.long), features.new_empty(A, D),
            features.new_empty(A, dtype=torch.long), features.new_empty(n))


def _ibb_setup(ctx, inputs, output):
    features, labels, centroids, log_q, beta, normalize = inputs[:6]
    loss, phi, inv_norm = output
    ctx.save_for_backward(features, labels, centroids, log_q, phi, inv_norm, loss)
    ctx.beta, ctx.normalize = beta, normalize
    ctx.mark_non_differentiable(phi, inv_norm)


def _ibb_backward(ctx, grad_loss, _grad_phi, _grad_inv):
    features, labels, centroids, log_q, phi, inv_norm, loss = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = torch.ops.ribkernels.ibb_backward(grad_loss, features, labels, centroids, log_q, phi,
                                                 inv_norm, loss, ctx.beta, ctx.normalize)
    return (grad,) + (None,) * 6


def _ibb_tb_setup(ctx, inputs, output):
    features, labels, centroids, log_q, beta, normalize = inputs[:6]
    loss, phi, inv_norm = output
    ctx.save_for_backward(features, labels, centroids, log_q, phi, inv_norm, loss, beta)
    ctx.normalize = normalize
    ctx.mark_non_differentiable(phi, inv_norm)


def _ibb_tb_backward(ctx, grad_loss, _grad_phi, _grad_inv):
    features, labels, centroids, log_q, phi, inv_norm, loss, beta = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = torch.ops.ribkernels.ibb_backward.beta_tensor(grad_loss, features, labels, centroids,
                                                             log_q, phi, inv_norm, loss, beta,
                                                             ctx.normalize)
    return (grad,) + (None,) * 6


def _fit_setup(ctx, inputs, output):
    features, labels, centroids, log_q = inputs[:4]
    loss, phi, inv_norm, beta, ema = output
    ctx.save_for_backward(features, labels, centroids, log_q, phi, inv_norm, loss, beta)
    ctx.normalize = inputs[7]
    ctx.mark_non_differentiable(phi, inv_norm, beta, ema)


def _fit_backward(ctx, grad_loss, *_unused):
    return _ibb_tb_backward(ctx, grad_loss, None, None)[:1] + (None,) * 9


def _soft_assign_setup(ctx, inputs, output):
    features, centroids, beta, normalize = inputs
    phi, inv_norm = output
    ctx.save_for_backward(features, centroids, phi, inv_norm)
    ctx.beta, ctx.normalize = beta, normalize
    ctx.mark_non_differentiable(inv_norm)


def _soft_assign_backward(ctx, grad_phi, _grad_inv):
    features, centroids, phi, inv_norm = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = torch.ops.ribkernels.soft_assign_backward(grad_phi, features, centroids, phi,
                                                         inv_norm, ctx.beta, ctx.normalize)
    return grad, None, None, None


def register() -> None:
    global _DONE
    if _DONE:
        return
    lib = "ribkernels::"
    torch.library.register_fake(lib + "ibb_forward", _fake_ibb_forward)
    torch.library.register_fake(lib + "ibb_backward", _fake_ibb_backward)
    torch.library.register_fake(lib + "ibb_forward.beta_tensor", _fake_ibb_forward)
    torch.library.register_fake(lib + "ibb_backward.beta_tensor", _fake_ibb_backward)
    torch.library.register_fake(lib + "ibb_fit_beta", _fake_fit_beta)
    torch.library.register_fake(lib + "ibb_forward_fit", _fake_forward_fit)
    torch.library.register_fake(lib + "soft_assign", _fake_soft_assign)
    torch.library.register_fake(lib + "soft_assign_backward", _fake_soft_assign_backward)
    torch.library.register_fake(lib + "soft_counts", _fake_soft_counts)
    torch.library.register_fake(lib + "kmeans_step", _fake_kmeans_step)
    torch.library.register_autograd(lib + "ibb_forward", _ibb_backward, setup_context=_ibb_setup)
    torch.library.register_autograd(lib + "ibb_forward.beta_tensor", _ibb_tb_backward,
                                    setup_context=_ibb_tb_setup)
    torch.library.register_autograd(lib + "ibb_forward_fit", _fit_backward, setup_context=_fit_setup)
    torch.library.register_autograd(lib + "soft_assign", _soft_assign_backward,
                                    setup_context=_soft_assign_setup)
    _DONE = True

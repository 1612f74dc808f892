"""R-Drop (Liang et al., NeurIPS 2021): the same batch through the model twice, and a penalty for disagreeing.

With dropout on, two forward passes of one batch drop different units and give two slightly different
predictive distributions P1 and P2 for every target token. R-Drop trains on both passes and adds the
symmetric KL divergence between them:

    loss = (CE(P1) + CE(P2)) / 2  +  α · (KL(P1 ‖ P2) + KL(P2 ‖ P1)) / 4

(CE label-smoothed as usual; both terms averaged over the labelled target tokens). This is the authors'
fairseq loss, CE(P1) + CE(P2) + α · (KL(P1 ‖ P2) + KL(P2 ‖ P1)) / 2 per token, halved so that with dropout off it
is the ordinary loss: α means what it means in the paper (5 on IWSLT14). The penalty pulls the
sub-models that dropout samples towards one another, so what the model learns depends less on which units
happen to be dropped: a regularizer for small corpora, reported at +2 BLEU on IWSLT14 (160k pairs). It costs
one extra forward and backward per update (the batch is run once at twice its size) plus the KL over the
vocabulary, and nothing at inference. Measured on a 2-core CPU with the Multi30k preset's model: a 4k-token
batch run twice takes 0.69 s without the KL term, 0.90 s with it, against 0.71 s for a plain 8k-token update
(with autograd through log_softmax and kl_div the same update took 1.84 s: hence `symmetric_kl` below).

The cross-entropy is the model's own training loss on the doubled batch (its mean over both copies is the
mean of the two passes' losses); the KL term is written out here. AttnMT in training mode computes the logits
of the labelled positions only and returns no `logits` (the LM head is the largest matmul of a small model);
their values are taken from the LM head's output with a forward hook, so R-Drop keeps that saving. Other
models return their logits. With dropout off the two passes agree, the KL term is 0 and the loss is the
model's ordinary loss (tested).
"""

import torch
from accelerate.utils import extract_model_from_parallel
from torch.nn import functional as F


def rdrop_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """The R-Drop training loss of one batch (a scalar with a gradient).

    Args:
        model: a seq2seq model in training mode, possibly wrapped by accelerate (DDP); called once, with the
            batch stacked on itself.
        batch: the collator's batch, with `labels` (-100 = left out of the loss).
        alpha: weight α of the KL term, as in the paper (5 on IWSLT14); 0 gives plain training on two passes.
    """
    labels = batch["labels"]
    doubled = {name: torch.cat([tensor, tensor]) for name, tensor in batch.items()}
    head_outputs = []
    head = extract_model_from_parallel(model).get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, output: head_outputs.append(output))
    try:
        outputs = model(**doubled)
    finally:
        hook.remove()
    loss = outputs.loss  # mean label-smoothed CE over both copies' N + N labelled tokens = (CE(P1) + CE(P2)) / 2
    if alpha == 0:
        return loss
    labelled = labels != -100
    if outputs.logits is not None:  # (2B, T, V)
        first, second = (half[labelled] for half in outputs.logits.chunk(2))
    else:  # AttnMT in training mode: the LM head ran on the labelled positions of both copies, in order: (2N, V)
        (labelled_logits,) = head_outputs
        first, second = labelled_logits.chunk(2)  # (N, V) each, the same N target tokens
    return loss + alpha * symmetric_kl(first, second) / 4


class _SymmetricKL(torch.autograd.Function):
    """KL(P ‖ Q) + KL(Q ‖ P) averaged over rows, P = softmax(a), Q = softmax(b), with its gradient written out.

    The symmetric KL is Σ (P - Q)(log P - log Q), and its gradient has a closed form (D = log P - log Q):

        ∂/∂a = P ⊙ (D - ⟨P, D⟩) + P - Q        ∂/∂b = -(Q ⊙ (D - ⟨Q, D⟩) + Q - P)

    Autograd through log_softmax, kl_div and the sums makes about twenty passes over the (N, V) logits, each
    through main memory: on a 2-core CPU the KL then cost more than the second forward/backward of a small
    model. Here the rows are taken a block at a time (a block fits in the CPU cache), the loss and both
    gradients are computed in that one visit, and backward only scales them. Tested against the autograd
    definition (tests/test_rdrop.py).
    """

    @staticmethod
    def forward(ctx, logits_p: torch.Tensor, logits_q: torch.Tensor, block_rows: int) -> torch.Tensor:
        rows = logits_p.shape[0]
        grad_p = torch.empty_like(logits_p, dtype=torch.float32)
        grad_q = torch.empty_like(logits_q, dtype=torch.float32)
        total = logits_p.new_zeros((), dtype=torch.float32)
        for start in range(0, rows, block_rows):
            block = slice(start, start + block_rows)
            log_p = F.log_softmax(logits_p[block].float(), dim=-1)
            log_q = F.log_softmax(logits_q[block].float(), dim=-1)
            log_ratio = log_p - log_q
            p, q = log_p.exp_(), log_q.exp_()
            p_minus_q = p - q
            total += torch.dot(p_minus_q.view(-1), log_ratio.view(-1))
            mean_p = (p * log_ratio).sum(-1, keepdim=True)  # ⟨P, D⟩ per row
            mean_q = (q * log_ratio).sum(-1, keepdim=True)
            torch.addcmul(p_minus_q, p, log_ratio - mean_p, out=grad_p[block])
            torch.addcmul(p_minus_q, q, log_ratio - mean_q, out=grad_q[block]).neg_()
        ctx.save_for_backward(grad_p, grad_q)
        ctx.input_dtypes = logits_p.dtype, logits_q.dtype
        return total / rows

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_p, grad_q = ctx.saved_tensors
        scale = grad_output / grad_p.shape[0]
        dtype_p, dtype_q = ctx.input_dtypes
        return (grad_p * scale).to(dtype_p), (grad_q * scale).to(dtype_q), None


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, block_rows: int = 64) -> torch.Tensor:
    """KL(P ‖ Q) + KL(Q ‖ P) per row of (N, V) logits, averaged over the N rows (float32 math, any input dtype)."""
    if logits_p.shape != logits_q.shape or logits_p.dim() != 2:
        raise ValueError(f"symmetric_kl takes two (N, V) logit tensors of one shape, got {tuple(logits_p.shape)} "
                         f"and {tuple(logits_q.shape)}")
    if logits_p.shape[0] == 0:
        return logits_p.new_zeros((), dtype=torch.float32) + 0 * (logits_p.sum() + logits_q.sum())
    return _SymmetricKL.apply(logits_p, logits_q, block_rows)

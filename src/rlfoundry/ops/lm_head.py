"""Per-token log-probs of given tokens straight from hidden states, chunk by chunk.

A causal LM's last layer maps hidden states [B, T, H] to logits [B, T, V]; most post-training
code then takes a full log-softmax just to read one column per position. Here the lm-head is
applied only at the positions whose log-prob is needed (response tokens), a chunk of them at a
time, and each chunk's logits are recomputed in the backward pass, so memory holds one
[chunk, V] block instead of [B, T, V] logits plus their log-softmax.

The chunk is a hand-written autograd function: the forward keeps only the log-normaliser
(and the entropy) per position; the backward recomputes the logits once, turns them into
the logits' gradient in place (``g * (onehot - p)``, plus the entropy term when asked), and
runs the two gradient matmuls. Autograd through ``logsumexp`` + ``gather`` would instead
recompute the whole forward and allocate several more [chunk, V] buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlfoundry.ops.logprobs import logprobs_from_logits

DEFAULT_CHUNK = 1024


def _logits(hidden, weight, bias, temperature):
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits.div_(temperature)
    return logits


def _chunk_forward(hidden, weight, bias, targets, temperature, with_entropy):
    """log p(target) (and the entropy) of one chunk, without a graph: the one forward
    computation of both paths (the policy's autograd op and the no-grad reference/old
    log-probs), so identical weights and inputs give bit-identical log-probs."""
    z = _logits(hidden, weight, bias, temperature)
    z.sub_(z.amax(-1, keepdim=True))  # shifted logits: max 0 per row
    shift_target = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if with_entropy:
        e = z.exp()
        total = e.sum(-1)
        # sum_j p_j z_j without a third [n, V] buffer
        ez = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).reshape(-1) / total
    else:
        e = z.exp_()
        total = e.sum(-1)
    log_total = total.log()
    logp = shift_target - log_total
    entropy = (log_total - ez) if with_entropy else None
    return logp, entropy


class _ChunkLogProbs(torch.autograd.Function):
    """log p(target) (and the entropy) of one chunk: hidden [n, H], weight [V, H] -> [n]."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, with_entropy):
        logp, entropy = _chunk_forward(hidden, weight, bias, targets, temperature, with_entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, logp, entropy if with_entropy else logp)
        ctx.temperature, ctx.with_entropy = temperature, with_entropy
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        if g_logp is None and g_ent is None:
            return None, None, None, None, None, None
        hidden, weight, bias, targets, logp, entropy = ctx.saved_tensors
        temperature = ctx.temperature
        z = _logits(hidden, weight, bias, temperature)
        # log p_j = z_j - lse, and lse = z_target - logp (exact, no second logsumexp)
        lse = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logp
        z.sub_(lse.unsqueeze(-1))  # z now holds log p
        if ctx.with_entropy and g_ent is not None:
            # dH/dz_j = -p_j (log p_j + H)
            grad = z.add(entropy.unsqueeze(-1)).mul_(z.exp()).mul_(-g_ent.unsqueeze(-1))
            p = z.exp_()
            if g_logp is not None:
                grad.addcmul_(p, g_logp.unsqueeze(-1), value=-1.0)
        else:
            grad = z.exp_().mul_(-g_logp.unsqueeze(-1))  # -g p_j
        if g_logp is not None:
            rows = torch.arange(grad.shape[0], device=grad.device)
            grad[rows, targets] += g_logp.to(grad.dtype)  # + g at the target
        if temperature != 1.0:
            grad.div_(temperature)
        grad = grad.to(hidden.dtype)
        g_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        g_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        g_bias = grad.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return g_hidden, g_weight, g_bias, None, None, None


def _chunk(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           targets: torch.Tensor, with_entropy: bool, temperature: float = 1.0):
    """Forward only (no graph): log-probs and, if asked, entropies of one chunk; the same
    computation as the autograd op's forward (:func:`_chunk_forward`)."""
    return _chunk_forward(hidden, weight, bias, targets, temperature, with_entropy)


def gather_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    targets: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK,
                    with_entropy: bool = False, temperature: float = 1.0):
    """log p(target | hidden) for N positions: hidden [N, H], targets [N] -> ([N], entropy [N] | None).

    ``temperature`` divides the logits first (GRPO scores tokens at the sampling temperature)."""
    logps, ents = [], []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if grad:
            lp, ent = _ChunkLogProbs.apply(h, weight, bias, t, float(temperature), with_entropy)
        else:
            lp, ent = _chunk(h, weight, bias, t, with_entropy, temperature)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps) if logps else hidden.new_zeros(0, dtype=torch.float32)
    entropy = torch.cat(ents) if with_entropy and ents else None
    return logp, entropy


@dataclass
class TokenLogprobs:
    """Dense per-token results aligned with ``labels = input_ids[:, 1:]``."""

    logprobs: torch.Tensor  # [B, T-1], 0 where mask is 0
    mask: torch.Tensor  # [B, T-1] bool
    entropy: torch.Tensor | None = None  # [B, T-1]
    hidden: torch.Tensor | None = None  # [B, T, H] last hidden states (when asked for)

    def sequence_sums(self) -> torch.Tensor:
        return self.logprobs.sum(-1)

    def token_counts(self) -> torch.Tensor:
        return self.mask.sum(-1).to(self.logprobs.dtype)


def _uses_plain_lm_head(model) -> bool:
    """False for models that post-process logits (softcapping, scaling): use full logits there."""
    cfg = getattr(model, "config", None)
    if cfg is None or model.get_output_embeddings() is None:
        return False
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            return False
    return hasattr(model, "base_model") and model.base_model is not model


PACKED_ATTENTION = ("sdpa", "eager")  # implementations that take a custom 4D mask


def supports_packed_rows(model) -> bool:
    """Whether :func:`logprobs_at` can run ``model`` on packed rows: a plain lm-head and an
    attention implementation that accepts a custom 4D mask (flash-attention kernels take
    only padding masks, so such models keep one row per sequence). Models with sliding-window
    attention keep separate rows too: a custom mask replaces the window."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    cfg = getattr(model, "config", None)
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", None) is not False:
        return False
    return getattr(cfg, "_attn_implementation", None) in PACKED_ATTENTION and _uses_plain_lm_head(model)


def logprobs_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, source: torch.Tensor, targets: torch.Tensor, *,
                chunk_size: int = DEFAULT_CHUNK, with_entropy: bool = False,
                temperature: float = 1.0):
    """One forward of the backbone with a custom 4D ``attention_mask`` (``[B, 1, T, T]``,
    boolean for sdpa, additive for eager) and ``position_ids``, then the log-probs of
    ``targets`` [N] predicted at flat positions ``source`` [N] of ``[B * T]``, through the
    chunked lm-head. Returns ``(logprobs [N], entropy [N] | None, last hidden [B, T, H])``."""
    if hasattr(model, "get_base_model"):  # PEFT: the transformers model carries the adapters
        model = model.get_base_model()
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state
    head = model.get_output_embeddings()
    lp, ent = gather_logprobs(hidden.reshape(-1, hidden.shape[-1])[source], head.weight,
                              head.bias, targets, chunk_size=chunk_size,
                              with_entropy=with_entropy, temperature=temperature)
    return lp, ent, hidden


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   loss_mask: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK,
                   with_entropy: bool = False, return_hidden: bool = False,
                   temperature: float = 1.0) -> TokenLogprobs:
    """Log-probs of ``input_ids[:, 1:]`` where ``loss_mask[:, 1:]`` is set, in one forward.

    Only the masked positions go through the lm-head (no [B, T, V] tensor), unless the model
    post-processes its logits, in which case the model's own logits are used. A PEFT model is
    run through its underlying transformers model (whose layers carry the adapters).
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    mask = loss_mask[:, 1:].bool()
    labels = input_ids[:, 1:]
    if _uses_plain_lm_head(model):
        out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state
        head = model.get_output_embeddings()
        lp, ent = gather_logprobs(hidden[:, :-1][mask], head.weight, head.bias, labels[mask],
                                  chunk_size=chunk_size, with_entropy=with_entropy,
                                  temperature=temperature)
        dense = torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device).masked_scatter(mask, lp)
        dense_ent = None
        if ent is not None:
            dense_ent = torch.zeros(mask.shape, dtype=ent.dtype, device=ent.device).masked_scatter(mask, ent)
        return TokenLogprobs(dense, mask, dense_ent, hidden if return_hidden else None)
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                output_hidden_states=return_hidden, use_cache=False)
    logits = out.logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    lp = logprobs_from_logits(logits, labels) * mask
    ent = None
    if with_entropy:
        ent = (torch.logsumexp(logits, -1) - (logits.softmax(-1) * logits).sum(-1)) * mask
    return TokenLogprobs(lp, mask, ent, out.hidden_states[-1] if return_hidden else None)


def response_embeddings(hidden: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """``[B, H]`` mean of the last hidden states over each row's response tokens
    (``loss_mask`` ``[B, T]`` marks them); rows without response tokens give zeros."""
    w = loss_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1)

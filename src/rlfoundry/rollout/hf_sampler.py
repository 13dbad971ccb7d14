"""Batched sampling with the policy model and a KV cache.

Each prompt is prefilled once and its cache is shared by its ``G`` samples (the cache rows are
repeated after the prefill, not the prompt before it). Finished sequences (EOS or a stop
string) are dropped from the decode batch as they finish, so late steps only run the
sequences still going.
"""

from __future__ import annotations

import inspect
import time

import torch

from rlfoundry.rollout.base import Rollout, SamplingParams


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_from(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs`` [n, V] (rows need not be normalised) by inverse-CDF
    sampling: one uniform number per row and a search in the running sum. Exact like
    ``torch.multinomial``, which on CPU instead draws an exponential number for every token
    of the vocabulary (most of a small model's sampling time)."""
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.squeeze(1).clamp_(max=probs.shape[-1] - 1)


def _draw(probs: torch.Tensor, active: list[int], generator, group: int) -> torch.Tensor:
    """One token per row of ``probs``; with a generator per prompt, row ``j`` (sample
    ``active[j]``, prompt ``active[j] // group``) draws from its prompt's generator alone."""
    if not isinstance(generator, (list, tuple)):
        return sample_from(probs, generator)
    return torch.cat([sample_from(probs[j:j + 1], generator[s // group])
                      for j, s in enumerate(active)])


def cache_argument(model: torch.nn.Module) -> str:
    """The name under which ``model.forward`` takes the KV cache: ``cache`` from transformers
    5.24 on, ``past_key_values`` before. Passing the old name to a new model works but warns
    (a FutureWarning on every forward, i.e. on every GRPO step), so ask the signature. A PEFT
    wrapper forwards keyword arguments to the model it wraps, whose signature is the one asked."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature: the old name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output):
    """The KV cache of a forward's output, read under its current name (``cache`` from
    transformers 5.24 on; ``past_key_values``, which then warns, before)."""
    keys = output.keys() if hasattr(output, "keys") else ()
    return output["cache"] if "cache" in keys else output.past_key_values


class HFSampler:
    """Rollout backend that samples with the (shared) policy module itself."""

    def __init__(self, model: torch.nn.Module, tokenizer, eos_token_ids: list[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        eos = eos_token_ids or [tokenizer.eos_token_id]
        self.eos_ids = set(int(e) for e in eos if e is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model  # same module: nothing to copy

    def _hit_stop(self, tokens: list[int], stops: list[str]) -> bool:
        tail = self.tokenizer.decode(tokens[-16:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], num_samples: int, params: SamplingParams,
                 generator: torch.Generator | list[torch.Generator]) -> Rollout:
        start = time.perf_counter()
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left-pad so every prompt ends at the last column
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        ids, attn = ids.to(device), attn.to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cache_name = cache_argument(model)
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        cache = output_cache(out)
        g = num_samples
        cache.batch_repeat_interleave(g)
        logits = out.logits[:, -1].repeat_interleave(g, 0)
        attn = attn.repeat_interleave(g, 0)
        next_pos = pos[:, -1].repeat_interleave(g) + 1

        n = len(prompts) * g
        active = list(range(n))
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        truncated = [True] * n
        for step in range(params.max_new_tokens):
            logits = logits.float()
            if params.temperature > 0:
                scaled = logits / params.temperature
                probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)
                nxt = _draw(probs, active, generator, g)
            else:
                scaled = logits
                nxt = logits.argmax(-1)
            lp = scaled.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
            keep = []
            for j, (s, t, v) in enumerate(zip(active, nxt.tolist(), lp.tolist())):
                tokens[s].append(t)
                logps[s].append(v)
                if t in self.eos_ids or (params.stop_strings and self._hit_stop(tokens[s], params.stop_strings)):
                    truncated[s] = False
                else:
                    keep.append(j)
            if not keep or step == params.max_new_tokens - 1:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                attn, next_pos, nxt = attn[sel], next_pos[sel], nxt[sel]
                active = [active[j] for j in keep]
            attn = torch.cat([attn, attn.new_ones(len(active), 1)], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                        use_cache=True, **{cache_name: cache})
            logits = out.logits[:, -1]
            next_pos = next_pos + 1
        model.train(was_training)
        return Rollout(
            prompt_index=[i // g for i in range(n)],
            prompt_ids=[list(prompts[i // g]) for i in range(n)],
            completion_ids=tokens,
            sampling_logprobs=logps,
            truncated=truncated,
            seconds=time.perf_counter() - start,
        )

"""r1's lean forward for Llama-family decoders: the sampler's KV cache and the trainer's log-probabilities.

The same arithmetic as the ``transformers`` modules (it reads their weights at every call, so it always
sees the current policy), without what a GRPO step on a small model pays for and does not need:

* **shared prompts**: the G completions of a group share their prompt, so its keys and values are
  computed once per group (sampler prefill and training forward alike) instead of G times; the
  gradient is the same, the prompt's share of the tokens (~25-35% for short-answer tasks) is not
  recomputed;
* **little padding compute**: completions are sorted by length and cut into buckets, each padded only
  to its own longest row (a bucket must save ``BUCKET_COST`` padded tokens; one bucket under bf16 mixed
  precision on CPU); the last completion token (usually EOS) is predicted, never fed;
* **a sampler that stops computing finished rows**: the KV cache is compacted each time a quarter of
  the rows it holds are done, instead of running every row to the longest one; its decode loop runs compiled
  by TorchScript (no Python cost per operator) and, for small models on CPU, in lanes on several threads
  (``LANE_FLOPS``), which the compiled loop allows because it does not hold the GIL;
* fused q/k/v and gate/up projections, RMSNorm from the 2-norm (fewer kernels than ``F.rms_norm`` on
  CPU), explicit grouped-query attention;
* optional bf16 mixed precision (``dtype=torch.bfloat16`` on float32 weights): the weights cast once
  per call rather than at every matmul as ``torch.autocast`` does, so a 64-step decode casts them once
  (and once per optimizer step for an update in micro-batches, :func:`reuse_weights`); on CPU a sampling
  call too small for bf16 matmuls to pay (``BF16_DECODE_FLOPS``) runs in float32.

Supported: ``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM`` (q/k norms) with full
attention, SiLU MLP, any rotary scaling transformers implements (``model.model.rotary_emb`` computes the
cos/sin). Anything else (peft wrappers, MoE, sliding windows, soft-capping, gradient checkpointing in
training) returns a reason from :func:`unsupported` and callers use the ``transformers`` path.

Measured equal to ``transformers``: log-probabilities within 2e-5 nats (float32), gradients within 1e-5
relative, greedy samples token for token identical to ``generate`` (tests/test_lean.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import threading
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

BF16_DECODE_FLOPS = 2.5e8  # under bf16 mixed precision on CPU the sampler's matmuls run in bf16 only from this many
# FLOPs per decode step (rows x :func:`_matmul_flops`); below it float32 is faster (oneDNN's fixed cost per small
# bf16 matmul). Fitted on 2 cores of an Intel Xeon with AMX (docs/performance.md item 10), decode step float32 vs
# bf16: 1M parameters at 64 rows 1.9 vs 2.1 ms (bf16 pays from ~120 rows), 10M 12.6 vs 8.9 ms (from ~14 rows); a
# compromise between the two: it switches at 156 rows at 1M (1.6 MFLOP per token) and 12 rows at 10M (20.7 MFLOP)
LANE_FLOPS = 2.5e8  # on CPU a sampling call with fewer matmul FLOPs per decode step (rows x :func:`_matmul_flops`)
# runs in lanes, one per intra-op thread (:func:`sample`); fitted on 2 cores of an Intel Xeon (docs/performance.md)
TRANSPOSED_BYTES = 64 << 20  # the sampler keeps transposed float32 copies of a model's matrices up to this
# total size (_decode_step)


_reuse: dict | None = None  # (id(model), dtype, grad mode) -> (parameter state, _Weights) inside reuse_weights()


@contextlib.contextmanager
def reuse_weights():
    """Within this block, the concatenated (and, under mixed precision, bf16-cast) weight matrices of a model
    are built once and reused by every :func:`token_logprobs` call while its parameters are unchanged (same
    storage and in-place version; an optimizer step rebuilds them), instead of once per call. For an update in
    micro-batches: the reference's and the policy's matrices once per optimizer step instead of once per
    micro-batch (10M parameters, bf16: 6 ms per cast, 8 micro-batches per step). With gradients the cached
    matrices stay in each micro-batch's graph: their backward (concatenation, dtype cast, scaling) keeps no
    tensors, so every backward passes through them to the float32 parameters. Nested blocks share the
    outer one's cache; it is dropped on exit. The cache is module state: one thread at a time."""
    global _reuse
    if _reuse is not None:
        yield
        return
    _reuse = {}
    try:
        yield
    finally:
        _reuse = None


def _weights(model, dtype: torch.dtype | None) -> "_Weights":
    """``_Weights(model, dtype)``, from the :func:`reuse_weights` cache when one is open."""
    if _reuse is None:
        return _Weights(model, dtype)
    state = tuple((p.data_ptr(), p._version, p.requires_grad) for p in model.parameters())
    key = (id(model), dtype, torch.is_grad_enabled())
    hit = _reuse.get(key)
    if hit is None or hit[0] != state:
        hit = _reuse[key] = (state, _Weights(model, dtype))
    return hit[1]


def _matmul_flops(model) -> int:
    """Matmul FLOPs of one token through ``model``'s projections, MLP and output head (2 per weight)."""
    c = model.config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    D, I = c.hidden_size, c.intermediate_size
    per_layer = D * hd * (2 * c.num_attention_heads + 2 * c.num_key_value_heads) + 3 * D * I
    return 2 * (c.num_hidden_layers * per_layer + D * c.vocab_size)

FAMILIES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
BUCKET_COST = 128  # tokens of padding a further length bucket must save to be worth it (measured on 2 CPU
# cores, 1M-10M models: 128 beat 64 and 384 with optimal cuts; see docs/performance.md)


def unsupported(model, training: bool = False) -> str | None:
    """Why the lean forward cannot run ``model`` (None when it can); ``training``: for a forward with
    gradients (which gradient checkpointing and attention dropout rule out)."""
    name = type(model).__name__
    if name not in FAMILIES:
        return f"{name} is not one of {', '.join(FAMILIES)}"
    c = model.config
    if getattr(c, "hidden_act", "silu") != "silu" or getattr(c, "mlp_bias", False):
        return f"hidden_act={c.hidden_act!r} / mlp_bias: expected a SiLU MLP without bias"
    if any(t != "full_attention" for t in (getattr(c, "layer_types", None) or [])):
        return "layers with sliding-window attention"
    if getattr(c, "use_sliding_window", False):
        return "use_sliding_window=True"
    rope = (getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "dynamic":
        return "dynamic NTK rotary scaling (its frequencies depend on the sequence length seen)"
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers releases before the rename
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if training and checkpointing:
        return "gradient checkpointing is on"
    for m in model.modules():  # transformers' own input-grad hook (gradient checkpointing) changes no value
        hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        if any(getattr(h, "__name__", "") != "make_inputs_require_grads" for h in hooks):
            return "forward hooks are registered (the lean forward would bypass them)"
    if training and model.training and getattr(c, "attention_dropout", 0.0):
        return "attention dropout in training mode"
    return None


class _Weights:
    """Per-layer weights, q/k/v and gate/up concatenated (with grad when the model has it).

    ``dtype``: the compute dtype of the matmuls and attention (None = the weights' own). When it differs
    from the weights' (bf16 compute on float32 weights: mixed precision), the matrices are cast once per
    call (differentiably: their gradients reach the float32 weights in float32), the residual stream,
    RMSNorm and softmax stay in float32, each matmul's input is cast to ``dtype``, and the logits come
    back as float32 from a bf16 matmul (the numerics of ``torch.autocast``, without re-casting a weight
    at every decode step). On a trained, peaked model single-token log-probabilities then move by up to
    ~0.4 nats against float32 (bf16 rounding of large logits; ~5e-3 on the random benchmark models).

    Raises:
        ValueError: ``dtype`` is neither None, the weights' dtype nor ``torch.bfloat16``.
    """

    def __init__(self, model, dtype: torch.dtype | None = None):
        self.model = model
        self.decoder = model.model
        c = model.config
        attn = self.decoder.layers[0].self_attn
        self.H, self.KH = c.num_attention_heads, c.num_key_value_heads
        self.hd, self.scaling = attn.head_dim, attn.scaling
        self.eps = c.rms_norm_eps
        self._eps = torch.tensor(self.eps, dtype=torch.float32)
        q_norm = getattr(attn, "q_norm", None)
        self.qk_eps = torch.tensor(getattr(q_norm, "variance_epsilon", self.eps), dtype=torch.float32)  # Qwen3
        wdtype = self.decoder.embed_tokens.weight.dtype
        if dtype not in (None, wdtype, torch.bfloat16):
            mixed = "" if wdtype == torch.bfloat16 else " or torch.bfloat16 (mixed precision)"
            raise ValueError(f"lean forward: compute dtype {dtype} on {wdtype} weights; expected None, {wdtype}{mixed}")
        self.cd = dtype or wdtype
        self.mixed = self.cd != wdtype
        cast = (lambda t: None if t is None else t.to(self.cd)) if self.mixed else (lambda t: t)
        # the attention's 1/sqrt(hd) folded into the query projection (one multiplication of a weight matrix per
        # call instead of one of the attention scores per layer and pass); not with Qwen3's per-head q RMSNorm,
        # which would normalise it away: there the scores are scaled (``q_scale``)
        fold = getattr(attn, "q_norm", None) is None
        self.q_scale = 1.0 if fold else self.scaling
        # (aten mul.Scalar: its backward keeps no tensor, so reuse_weights can backpropagate through it again)
        scale = (lambda t: None if t is None else torch.ops.aten.mul.Scalar(t, self.scaling)) if fold else (lambda t: t)
        self.layers = []
        for layer in self.decoder.layers:
            a, m = layer.self_attn, layer.mlp
            biases = [scale(a.q_proj.bias), a.k_proj.bias, a.v_proj.bias]
            self.layers.append(dict(
                ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight,
                wqkv=cast(torch.cat([scale(a.q_proj.weight), a.k_proj.weight, a.v_proj.weight])),
                bqkv=None if biases[0] is None else cast(torch.cat(biases)),
                wo=cast(a.o_proj.weight), bo=cast(a.o_proj.bias),
                qn=getattr(a, "q_norm", None), kn=getattr(a, "k_norm", None),
                wgu=cast(torch.cat([m.gate_proj.weight, m.up_proj.weight])), wd=cast(m.down_proj.weight)))
        head = model.get_output_embeddings()
        self.head_w, self.head_b = cast(head.weight), cast(head.bias)

    def transposed(self) -> list[dict]:
        """The layers' matrices as contiguous [in, out] copies (and the head's as ``"head"`` in the last dict), for
        the sampler's ``mm`` / ``addmm`` on few rows (faster there than ``linear`` on [out, in] weights); no grad."""
        if getattr(self, "_transposed", None) is None:
            with torch.no_grad():
                t = [{k: lw[k].t().contiguous() for k in ("wqkv", "wo", "wgu", "wd")} for lw in self.layers]
                t[-1]["head"] = self.head_w.t().contiguous()
            self._transposed = t
        return self._transposed

    def decode_weights(self, transposed: bool) -> dict[str, list[torch.Tensor]]:
        """The sampler's matrices by name, a list over layers (:func:`_decode_step`): [in, out] copies when
        ``transposed`` (:meth:`transposed`), else the [out, in] matrices of this object; biases, Qwen3's q / k norm
        weights and the head's bias only where the model has them."""
        t = self.transposed() if transposed else None
        lw = self.layers
        mats = {"embed": [self.decoder.embed_tokens.weight], "norm": [self.decoder.norm.weight],
                "ln1": [x["ln1"] for x in lw], "ln2": [x["ln2"] for x in lw],
                "head": [t[-1]["head"] if t else self.head_w]}
        for k in ("wqkv", "wo", "wgu", "wd"):
            mats[k] = [t[i][k] for i in range(len(lw))] if t else [x[k] for x in lw]
        for k in ("bqkv", "bo"):
            if lw[0][k] is not None:
                mats[k] = [x[k] for x in lw]
        if lw[0]["qn"] is not None:
            mats["qn"], mats["kn"] = [x["qn"].weight for x in lw], [x["kn"].weight for x in lw]
        if self.head_b is not None:
            mats["head_b"] = [self.head_b]
        return mats

    def norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """RMSNorm (:func:`_rms`), returned in the compute dtype (the next matmul's input)."""
        return _rms(x, w, self._eps, self.cd)

    def rope(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin [n, 1, q, hd] in the compute dtype for position_ids [n, q] (the model's own rotary
        module; the sin's first half negated, so that ``rotate_half(x) * sin == x.roll(hd / 2, -1) * signed_sin``
        exactly: one kernel instead of a negation and a concatenation)."""
        cos, sin = self.decoder.rotary_emb(x, position_ids)
        half = sin.shape[-1] // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)
        if self.mixed:
            cos, sin = cos.to(self.cd), sin.to(self.cd)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def qkv(self, i: int, x: torch.Tensor, cos, sin):
        """x [n, q, D] (residual stream), cos, signed sin (:meth:`rope`) -> q [n, H, q, hd], k, v [n, KH, q, hd],
        rotary applied to q and k (float32 compute without Qwen3's q/k norms: :class:`_QKVRope`, contiguous)."""
        w = self.layers[i]
        n, q_len, _ = x.shape
        h = self.norm(x, w["ln1"])
        if w["qn"] is None and self.cd == torch.float32:
            return _QKVRope.apply(F.linear(h, w["wqkv"], w["bqkv"]), cos, sin, self.H, self.KH, self.hd)
        qkv = F.linear(h, w["wqkv"], w["bqkv"]).view(n, q_len, self.H + 2 * self.KH, self.hd).transpose(1, 2)
        q, k, v = qkv.split([self.H, self.KH, self.KH], 1)
        if w["qn"] is not None:  # Qwen3: RMSNorm over each head before the rotary embedding
            q, k = w["qn"](q), w["kn"](k)
            if self.mixed:  # the module returns float32 for a bf16 input and float32 weights
                q, k = q.to(self.cd), k.to(self.cd)
            qk = torch.cat([q, k], 1)
        else:
            qk = qkv[:, :self.H + self.KH]
        qk = torch.addcmul(qk * cos, qk.roll(self.hd // 2, -1), sin)  # x cos + rotate_half(x) sin
        return qk[:, :self.H], qk[:, self.H:], v

    def bias(self, mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Additive attention bias in ``dtype`` (None = the compute dtype) from a bool mask [n, 1, q, T]
        (True = attend), laid out as :meth:`attend` takes it: 0 / -inf, [n, 1, q, T] for q > 1, [n, KH, 1, T]
        for q = 1 (one row per key/value head, so that :meth:`attend` views it as [n * KH, 1, T])."""
        n, _, q_len, T = mask.shape
        shape = (n, self.KH, 1, T) if q_len == 1 else mask.shape
        return torch.zeros(shape, dtype=dtype or self.cd, device=mask.device).masked_fill_(~mask, float("-inf"))

    def attend(self, q, k, v, bias) -> torch.Tensor:
        """q [n, H, q, hd], k/v [n, KH, T, hd] (T may be a slice of a longer cache), bias (:meth:`bias`: 0 =
        attend, -inf = masked; [n, 1, q, T], or [n, KH, 1, T] for q = 1) -> [n, q, H*hd].

        Grouped-query attention as batched matmuls on [n * KH, rep * q, hd] (no copy of k/v per query
        head); on CPU this is ~2x faster than scaled_dot_product_attention with a mask at these sizes,
        forward and backward. The 1/sqrt(hd) scaling is in the query projection (``q_scale`` = 1) except
        for Qwen3. With one query per row (a one-token prompt or bucket) the bias (and ``q_scale``) are
        applied by the first matmul (``baddbmm``); the sampler's decode step has its own copy of this
        (:func:`_decode_step`)."""
        n, _, q_len, _ = q.shape
        T = k.shape[2]
        b = n * self.KH
        rep = self.H // self.KH
        qg = q.reshape(b, rep * q_len, self.hd)
        kt = k.reshape(b, T, self.hd).transpose(1, 2)
        if q_len == 1:
            scores = torch.baddbmm(bias.reshape(b, 1, T), qg, kt, alpha=self.q_scale)  # [b, rep, T]
        else:  # the bias broadcast over heads (a [b, rep*q, T] copy of it would be as large as the scores)
            scores = torch.bmm(qg, kt)
            if self.q_scale != 1.0:
                scores = scores * self.q_scale
            scores = scores.view(n, self.KH, rep, q_len, T) + bias.unsqueeze(1)
        # bf16 scores: softmax computes in float32 inside its kernel and rounds once to bf16, the value of
        # softmax(scores.float()).to(bf16) without two conversion passes (the gradient rounds in bf16)
        probs = torch.softmax(scores, -1).view(b, rep * q_len, T)
        o = torch.bmm(probs, v.reshape(b, T, self.hd)).view(n, self.H, q_len, self.hd)
        return o.transpose(1, 2).reshape(n, q_len, self.H * self.hd)

    def rest(self, i: int, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, MLP, residual (each residual add fused into its matmul; mixed
        precision: the compute-dtype outputs added to the float32 residual stream). With gradients in float32
        compute, the MLP's second half is :class:`_SwiGLUDown` (a quarter fewer saved values)."""
        w = self.layers[i]
        if self.cd != torch.float32 or not torch.is_grad_enabled():
            return _rest(x, attn_out, w["wo"], w["bo"], w["ln2"], w["wgu"], w["wd"], self._eps, self.cd, False)
        shape = x.shape
        x, gu = _gate_up(x, attn_out, w["wo"], w["bo"], w["ln2"], w["wgu"], self._eps, self.cd, False)
        return _SwiGLUDown.apply(x, gu, w["wd"]).view(shape)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and output head: [..., D] -> float32 logits [..., V]."""
        return F.linear(self.norm(x, self.decoder.norm.weight), self.head_w, self.head_b).float()


def _prompt_pass(w: _Weights, ids: torch.Tensor, mask: torch.Tensor):
    """Run left-padded prompts [U, P] through every layer; returns the last position's hidden state
    [U, D] (final norm not applied), the per-layer (k, v) [U, KH, P, hd] and the position ids."""
    U, P = ids.shape
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    x = w.decoder.embed_tokens(ids)
    cos, sin = w.rope(x, pos)
    causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
    am = causal & mask.bool()[:, None, None, :]  # [U, 1, P, P]
    am = w.bias(am | torch.eye(P, dtype=torch.bool, device=ids.device))  # padded queries attend to themselves (no NaN)
    kv = []
    for i in range(len(w.layers)):
        q, k, v = w.qkv(i, x, cos, sin)
        kv.append((k, v))
        x = w.rest(i, x, w.attend(q, k, v, am))
    return x[:, -1], kv, pos


def token_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, temperature: float = 1.0, entropy_grad: bool = False,
                   buckets: int = 4, dtype: torch.dtype | None = None,
                   entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities and entropies of the completion tokens, as ``r1.rl.logprobs.token_logprobs``
    computes them, with each distinct prompt run once and no compute on completion padding.

    Rows whose prompt (ids and mask) equals the previous row's share that prompt's keys and values
    (GRPO's groups are consecutive rows); completions are sorted by length (tokens up to and including
    EOS) and cut into at most ``buckets`` buckets of similar length.

    Args:
        prompt_ids, prompt_mask: [N, P] left-padded prompts.
        completion_ids, completion_mask: [N, L] completions (mask 1 up to and including EOS, then 0).
        temperature: logits are divided by it before the softmax.
        entropy_grad: keep the entropy in the autograd graph.
        buckets: at most this many length buckets (:func:`_buckets` picks how many pay off); one under bf16
            mixed precision on CPU.
        dtype: compute dtype of the matmuls (None = the weights'; ``torch.bfloat16`` on float32 weights =
            bf16 mixed precision, see :class:`_Weights`).
        entropy: compute the entropies (False: None in their place, and no pass over the [n, width, V]
            probabilities for them; the reference's forward needs none).
    Returns:
        logp [N, L] and entropy [N, L] (None when ``entropy`` is False) in nats, 0 on completion padding (with
        grad if the model has it).
    Raises:
        ValueError: a model :func:`unsupported` names a reason for.
    """
    reason = unsupported(model, training=torch.is_grad_enabled())
    if reason:
        raise ValueError(f"lean log-probabilities: {reason}")
    w = _weights(model, dtype)
    N, L = completion_ids.shape
    dev = completion_ids.device
    same = torch.zeros(N, dtype=torch.bool, device=dev)
    if N > 1:
        same[1:] = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    owner = (~same).long().cumsum(0) - 1  # [N] index of each row's distinct prompt
    uniq = (~same).nonzero().squeeze(-1)
    p_mask = prompt_mask[uniq]
    first = int(p_mask.any(0).long().argmax()) if p_mask.any() else 0  # columns of padding in every prompt
    p_ids, p_mask = prompt_ids[uniq, first:], p_mask[:, first:]
    last, kv, p_pos = _prompt_pass(w, p_ids, p_mask)
    p_len = p_mask.sum(-1)  # [U] real prompt tokens

    lengths = completion_mask.sum(-1).long().clamp(min=1)  # [N]
    order = torch.argsort(lengths, descending=True, stable=True)
    if w.mixed and dev.type == "cpu":  # bf16 matmuls on CPU run through oneDNN, which compiles and keeps a kernel
        # per shape: length buckets change shapes at every step (1M, G 8: peak RSS 674 -> 930 MB, no faster)
        buckets = 1
    bounds = _buckets(lengths[order].tolist(), buckets)
    logps, ents = [], []
    for lo, hi in bounds:
        rows = order[lo:hi]
        width = int(lengths[rows[0]])
        own = owner[rows]
        h = last.index_select(0, own).unsqueeze(1)  # [n, 1, D] state predicting completion token 0
        if width > 1:
            h = torch.cat([h, _completion_pass(w, completion_ids[rows, :width - 1], own, kv, p_mask, p_len)], 1)
        logits = w.head(h) / temperature  # [n, width, V]
        logp_all = torch.log_softmax(logits, -1)
        lp = logp_all.gather(-1, completion_ids[rows, :width].unsqueeze(-1)).squeeze(-1)
        logps.append(F.pad(lp, (0, L - width)))
        if entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                ent = -(logp_all.exp() * logp_all).sum(-1)
            ents.append(F.pad(ent, (0, L - width)))
    inverse = torch.argsort(order)
    mask = completion_mask.to(logps[0].dtype)
    # index_select, not x[idx]: its backward (index_add) sums in a fixed order; x[idx]'s (index_put with
    # accumulate) does not on CPU, and bit-identical reruns of a seed need it
    ent_out = torch.cat(ents).index_select(0, inverse) * mask if entropy else None
    return torch.cat(logps).index_select(0, inverse) * mask, ent_out


def _completion_pass(w: _Weights, ids: torch.Tensor, own: torch.Tensor, kv, p_mask, p_len) -> torch.Tensor:
    """Hidden states [n, W, D] of completion tokens ``ids`` [n, W] after their shared prompts."""
    n, W = ids.shape
    dev = ids.device
    pos = p_len[own].unsqueeze(1) + torch.arange(W, device=dev)  # [n, W]
    x = w.decoder.embed_tokens(ids)
    cos, sin = w.rope(x, pos)
    P = p_mask.shape[1]
    am = w.bias(torch.cat([p_mask.bool()[own][:, None, None, :].expand(n, 1, W, P),
                           torch.ones(W, W, dtype=torch.bool, device=dev).tril().expand(n, 1, W, W)], -1))  # [n, 1, W, P+W]
    for i in range(len(w.layers)):
        q, k, v = w.qkv(i, x, cos, sin)
        pk, pv = kv[i]
        k = torch.cat([pk.index_select(0, own), k], 2)
        v = torch.cat([pv.index_select(0, own), v], 2)
        x = w.rest(i, x, w.attend(q, k, v, am))
    return x


def _buckets(sorted_desc: list[int], most: int) -> list[tuple[int, int]]:
    """Cut lengths sorted longest first into k <= ``most`` contiguous buckets minimising the padded area
    (rows x longest row, summed) plus ``BUCKET_COST`` tokens per extra bucket (its extra kernel launches
    and smaller matmuls). Exact, by dynamic programming over the places where the length drops (rows of
    equal length never need a cut between them): ~m^2 * most / 2 steps for m distinct lengths, 0.5 ms for
    64 and 1.8 ms for 128 in CPython. Returns [(start, end)] row ranges.

    Buckets of equal row counts (before commit 0d67762) could not separate the many rows that reach the
    length limit from the rest: on the benchmark's completions (~55% at the limit) they chose one bucket."""
    n = len(sorted_desc)
    if n == 0:
        return []
    bounds = [0] + [i for i in range(1, n) if sorted_desc[i] < sorted_desc[i - 1]] + [n]
    m = len(bounds) - 1  # groups of equal length; a bucket is a run of consecutive groups
    inf = float("inf")
    # area[j]: least padded area of groups [0, j) in k buckets; k = 1: one bucket padded to the longest row
    area = [float(bounds[j] * sorted_desc[0]) for j in range(m + 1)]
    backs, best_k, best_cost = [[0] * (m + 1)], 1, area[m]
    for k in range(2, min(max(most, 1), m) + 1):
        new, back = [inf] * (m + 1), [0] * (m + 1)
        for j in range(k, m + 1):
            for i in range(k - 1, j):
                c = area[i] + (bounds[j] - bounds[i]) * sorted_desc[bounds[i]]
                if c < new[j]:
                    new[j], back[j] = c, i
        area = new
        backs.append(back)
        if area[m] + BUCKET_COST * (k - 1) < best_cost:
            best_k, best_cost = k, area[m] + BUCKET_COST * (k - 1)
    ranges, j = [], m
    for k in range(best_k, 0, -1):
        i = backs[k - 1][j]
        ranges.append((bounds[i], bounds[j]))
        j = i
    return ranges[::-1]


@torch.no_grad()
def sample(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_samples: int, max_new_tokens: int,
           temperature: float = 1.0, top_p: float = 1.0, stop_ids: list[int] = (), pad_id: int = 0,
           greedy: bool = False, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``num_samples`` completions per prompt with a KV cache, computing only unfinished rows.

    Each distinct prompt is prefilled once and its cache copied to its G rows. At every step the
    next token is drawn from softmax(logits / temperature), after top-p truncation as transformers'
    ``TopPLogitsWarper`` does it, by the exponential race ``argmax(p / E)``, E ~ Exp(1) per row and
    token (the draw ``torch.multinomial`` makes for one sample; ``greedy``: argmax of the logits
    instead); a row stops after a token in ``stop_ids``; the cache drops its finished rows each time a
    quarter of the rows it holds are done. Randomness comes from torch's global generator: the noise of as
    many steps as fit in 4M floats (16 MB; at least one step, whatever its size) is drawn at once as
    E = -log U, U ~ ``torch.rand`` (6x cheaper than ``exponential_`` on CPU: 1.0 vs 6.0 ms for 64 steps x 64 rows x 105
    tokens), so the samples follow ``generate``'s distribution but not its random stream.

    The decode loop (:func:`_sample_loop`) runs compiled by TorchScript, which executes it without Python's
    per-operator cost and without holding the GIL. On CPU, a call whose decode steps are small (fewer than
    ``LANE_FLOPS`` matmul FLOPs: B * G rows x :func:`_matmul_flops`) and whose noise for every step fits in
    the 4M floats is split into lanes, one per intra-op thread (at least 8 rows each), run side by side on
    threads of one intra-op thread each: small decode steps leave a second core mostly idle (operators under
    32K elements run on one thread). The noise is drawn once for all rows before the split, so lanes change
    no token (up to float rounding of matmuls on fewer rows). While the lanes run (one laned call at a time per
    process), ``torch.set_num_threads(1)`` is in effect, restored on return: torch keeps one process-wide count
    that seeds each thread's own at its first torch operation, so a thread whose first torch operation falls in
    that window keeps one intra-op thread (and samples without lanes); threads that already ran torch keep theirs.

    Args:
        prompt_ids, prompt_mask: [B, P] left-padded distinct prompts.
        num_samples: G rows per prompt (prompt-major: rows i*G .. i*G+G-1 are prompt i's).
        max_new_tokens: completion limit in tokens.
        temperature: > 0; logits are divided by it.
        top_p: nucleus mass in (0, 1]; 1 = full sampling.
        stop_ids: token ids that end a row (kept in the output, like EOS).
        pad_id: written after a row's stop token.
        greedy: argmax decoding (for tests against ``generate(do_sample=False)``).
        dtype: compute dtype (None = the weights'; ``torch.bfloat16`` on float32 weights = bf16 mixed
            precision: the weights cast once per call, the projections and MLP in bf16; on CPU the KV
            cache and the decode step's attention stay float32, faster there than bf16 batched matmuls
            on the cache's strided slices, and a call whose decode steps do fewer than
            ``BF16_DECODE_FLOPS`` matmul FLOPs (B * G rows x :func:`_matmul_flops`) runs wholly in float32).
    Raises:
        ValueError: a model :func:`unsupported` names a reason for, a ``dtype`` :class:`_Weights` refuses, prompts
            that are not two integer (mask: or bool) [B, P] tensors of one shape with B, P >= 1, a mask row that is
            not left padding (0s, then one or more 1s to the end; values 0 / 1), a prompt token id outside the
            model's vocabulary, ``num_samples`` not an int >= 1, ``max_new_tokens`` not an int >= 0,
            ``temperature`` not finite and > 0, or ``top_p`` outside (0, 1].
    Returns:
        completion_ids [B*G, l] (``pad_id`` after a row's stop token; l <= max_new_tokens is the longest
        completion) and sampler_logp [B*G, l], log p(token) under softmax(logits / temperature) before
        top-p, 0 after the stop token.
    """
    reason = unsupported(model)
    if reason:
        raise ValueError(f"lean sampler: {reason}")
    if prompt_ids.dim() != 2 or prompt_ids.shape != prompt_mask.shape or min(prompt_ids.shape) < 1:
        raise ValueError(f"lean sampler: prompt_ids {tuple(prompt_ids.shape)}, prompt_mask {tuple(prompt_mask.shape)}; "
                         "expected two [B, P] tensors of the same shape, B, P >= 1")
    if prompt_ids.is_floating_point() or prompt_mask.is_floating_point():
        raise ValueError(f"lean sampler: prompt_ids {prompt_ids.dtype}, prompt_mask {prompt_mask.dtype}; expected integer "
                         "token ids and an integer or bool 0/1 mask")
    m = prompt_mask.bool()
    left = m.any(-1) & ~(m[:, :-1] & ~m[:, 1:]).any(-1)  # [B]: some 1s, and no 0 after a 1
    bad = ~left | ((prompt_mask != 0) & (prompt_mask != 1)).any(-1)  # [B]
    if bad.any():
        i = int(bad.nonzero()[0])
        row = prompt_mask[i].tolist()
        vals = [str(v) for v in row]
        shown = "[" + ", ".join(vals if len(vals) <= 12 else vals[:6] + ["..."] + vals[-5:]) + "]"
        raise ValueError(f"lean sampler: prompt_mask row {i} is {shown}; expected left padding: 0s, then one or more "
                         "1s to the end")
    vocab = model.get_input_embeddings().weight.shape[0]
    outside = m & ((prompt_ids < 0) | (prompt_ids >= vocab))
    if outside.any():
        i, j = (int(x) for x in outside.nonzero()[0])
        raise ValueError(f"lean sampler: token id {int(prompt_ids[i, j])} at prompt row {i}, position {j}; "
                         f"expected ids in [0, {vocab}) (the model's vocabulary)")
    whole = [hasattr(type(v), "__index__") and not isinstance(v, bool) for v in (num_samples, max_new_tokens)]  # numpy ints too
    if not all(whole) or num_samples < 1 or max_new_tokens < 0:
        raise ValueError(f"lean sampler: num_samples={num_samples!r}, max_new_tokens={max_new_tokens!r}; expected ints, "
                         "num_samples >= 1 and max_new_tokens >= 0")
    if not 0 < temperature < math.inf or not 0 < top_p <= 1:
        raise ValueError(f"lean sampler: temperature={temperature}, top_p={top_p}; expected a finite temperature > 0 "
                         "(greedy=True for argmax decoding) and 0 < top_p <= 1")
    B, P = prompt_ids.shape
    dev = prompt_ids.device
    G, L = num_samples, max_new_tokens
    N = B * G
    wdtype = model.get_input_embeddings().weight.dtype
    flops = _matmul_flops(model)
    if dtype == torch.bfloat16 and wdtype == torch.float32 and dev.type == "cpu" and N * flops < BF16_DECODE_FLOPS:
        dtype = None  # bf16 mixed precision, few small matmuls: float32 is faster on CPU (BF16_DECODE_FLOPS)
    w = _Weights(model, dtype)
    # float32 on CPU: the decode step multiplies by transposed copies of the matrices (up to 64 MB of them)
    transposed = dev.type == "cpu" and w.cd == torch.float32 and flops * 2 <= TRANSPOSED_BYTES
    last, kv, p_pos = _prompt_pass(w, prompt_ids, prompt_mask)
    expand = torch.arange(B, device=dev).repeat_interleave(G)
    # mixed precision on CPU: the cache and the decode step's attention stay float32 (bf16 batched matmuls
    # on the cache's strided slices copy them to contiguous bf16 at every step: slower than float32 here)
    cache_dtype = torch.float32 if w.mixed and dev.type == "cpu" else kv[0][0].dtype
    # cos/sin of every position a row can reach, computed once (the rotary module's values, looked up per step)
    positions = torch.arange(int(p_pos.max()) + L + 1, device=dev).unsqueeze(0)
    rot_table = torch.stack(w.rope(last.new_zeros(1, 1, 1), positions), 0)[:, 0, 0]  # [2, positions, hd]
    logits = w.head(last)  # [B, V]
    V = logits.shape[-1]
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=dev)
    mats = w.decode_weights(transposed)
    loop = _compiled(_sample_loop)
    threads = torch.get_num_threads()
    lanes = 1
    if (dev.type == "cpu" and loop is not _sample_loop and N * flops < LANE_FLOPS and L * N * V <= 1 << 22):
        lanes = max(1, min(threads, N // 8))
    noise = None
    if lanes > 1 and not greedy:  # the loop's own first draw, made here for every row (lanes ration it)
        noise = torch.rand(L, N, V, device=dev).log_().neg_()
    bounds = [N * j // lanes for j in range(lanes + 1)]

    def lane(j: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = bounds[j], bounds[j + 1]
        src = expand[lo:hi]  # each row's prompt
        cache = []
        for k, v in kv:
            kc = k.new_zeros(hi - lo, w.KH, P + L, w.hd, dtype=cache_dtype)
            vc = v.new_zeros(hi - lo, w.KH, P + L, w.hd, dtype=cache_dtype)
            kc[:, :, :P], vc[:, :, :P] = k.index_select(0, src), v.index_select(0, src)
            cache.append((kc, vc))
        keymask = torch.zeros(hi - lo, 1, 1, P + L, dtype=torch.bool, device=dev)
        keymask[:, 0, 0, :P] = prompt_mask.bool()[src]
        keybias = w.bias(keymask, cache_dtype)  # [n, KH, 1, P + L] additive: 0 = attend, -inf = not (yet)
        return loop(mats, logits.index_select(0, src), [c[0] for c in cache], [c[1] for c in cache], keybias,
                    p_pos[src, -1:] + 1, rot_table, None if noise is None else noise[:, lo:hi], stops, P, L,
                    float(temperature), float(top_p), greedy, pad_id, w.H, w.KH, w.hd, float(w.q_scale), w._eps,
                    w.qk_eps, w.cd, transposed, cache_dtype != torch.float32)

    if lanes == 1:
        out, out_logp = lane(0)
        return out, out_logp

    def on_one_thread(j: int):
        torch.set_num_threads(1)
        with torch.no_grad():  # grad mode is per thread
            return lane(j)

    with _LANES:
        torch.set_num_threads(1)
        futures = []
        try:
            futures = [_lane_pool(lanes - 1).submit(on_one_thread, j) for j in range(1, lanes)]
            parts = [lane(0)] + [f.result() for f in futures]
        finally:
            concurrent.futures.wait(futures)  # no lane outlives the call, even when one failed
            torch.set_num_threads(threads)
    steps = max(p[0].shape[1] for p in parts)
    out = torch.cat([F.pad(o, (0, steps - o.shape[1]), value=pad_id) for o, _ in parts])
    out_logp = torch.cat([F.pad(lp, (0, steps - lp.shape[1])) for _, lp in parts])
    return out, out_logp


_POOL: list = [None, 0, 0]  # the lanes' worker threads: [executor, its size, the process id that made it]
_LANES = threading.Lock()  # one laned sampling call at a time (it sets the process's thread count)


def _lane_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool of at least ``workers`` threads, kept for the process (starting threads on every sampling
    call cost ~2 ms on 2 busy cores); made anew after a fork, whose child has none of the parent's threads."""
    pool, size, pid = _POOL
    if pool is None or size < workers or pid != os.getpid():
        if pool is not None and pid == os.getpid():
            pool.shutdown(wait=False)  # too small: its idle threads exit
        _POOL[:] = [concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="r1-lane"), workers, os.getpid()]
    return _POOL[0]


_COMPILED: dict = {}


def _compiled(fn):
    """``fn`` compiled by TorchScript (once per process: ~0.03 s to compile, ~0.1-0.3 s more at the first calls,
    which TorchScript profiles and optimises), or ``fn`` itself where TorchScript is missing or
    fails to compile it (the same code then runs eagerly: same values, each operator paid from Python)."""
    if fn not in _COMPILED:
        try:
            with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.compile, which
                # compiles a decode loop for minutes on CPU and holds the GIL in its Python wrapper
                warnings.simplefilter("ignore")
                _COMPILED[fn] = torch.jit.script(fn)
        except Exception as e:  # noqa: BLE001 (any failure to compile leaves the eager function, which is correct)
            warnings.warn(f"lean sampler: TorchScript could not compile {fn.__name__} ({type(e).__name__}); "
                          "running it eagerly (slower)", stacklevel=2)
            _COMPILED[fn] = fn
    return _COMPILED[fn]


def _sample_loop(W: Dict[str, List[torch.Tensor]], logits: torch.Tensor, kcs: List[torch.Tensor],
                 vcs: List[torch.Tensor], keybias: torch.Tensor, pos: torch.Tensor, rot_table: torch.Tensor,
                 noise: Optional[torch.Tensor], stops: torch.Tensor, P: int, L: int, temperature: float, top_p: float,
                 greedy: bool, pad_id: int, H: int, KH: int, hd: int, q_scale: float, eps: torch.Tensor,
                 qk_eps: torch.Tensor, cd: torch.dtype, transposed: bool, round_seen: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The decode loop of :func:`sample` for n rows (TorchScript-compilable): logits [n, V] of the first
    completion token, the per-layer caches [n, KH, P + L, hd] holding the prompts at columns < P, keybias
    [n, KH, 1, P + L] (0 = attend, -inf = not), pos [n, 1] the first completion token's position, rot_table
    [2, positions, hd] (cos, signed sin), noise [L, n, V] Exp(1) drawn by the caller, or None to draw it here
    from the global generator; ``round_seen``: attend to a column count rounded up to 16 (a bf16 cache, whose
    matmuls oneDNN compiles per shape). Returns completion ids and sampler log-probabilities [n, l]."""
    n0, V = logits.shape
    dev = logits.device
    out = torch.full((n0, L), pad_id, dtype=torch.long, device=dev)
    out_logp = torch.zeros(n0, L, device=dev)
    rows = torch.arange(n0, device=dev)  # original row of each live cache row
    live = torch.ones(n0, dtype=torch.bool, device=dev)  # per cache row: not yet stopped
    steps = 0
    ahead = L if noise is not None else max(1, min(L, (1 << 22) // (n0 * V)))  # steps of noise drawn at once (<= 16 MB)
    nz = noise
    for t in range(L):
        logp = torch.log_softmax(logits / temperature if temperature != 1.0 else logits, -1)
        if greedy:
            tok = logits.argmax(-1)
        else:
            probs = logp.exp()
            if top_p < 1.0:
                probs = _top_p(probs, top_p)
            if noise is None and t % ahead == 0:  # noise for the next steps, for every original row, kept for live ones
                nz = torch.rand(min(ahead, L - t), n0, V, device=dev).log_().neg_()  # U = 0: E = inf, never drawn
                if rows.shape[0] < n0:
                    nz = nz.index_select(1, rows)
            assert nz is not None
            # argmax(p / E), E ~ Exp(1): a draw from p (the exponential race torch.multinomial runs for one sample)
            tok = (probs / nz[t % ahead]).argmax(-1)
        tok = torch.where(live, tok, torch.full_like(tok, pad_id))
        out.select(1, t).index_copy_(0, rows, tok)
        out_logp.select(1, t).index_copy_(0, rows, torch.where(live, logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1), 0.0))
        steps = t + 1
        live = live & ~torch.isin(tok, stops)
        n_live = int(live.sum().item())
        if n_live == 0 or t == L - 1:
            break
        if n_live <= 0.75 * rows.shape[0]:  # compact the cache: finished rows are not computed again
            keep = live.nonzero().squeeze(-1)
            rows, tok, pos, live = rows[keep], tok[keep], pos[keep], live[keep]
            keybias = keybias.index_select(0, keep)  # index_select: ~2.5x faster than kc[keep] on CPU
            if nz is not None:
                nz = nz.index_select(1, keep)
            kcs = [kc.index_select(0, keep) for kc in kcs]
            vcs = [vc.index_select(0, keep) for vc in vcs]
        keybias.select(3, P + t).fill_(0.0)
        seen = P + t + 1  # cache columns attended; rounded up to 16 (masked beyond P + t) for a bf16 cache
        if round_seen:
            seen = min(P + L, (seen + 15) // 16 * 16)
        rot = rot_table.index_select(1, pos.view(-1))  # [2, n, hd]
        logits = _decode_step(W, tok, rot, kcs, vcs, keybias[:, :, :, :seen], P + t, H, KH, hd, q_scale, eps, qk_eps,
                              cd, transposed)
        pos = pos + 1
    return out[:, :steps], out_logp[:, :steps]


def _decode_step(W: Dict[str, List[torch.Tensor]], tok: torch.Tensor, rot: torch.Tensor, kcs: List[torch.Tensor],
                 vcs: List[torch.Tensor], keybias: torch.Tensor, at: int, H: int, KH: int, hd: int, q_scale: float,
                 eps: torch.Tensor, qk_eps: torch.Tensor, cd: torch.dtype, transposed: bool) -> torch.Tensor:
    """One token per row (TorchScript-compilable): tok [n], rot [2, n, hd] (its position's cos, signed sin);
    writes keys/values at cache column ``at`` and attends to the first ``keybias.shape[-1]`` (> ``at``)
    columns by the additive ``keybias`` [n, KH, 1, T] (0 = attend, -inf = not); returns float32 logits [n, V].

    ``W``: :meth:`_Weights.decode_weights`. :meth:`_Weights.qkv`, :meth:`_Weights.attend` and :meth:`_Weights.rest`
    for one query per row, on [n, D] rows and the cache viewed as [n * KH, C, hd], without their query-length
    reshapes. ``transposed`` (float32 weights only): the matrices are [in, out] copies made once per sampling call
    (:meth:`_Weights.transposed`), multiplied by ``mm`` / ``addmm`` (2 CPU cores, 64 rows: sampling ~4% faster at
    1M parameters, ~2% at 10M; not for bf16, whose matmuls are faster on the [out, in] weights)."""
    n = tok.shape[0]
    b, T = n * KH, keybias.shape[-1]
    x = F.embedding(tok, W["embed"][0])  # [n, D]
    cos, sin = rot[0].view(n, 1, hd), rot[1].view(n, 1, hd)
    bias = keybias.reshape(b, 1, T)
    qkv_b = W.get("bqkv")
    o_b = W.get("bo")
    qn = W.get("qn")
    kn = W.get("kn")
    for i in range(len(kcs)):
        kc, vc = kcs[i], vcs[i]
        qkv = _proj(_rms(x, W["ln1"][i], eps, cd), W["wqkv"][i], None if qkv_b is None else qkv_b[i], transposed)
        if qn is not None and kn is not None:  # Qwen3: RMSNorm over each head before the rotary embedding
            q = _rms_exact(qkv[:, :H * hd].view(n, H, hd), qn[i], qk_eps)
            k = _rms_exact(qkv[:, H * hd:(H + KH) * hd].view(n, KH, hd), kn[i], qk_eps)
            qk = torch.cat([q.to(cd), k.to(cd)], 1)
        else:
            qk = qkv[:, :(H + KH) * hd].view(n, H + KH, hd)
        # by halves, as _QKVRope (no roll); in the decode step no faster than roll (benchmarks/lean_ab.py), the same tokens
        qk = _rotate(qk, cos, sin[:, :, hd // 2:], torch.empty_like(qk), 1.0)  # [n, H + KH, hd]
        C = kc.shape[2]
        kc.select(2, at).copy_(qk[:, H:])
        vc.select(2, at).copy_(qkv[:, (H + KH) * hd:].view(n, KH, hd))
        q = qk[:, :H].to(kc.dtype).reshape(b, H // KH, hd)
        scores = torch.baddbmm(bias, q, kc.view(b, C, hd)[:, :T].transpose(1, 2), alpha=q_scale)  # [b, rep, T]
        probs = torch.softmax(scores.float(), -1).to(q.dtype)
        o = torch.bmm(probs, vc.view(b, C, hd)[:, :T]).view(n, H * hd)
        x = _rest(x, o, W["wo"][i], None if o_b is None else o_b[i], W["ln2"][i], W["wgu"][i], W["wd"][i], eps, cd,
                  transposed)
    head_b = W.get("head_b")
    return _proj(_rms(x, W["norm"][0], eps, cd), W["head"][0], None if head_b is None else head_b[0], transposed).float()


def _rest(x: torch.Tensor, o: torch.Tensor, wo: torch.Tensor, bo: Optional[torch.Tensor], ln2: torch.Tensor,
          wgu: torch.Tensor, wd: torch.Tensor, eps: torch.Tensor, cd: torch.dtype, transposed: bool) -> torch.Tensor:
    """Output projection, residual, MLP, residual of one layer (TorchScript-compilable; :meth:`_Weights.rest` and
    :func:`_decode_step`): x [..., D] the residual stream, o [..., H * hd] the attention output, the matrices as
    :func:`_proj` takes them. Mixed precision (x's dtype is not ``cd``): the compute-dtype outputs added to the
    float32 residual stream; otherwise each residual add fused into its matmul (``addmm`` on [m, D] rows)."""
    shape = x.shape
    x, gu = _gate_up(x, o, wo, bo, ln2, wgu, eps, cd, transposed)
    g, u = gu.chunk(2, -1)
    p = F.silu(g) * u
    if x.dtype != cd:
        x = x + _proj(p, wd, None, transposed)
    else:
        x = torch.addmm(x, p, wd if transposed else wd.t())
    return x.view(shape)


def _gate_up(x: torch.Tensor, o: torch.Tensor, wo: torch.Tensor, bo: Optional[torch.Tensor], ln2: torch.Tensor,
             wgu: torch.Tensor, eps: torch.Tensor, cd: torch.dtype, transposed: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_rest` up to the MLP's gate / up projection: the residual stream after the attention [m, D] (rows
    flattened) and gate | up [m, 2 * intermediate] in the compute dtype."""
    x, o = x.reshape(-1, x.shape[-1]), o.reshape(-1, o.shape[-1])
    if x.dtype != cd:
        x = x + _proj(o.to(cd), wo, bo, transposed)
    else:
        x = torch.addmm(x, o, wo if transposed else wo.t())
        if bo is not None:
            x = x + bo
    return x, _proj(_rms(x, ln2, eps, cd), wgu, None, transposed)


class _QKVRope(torch.autograd.Function):
    """The fused projection's output split into heads, with the rotary embedding applied to q and k (RoFormer, Su
    et al. 2021, arXiv 2104.09864, eq. 34, in the half-split layout of transformers' ``rotate_half``): qkv
    [n, q, (H + 2 KH) * hd] (contiguous), cos and signed sin [n, 1, q, hd] (:meth:`_Weights.rope`) -> q [n, H, q, hd],
    k, v [n, KH, q, hd], each contiguous (``H``, ``KH``, ``hd``: ints).

    With x = [x1 | x2] split at hd / 2 and c, s the cos and sin of one half (both halves are equal), the forward
    is y = [x1 c - x2 s | x2 c + x1 s] and the backward dx = [dy1 c + dy2 s | dy2 c - dy1 s], each half written in
    place by ``addcmul_`` after one ``x * cos``; the backward writes the gradients of q, k and v into one
    [n, q, (H + 2 KH) * hd] tensor, the layout the projection's backward takes. Autograd on the same arithmetic
    (a transposed view, its split and slice, ``roll``) fills two zero tensors of that size, concatenates, adds
    and copies the sum to contiguous memory, and the forward copies q and k for the attention's batched matmuls:
    float32 forward + backward on 2 CPU cores (Intel Xeon, 12-06; old and new alternating in one process, medians
    of 15) ~4% faster at 8 x 320 (64 rows, 3,050 tokens: 1,231 -> 1,180 and 1,268 -> 1,213 ms) and ~5% at 4 x 128
    (195 -> 186 and 185 -> 175 ms), the forward alone ~2%. Float32 compute only (under bf16 mixed precision it
    was no faster), and not for Qwen3, whose q/k norms come before the rotary (:meth:`_Weights.qkv`). The same
    values as the module arithmetic; gradients equal up to float rounding (tests/test_lean.py)."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, H, KH, hd):
        n, q_len, _ = qkv.shape
        x = qkv.view(n, q_len, H + 2 * KH, hd).transpose(1, 2)  # [n, heads, q, hd], a view
        s = sin[..., hd // 2:]  # the signed sin's second half is sin itself
        out = [_rotate(x[:, lo:hi], cos, s, torch.empty(n, hi - lo, q_len, hd, dtype=qkv.dtype, device=qkv.device), 1.0)
               for lo, hi in ((0, H), (H, H + KH))]
        ctx.save_for_backward(cos, sin)
        ctx.heads = (H, KH, hd)
        return out[0], out[1], x[:, H + KH:].contiguous()

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        cos, sin = ctx.saved_tensors
        H, KH, hd = ctx.heads
        given = next(g for g in (grad_q, grad_k, grad_v) if g is not None)
        n, q_len = given.shape[0], given.shape[2]
        s = sin[..., hd // 2:]
        grad = torch.empty(n, q_len, H + 2 * KH, hd, dtype=given.dtype, device=given.device)
        heads = grad.transpose(1, 2)  # [n, heads, q, hd] view of the [n, q, heads, hd] gradient
        for lo, hi, dy in ((0, H, grad_q), (H, H + KH, grad_k)):
            gi = heads[:, lo:hi]
            if dy is None:
                gi.zero_()
            else:
                _rotate(dy, cos, s, gi, -1.0)  # the rotation's transpose
        if grad_v is None:
            heads[:, H + KH:].zero_()
        else:
            heads[:, H + KH:].copy_(grad_v)
        return grad.view(n, q_len, -1), None, None, None, None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, s: torch.Tensor, out: torch.Tensor, sign: float) -> torch.Tensor:
    """The rotary embedding by halves, written into ``out`` (x's shape) and returned (TorchScript-compilable): with
    x = [x1 | x2] split at the last dimension's middle, cos [..., hd] (both halves equal) and s [..., hd / 2] the sin
    of one half, broadcast against x: ``sign`` 1 gives [x1 c - x2 s | x2 c + x1 s] = x cos + rotate_half(x) sin
    (RoFormer, arXiv 2104.09864, eq. 34, transformers' half-split layout), ``sign`` -1 its transpose
    [x1 c + x2 s | x2 c - x1 s] (the backward). One ``x * cos`` and one ``addcmul_`` per half: no ``torch.roll``,
    which is two slices and a concatenation on CPU."""
    half = x.shape[-1] // 2
    torch.mul(x, cos, out=out)
    out[..., :half].addcmul_(x[..., half:], s, value=-sign)
    out[..., half:].addcmul_(x[..., :half], s, value=sign)
    return out


class _SwiGLUDown(torch.autograd.Function):
    """x + (silu(g) * u) @ wd^T for x [m, D] (the residual stream), gu = [g | u] [m, 2I], wd [D, I], all of one
    dtype: the MLP's second half, saving only gu for the backward (SwiGLU, Shazeer 2020, arXiv 2002.05202, eq. 6).
    Autograd on the same operations also keeps silu(g) and silu(g) * u, [m, I] each: half of the MLP's saved
    values, a quarter of a layer's (8 x 320 in float32: 753 -> 567 MB saved for the benchmark's 64 rows). The
    backward recomputes them (two passes over [m, I]) and writes the gradients of g and u into one [m, 2I] tensor
    (no concatenation): as fast as autograd's backward in float32 on 2 CPU cores (7.4 vs 7.5 ms at m = 3,400,
    4 x 128), ~10% slower in bf16, where the recomputation costs more than the concatenation, so the lean forward
    uses it in float32 compute only (bf16 mixed precision and bf16 models keep autograd's). Gradients equal
    autograd's up to float rounding (tests/test_lean.py)."""

    @staticmethod
    def forward(ctx, x, gu, wd):
        g, u = gu.chunk(2, -1)
        ctx.save_for_backward(gu, wd)
        return torch.addmm(x, F.silu(g).mul_(u), wd.t())

    @staticmethod
    def backward(ctx, grad):
        gu, wd = ctx.saved_tensors
        inter = gu.shape[-1] // 2
        g, u = gu.chunk(2, -1)
        s = F.silu(g)
        grad_wd = grad.t().mm(s * u) if ctx.needs_input_grad[2] else None
        grad_gu = None
        if ctx.needs_input_grad[1]:
            grad_p = grad.mm(wd)  # [m, I]
            grad_gu = torch.empty_like(gu)
            torch.mul(grad_p, s, out=grad_gu[:, inter:])  # d/du
            torch.ops.aten.silu_backward.grad_input(grad_p.mul_(u), g, grad_input=grad_gu[:, :inter])  # d/dg
        return grad, grad_gu, grad_wd


def _proj(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], transposed: bool) -> torch.Tensor:
    """x [n, in] @ w (+ bias [out]): w is [in, out] when ``transposed``, else [out, in] (``F.linear``)."""
    if not transposed:
        return F.linear(x, w, bias)
    if bias is None:
        return torch.mm(x, w)
    return torch.addmm(bias, x, w)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    """RMSNorm as transformers computes it (in float32, weight applied in the input dtype); ``eps`` a float32
    scalar tensor. A float32 ``x`` (the residual stream of float32 weights and of mixed precision): rsqrt(mean(x^2)
    + eps) from the 2-norm, 3 small kernels on [..., 1] instead of F.rms_norm's pow / mean / add / rsqrt on CPU
    (forward and backward ~25% faster at [4032, 128]), returned in the compute dtype ``cd`` (the next matmul's
    input); any other ``x`` (bf16 weights, where ``cd`` is x's dtype): :func:`_rms_exact`."""
    if x.dtype == torch.float32:
        r = torch.linalg.vector_norm(x, 2.0, [-1], True)
        h = x * torch.addcmul(eps, r, r, value=1.0 / x.shape[-1]).rsqrt_() * w
        return h.to(cd)
    return _rms_exact(x, w, eps)


def _rms_exact(x: torch.Tensor, w: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """RMSNorm in transformers' own operations (its Llama / Qwen RMSNorm modules), ``eps`` a float32 scalar
    tensor (the same float32 sum as the modules' Python float): ``w * normalised.to(x.dtype)``, so in x's dtype
    promoted with w's (float32 for Qwen3's float32 q / k norm weights on a bf16 x)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus truncation as transformers' TopPLogitsWarper: drop the least likely tokens whose
    cumulative probability (ascending) is at most 1 - top_p, keep at least one. [n, V] -> [n, V]."""
    sorted_p, idx = torch.sort(probs, -1)
    drop_sorted = sorted_p.cumsum(-1) <= 1 - top_p
    drop_sorted[:, -1] = False
    drop = drop_sorted.scatter(-1, idx, drop_sorted)
    return probs.masked_fill(drop, 0.0)

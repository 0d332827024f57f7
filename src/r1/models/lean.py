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
  the rows it holds are done, instead of running every row to the longest one;
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

import contextlib

import torch
import torch.nn.functional as F

BF16_DECODE_FLOPS = 2.5e8  # under bf16 mixed precision on CPU the sampler's matmuls run in bf16 only from this many
# FLOPs per decode step (rows x :func:`_matmul_flops`); below it float32 is faster (oneDNN's fixed cost per small
# bf16 matmul). Fitted on 2 cores of an Intel Xeon with AMX (docs/performance.md item 10), decode step float32 vs
# bf16: 1M parameters at 64 rows 1.9 vs 2.1 ms (bf16 pays from ~120 rows), 10M 12.6 vs 8.9 ms (from ~14 rows); a
# compromise between the two: it switches at 156 rows at 1M (1.6 MFLOP per token) and 12 rows at 10M (20.7 MFLOP)
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
        wdtype = self.decoder.embed_tokens.weight.dtype
        if dtype not in (None, wdtype, torch.bfloat16):
            raise ValueError(f"lean forward: compute dtype {dtype} on {wdtype} weights; expected None, "
                             f"{wdtype} or torch.bfloat16 (mixed precision)")
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

    def norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """RMSNorm as transformers computes it (in float32, weight applied in the input dtype), returned
        in the compute dtype (the next matmul's input)."""
        if x.dtype == torch.float32:
            # rsqrt(mean(x^2) + eps) from the 2-norm: 3 small kernels on [..., 1] instead of F.rms_norm's
            # pow / mean / add / rsqrt on CPU; forward and backward ~25% faster at [4032, 128]
            r = torch.linalg.vector_norm(x, 2, -1, True)
            h = x * torch.addcmul(self._eps, r, r, value=1.0 / x.shape[-1]).rsqrt_() * w
            return h.to(self.cd) if self.mixed else h
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

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
        rotary applied to q and k."""
        w = self.layers[i]
        n, q_len, _ = x.shape
        h = self.norm(x, w["ln1"])
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
        precision: the compute-dtype outputs added to the float32 residual stream)."""
        w = self.layers[i]
        if self.mixed:
            x = x + F.linear(attn_out.to(self.cd), w["wo"], w["bo"])
            g, u = F.linear(self.norm(x, w["ln2"]), w["wgu"]).chunk(2, -1)
            return x + F.linear(F.silu(g) * u, w["wd"])
        shape = x.shape
        x = torch.addmm(x.reshape(-1, shape[-1]), attn_out.reshape(-1, attn_out.shape[-1]), w["wo"].t())
        if w["bo"] is not None:
            x = x + w["bo"]
        g, u = F.linear(self.norm(x, w["ln2"]), w["wgu"]).chunk(2, -1)
        return torch.addmm(x, F.silu(g) * u, w["wd"].t()).view(shape)

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
                   buckets: int = 4, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
    Returns:
        logp [N, L] and entropy [N, L] in nats, 0 on completion padding (with grad if the model has it).
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
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = -(logp_all.exp() * logp_all).sum(-1)
        logps.append(F.pad(lp, (0, L - width)))
        ents.append(F.pad(ent, (0, L - width)))
    inverse = torch.argsort(order)
    mask = completion_mask.to(logps[0].dtype)
    # index_select, not x[idx]: its backward (index_add) sums in a fixed order; x[idx]'s (index_put with
    # accumulate) does not on CPU, and bit-identical reruns of a seed need it
    return torch.cat(logps).index_select(0, inverse) * mask, torch.cat(ents).index_select(0, inverse) * mask


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
        ValueError: a model :func:`unsupported` names a reason for, or a ``dtype`` :class:`_Weights` refuses.
    Returns:
        completion_ids [B*G, l] (``pad_id`` after a row's stop token; l <= max_new_tokens is the longest
        completion) and sampler_logp [B*G, l], log p(token) under softmax(logits / temperature) before
        top-p, 0 after the stop token.
    """
    reason = unsupported(model)
    if reason:
        raise ValueError(f"lean sampler: {reason}")
    B, P = prompt_ids.shape
    dev = prompt_ids.device
    G, L = num_samples, max_new_tokens
    wdtype = model.get_input_embeddings().weight.dtype
    if (dtype == torch.bfloat16 and wdtype == torch.float32 and dev.type == "cpu"
            and B * G * _matmul_flops(model) < BF16_DECODE_FLOPS):
        dtype = None  # bf16 mixed precision, few small matmuls: float32 is faster on CPU (BF16_DECODE_FLOPS)
    w = _Weights(model, dtype)
    # float32 on CPU: the decode step multiplies by transposed copies of the matrices (up to 64 MB of them)
    transposed = dev.type == "cpu" and w.cd == torch.float32 and _matmul_flops(model) * 2 <= TRANSPOSED_BYTES
    last, kv, p_pos = _prompt_pass(w, prompt_ids, prompt_mask)
    rows = torch.arange(B * G, device=dev)  # original row of each live cache row
    expand = torch.arange(B, device=dev).repeat_interleave(G)
    cache = []
    # mixed precision on CPU: the cache and the decode step's attention stay float32 (bf16 batched matmuls
    # on the cache's strided slices copy them to contiguous bf16 at every step: slower than float32 here)
    cache_dtype = torch.float32 if w.mixed and dev.type == "cpu" else kv[0][0].dtype
    for k, v in kv:
        kc = k.new_zeros(B * G, w.KH, P + L, w.hd, dtype=cache_dtype)
        vc = v.new_zeros(B * G, w.KH, P + L, w.hd, dtype=cache_dtype)
        kc[:, :, :P], vc[:, :, :P] = k.index_select(0, expand), v.index_select(0, expand)
        cache.append((kc, vc))
    keymask = torch.zeros(B * G, 1, 1, P + L, dtype=torch.bool, device=dev)
    keymask[:, 0, 0, :P] = prompt_mask.bool()[expand]
    keybias = w.bias(keymask, cache_dtype)  # [n, KH, 1, P + L] additive: 0 = attend, -inf = not (yet)
    # cos/sin of every position a row can reach, computed once (the rotary module's values, looked up per step)
    positions = torch.arange(int(p_pos.max()) + L + 1, device=dev).unsqueeze(0)
    rot_table = torch.stack(w.rope(last.new_zeros(1, 1, 1), positions), 0)[:, 0, 0]  # [2, positions, hd]
    pos = p_pos[expand, -1:] + 1  # [n, 1] position of the next token
    logits = w.head(last)[expand]  # [n, V]
    out = torch.full((B * G, L), pad_id, dtype=torch.long, device=dev)
    out_logp = torch.zeros(B * G, L, device=dev)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=dev)
    live = torch.ones(B * G, dtype=torch.bool, device=dev)  # per cache row: not yet stopped
    steps, noise, V = 0, None, logits.shape[-1]
    ahead = max(1, min(L, (1 << 22) // (B * G * V)))  # steps of exponential noise drawn at once (<= 16 MB)
    for t in range(L):
        logp = torch.log_softmax(logits / temperature if temperature != 1.0 else logits, -1)
        if greedy:
            tok = logits.argmax(-1)
        else:
            probs = logp.exp()
            if top_p < 1.0:
                probs = _top_p(probs, top_p)
            if t % ahead == 0:  # Exp(1) noise for the next steps, drawn for every original row, kept for live ones
                noise = torch.rand(min(ahead, L - t), B * G, V, device=dev).log_().neg_()  # U = 0: E = inf, never drawn
                if len(rows) < B * G:
                    noise = noise.index_select(1, rows)
            # argmax(p / E), E ~ Exp(1): a draw from p (the exponential race torch.multinomial runs for one sample)
            tok = (probs / noise[t % ahead]).argmax(-1)
        tok = torch.where(live, tok, torch.full_like(tok, pad_id))
        out[rows, t] = tok
        out_logp[rows, t] = torch.where(live, logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1), 0.0)
        steps = t + 1
        live = live & ~torch.isin(tok, stops)
        n_live = int(live.sum())
        if n_live == 0 or t == L - 1:
            break
        if n_live <= 0.75 * len(rows):  # compact the cache: finished rows are not computed again
            keep = live.nonzero().squeeze(-1)
            rows, tok, pos, live = rows[keep], tok[keep], pos[keep], live[keep]
            keybias = keybias.index_select(0, keep)  # index_select: ~2.5x faster than kc[keep] on CPU
            if noise is not None:
                noise = noise.index_select(1, keep)
            cache = [(kc.index_select(0, keep), vc.index_select(0, keep)) for kc, vc in cache]
        keybias[:, :, 0, P + t] = 0.0
        seen = P + t + 1  # cache columns attended; a bf16 cache: rounded up to 16 (masked beyond P + t) so the
        # attention's matmul shapes repeat (oneDNN builds and keeps a kernel per bf16 shape)
        if cache_dtype != torch.float32:
            seen = min(P + L, -(-seen // 16) * 16)
        logits = _decode_step(w, tok, rot_table[:, pos], cache, keybias[..., :seen], P + t, transposed)
        pos = pos + 1
    return out[:, :steps], out_logp[:, :steps]


def _decode_step(w: _Weights, tok: torch.Tensor, rot: torch.Tensor, cache, keybias, at: int,
                 transposed: bool = False) -> torch.Tensor:
    """One token per row: tok [n], rot [2, n, 1, hd] (its position's cos, signed sin); writes keys/values at
    cache column ``at`` and attends to the first ``keybias.shape[-1]`` (> ``at``) columns by the additive
    ``keybias`` [n, KH, 1, T] (0 = attend, -inf = not); returns float32 logits [n, V].

    :meth:`_Weights.qkv`, :meth:`_Weights.attend` and :meth:`_Weights.rest` for one query per row, on [n, D]
    rows and the cache viewed as [n * KH, C, hd], without their query-length reshapes. ``transposed`` (float32
    weights only, the caller's choice): ``mm`` / ``addmm`` on the matrices transposed once per sampling call
    (:meth:`_Weights.transposed`; 2 CPU cores, 64 rows: sampling ~4% faster at 1M parameters, ~2% at 10M;
    not for bf16, whose matmuls are faster on the [out, in] weights)."""
    n = tok.shape[0]
    H, KH, hd = w.H, w.KH, w.hd
    b, T = n * KH, keybias.shape[-1]
    x = w.decoder.embed_tokens(tok)  # [n, D]
    cos, sin = rot[0].view(n, 1, hd), rot[1].view(n, 1, hd)
    bias = keybias.reshape(b, 1, T)
    tw = w.transposed() if transposed else None
    for i, (kc, vc) in enumerate(cache):
        lw = w.layers[i]
        if tw is None:
            qkv = F.linear(w.norm(x, lw["ln1"]), lw["wqkv"], lw["bqkv"])  # [n, (H + 2 KH) hd]
        else:
            qkv = _mm(w.norm(x, lw["ln1"]), tw[i]["wqkv"], lw["bqkv"])
        if lw["qn"] is not None:  # Qwen3: RMSNorm over each head before the rotary embedding
            q, k = lw["qn"](qkv[:, :H * hd].view(n, H, hd)), lw["kn"](qkv[:, H * hd:(H + KH) * hd].view(n, KH, hd))
            qk = torch.cat([q.to(w.cd), k.to(w.cd)], 1)
        else:
            qk = qkv[:, :(H + KH) * hd].view(n, H + KH, hd)
        qk = torch.addcmul(qk * cos, qk.roll(hd // 2, -1), sin)  # [n, H + KH, hd]
        C = kc.shape[2]
        kc.select(2, at).copy_(qk[:, H:])
        vc.select(2, at).copy_(qkv[:, (H + KH) * hd:].view(n, KH, hd))
        q = qk[:, :H].to(kc.dtype).reshape(b, H // KH, hd)
        scores = torch.baddbmm(bias, q, kc.view(b, C, hd)[:, :T].transpose(1, 2), alpha=w.q_scale)  # [b, rep, T]
        probs = torch.softmax(scores.float(), -1).to(q.dtype)
        o = torch.bmm(probs, vc.view(b, C, hd)[:, :T]).view(n, H * hd)
        if tw is None:
            x = w.rest(i, x, o)
            continue
        t = tw[i]
        x = torch.addmm(x, o, t["wo"])
        if lw["bo"] is not None:
            x = x + lw["bo"]
        g, u = torch.mm(w.norm(x, lw["ln2"]), t["wgu"]).chunk(2, -1)
        x = torch.addmm(x, F.silu(g) * u, t["wd"])
    if tw is None:
        return w.head(x)
    return _mm(w.norm(x, w.decoder.norm.weight), tw[-1]["head"], w.head_b).float()


def _mm(x: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [n, in] @ wt [in, out] (+ bias [out])."""
    return torch.mm(x, wt) if bias is None else torch.addmm(bias, x, wt)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus truncation as transformers' TopPLogitsWarper: drop the least likely tokens whose
    cumulative probability (ascending) is at most 1 - top_p, keep at least one. [n, V] -> [n, V]."""
    sorted_p, idx = torch.sort(probs, -1)
    drop_sorted = sorted_p.cumsum(-1) <= 1 - top_p
    drop_sorted[:, -1] = False
    drop = drop_sorted.scatter(-1, idx, drop_sorted)
    return probs.masked_fill(drop, 0.0)

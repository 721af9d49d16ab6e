"""Visual summary tokens (Video-XL), applied from outside to an unmodified Hugging Face model.

summary.py holds the parameters and their routing hooks, layout.py where summary slots go,
forward.py the passes over a compressed sequence, wiring.py what evaluation and trainers call.

The visual span of a sequence is cut into windows of `window` visual tokens. In a window with
ratio r a summary token is interleaved after every r visual tokens (`x0..x(r-1) S x(r)..`); a
partial group at the end of a window gets one summary too, so a window of n tokens yields
ceil(n / r) summaries. Summary tokens have their own input embedding (initialised from EOS) and,
in every decoder layer, their own q/k/v projections (copies of the layer's); o_proj, MLP and norms
are shared. The q/k/v routing is done by forward hooks on the layer's `q_proj`/`k_proj`/`v_proj`:
inside `routing(is_summary)` a hook recomputes the summary rows with the summary weights. Nothing
is registered inside the Hugging Face model, so its `save_pretrained`/`from_pretrained` are untouched;
the summary parameters live in `SummaryTokens` and are saved beside it as safetensors.

Attention (`masks.visual_summary`): causal, except that a raw visual token is visible only inside
its own window. So every token sees the text before the video and all earlier summaries; text
after the video sees text and summaries, never a raw visual token. Training is one forward with
that mask; inference prefills window by window and drops the raw visual K/V after each window
(`windowed_prefill`), which computes the same numbers because those K/V are invisible to
everything that follows.

Positions (Qwen2.5-VL's 3-D rotary ids, or any family's opaque positions): every token keeps the
position the uncompressed prompt gives it, and a summary takes the position of the visual token it
follows (the last of its group). Why: positions are then a pure function of the layout, so the
windowed path (which slices the one-pass layout) and the one-pass path use the same ones by
construction; Hugging Face caches keys after RoPE, so Video-XL's rule (positions contiguous over
kept tokens, RoPE re-applied to cached keys) would need a cache of pre-RoPE keys and could not be
matched by one masked forward; the text after the video, the visual tokens and ratio 1 keep
exactly today's positions; and a summary carries the time/place of what it summarises. The
price: positions grow with the video's length (as Qwen's temporal ids, tied to seconds, do
anyway), not with the kept tokens.

Ratio 1 means "keep this window uncompressed": no summaries, and its visual tokens stay in the
cache and stay visible (ratio 1 everywhere is exactly today's path). A video shorter than one
window is one partial window.
"""

from .summary import CompressConfig, DEFAULT_RATIOS, PARAMS_FILE, PROJECTIONS, SummaryTokens, check_ratios, num_windows, routing
from .layout import KEPT, Layout, NO_WINDOW, RAW, SUMMARY, interleave, layout_for
from .forward import Prefilled, cache_bytes, continuation_logprobs, masked_hidden_states, packed_logprobs, packed_mask, sample, sp_hidden_states, windowed_prefill
from .wiring import Compressor, TrainingCompression, compressor_for, starting_summary, summary_tokens_for

__all__ = [
    "CompressConfig",
    "Compressor",
    "DEFAULT_RATIOS",
    "KEPT",
    "Layout",
    "NO_WINDOW",
    "PARAMS_FILE",
    "PROJECTIONS",
    "Prefilled",
    "RAW",
    "SUMMARY",
    "SummaryTokens",
    "TrainingCompression",
    "cache_bytes",
    "check_ratios",
    "compressor_for",
    "continuation_logprobs",
    "interleave",
    "layout_for",
    "masked_hidden_states",
    "num_windows",
    "packed_logprobs",
    "packed_mask",
    "routing",
    "sample",
    "sp_hidden_states",
    "starting_summary",
    "summary_tokens_for",
    "windowed_prefill",
]

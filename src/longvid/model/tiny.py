"""The embedded default: tiny Qwen configs (every supported family) and a small byte-level BPE
tokenizer we ship (it holds the Qwen special tokens all the families share).

Everything runs with no download. The tokenizer is trained deterministically from a built-in corpus
(`python -m longvid.synth.corpus --write-tokenizer` rebuilds the shipped file); the model starts from
random weights and is trained by our own commands (`longvid demo`, `longvid sft`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TOKENIZER_DIR = Path(__file__).with_name("tiny_tokenizer")
VOCAB_SIZE = 1024

# Qwen2.5-VL's special tokens, so a tiny checkpoint is laid out like a real one.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Reasoning tags are ordinary added tokens: they must survive decoding for the format reward.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_WORDS = """
the a an of to in on at by for with from is are was were be been it its this that these those which
what when where who why how whose than then there here into onto over under after before during while
video clip frame frames scene scenes screen object objects block blocks box boxes ball square circle
flash flashes flashing appears appear appeared disappears moves moving moved heading towards toward
first second third last final end ending beginning start middle early late earlier later quarter half
red green blue yellow white black grey gray orange purple cyan magenta pink brown colour color colours
top bottom left right corner centre center quadrant upper lower side position place location
question answer answers option options choose choice correct reasoning think because so therefore
goal purpose plot order sequence event events temporal spatial needle haystack hidden under track
Which What When Where How Why The A B C D So Answer Question Options Think Let us look see watch
one two three four five six seven eight nine ten number count times time seconds minutes long short
user assistant system User Assistant
happens happened shows showing shown stays stay rests rest ends up finally does do did not no yes
person people goes go went toward target targets reach reaches reached lands land along across
""".split()


def _corpus() -> list[str]:
    letters = "ABCD"
    lines = [" ".join(_CORPUS_WORDS[i : i + 12]) for i in range(0, len(_CORPUS_WORDS), 12)]
    lines += [f"{w} {w.capitalize()} {w.upper()}" for w in _CORPUS_WORDS]
    lines += [f"({c}) {c}. {c}: {c}) The answer is {c}." for c in letters]
    lines += ["0 1 2 3 4 5 6 7 8 9 10 100 2.5 -3", "? ! , . ; : ' \" ( ) [ ] - _ / \\ * + = < > % # @ & ~ ^ | `"]
    return lines * 4


def build_tokenizer(extra_corpus: list[str] | None = None):
    """Train the byte-level BPE deterministically and wrap it as a Hugging Face tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS) - len(TAG_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() + list(extra_corpus or []), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    hf.add_tokens(TAG_TOKENS)
    hf.chat_template = CHAT_TEMPLATE
    return hf


def load_tokenizer():
    """The shipped tokenizer (falls back to building it, so a broken install still works)."""
    from transformers import AutoTokenizer

    if (TOKENIZER_DIR / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    log.warning("shipped tokenizer missing at %s; building it", TOKENIZER_DIR)
    return build_tokenizer()


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def tiny_config(
    tokenizer,
    *,
    family: str = "qwen2_5_vl",
    hidden_size: int = 128,
    num_layers: int = 4,
    vision_depth: int = 2,
    rope_theta: float = 10000.0,
):
    """A config of a few million parameters of `family` (a `model_type`) whose token ids match `tokenizer`.

    M-RoPE gives the height and width sections the lowest frequencies of the head: with a 32-wide
    head and theta 10^4, one quadrant step turns the width pairs by at most 0.003 rad, so the model
    cannot tell left from right. A small `rope_theta` makes 2x2-token frames' positions visible."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"no tiny config for {family!r}; families: {', '.join(FAMILIES)}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    num_heads = 4
    half_head = hidden_size // num_heads // 2
    temporal = half_head // 4
    spatial = (half_head - temporal) // 2
    mrope = [temporal, spatial, half_head - temporal - spatial]
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    if family == "qwen3_vl":
        # Interleaved M-RoPE over the head dim; DeepStack from every vision block but the last.
        rope = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope, "mrope_interleaved": True}
        text.update(head_dim=hidden_size // num_heads, rope_parameters=rope)
        vision = dict(
            depth=vision_depth, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=hidden_size,
            patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64,
            deepstack_visual_indexes=list(range(vision_depth - 1)),
        )
        config_class = transformers.Qwen3VLConfig
    elif family == "qwen2_vl":
        text.update(rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope})
        vision = dict(
            depth=vision_depth, embed_dim=64, mlp_ratio=2, num_heads=2, hidden_size=hidden_size,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2,
        )
        config_class = transformers.Qwen2VLConfig
    else:
        text.update(rope_scaling={"type": "mrope", "mrope_section": mrope}, rope_theta=rope_theta)
        vision = dict(
            depth=vision_depth, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=hidden_size,
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=56,
            fullatt_block_indexes=[vision_depth - 1], tokens_per_second=2,
        )
        config_class = transformers.Qwen2_5_VLConfig
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_tiny_model(
    tokenizer=None, *, family: str = "qwen2_5_vl", seed: int = 0, dtype: torch.dtype = torch.float32, **sizes
):
    """A freshly initialised tiny model of `family` (deterministic given `seed`)."""
    import transformers

    from . import family_adapter

    tokenizer = tokenizer or load_tokenizer()
    config = tiny_config(tokenizer, family=family, **sizes)
    torch.manual_seed(seed)
    model = getattr(transformers, family_adapter(family).hf_class)(config).to(dtype)
    return model, tokenizer


def build_tiny_adapter(family: str = "qwen2_5_vl", *, seed: int = 0, dtype: torch.dtype = torch.float32, **sizes):
    """The tiny model of `family` behind its adapter."""
    from . import family_adapter

    model, tokenizer = build_tiny_model(family=family, seed=seed, dtype=dtype, **sizes)
    return family_adapter(family)(model, tokenizer)


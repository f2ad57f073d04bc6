"""Sentence offsets in a caption and their token spans in the tokenized caption.

Spans are built once, during preprocessing, so the training step never calls
the tokenizer. A span ``(start, end)`` indexes the padded token sequence that
the text encoder sees: position 0 is the start token, so the first caption
token sits at position 1.
"""

import functools
import re
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch

# A sentence ends at ".", "!" or "?" (optionally followed by closing quotes or
# brackets) when whitespace follows. Issue-grade splitting with abbreviations
# and initials lives in the LISM sentence splitter; this rule is enough to
# find the sentences of hand-written and reference captions.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)")


def split_sentence_offsets(caption: str) -> List[Tuple[int, int]]:
    """Split ``caption`` after ``.``, ``!`` or ``?`` followed by whitespace.

    Returns ``(start, end)`` character offsets of each non-empty sentence,
    without the surrounding whitespace; ``caption[start:end]`` keeps the final
    punctuation.
    """
    offsets = []
    start = 0
    for match in _SENTENCE_END.finditer(caption):
        offsets.append((start, match.end()))
        start = match.end()
    offsets.append((start, len(caption)))

    stripped = []
    for begin, end in offsets:
        piece = caption[begin:end]
        if not piece.strip():
            continue
        begin += len(piece) - len(piece.lstrip())
        end -= len(piece) - len(piece.rstrip())
        stripped.append((begin, end))
    return stripped


@dataclass(frozen=True)
class EncodedCaption:
    """A caption tokenized for a fixed context, with its content ids kept.

    Attributes:
        tokens: ``(context_length,)`` int64 ids, start and end tokens included, zero padded.
        ids: the content ids of the whole caption, before truncation.
    """

    tokens: torch.Tensor
    ids: Tuple[int, ...]


class SpanTokenizer:
    """Encode captions and locate sentence spans with a BPE or WordPiece tokenizer.

    Args:
        encode: text to content token ids, without start and end tokens
            (``open_clip.tokenizer.SimpleTokenizer.encode``).
        sot_id, eot_id: start and end token ids (``[CLS]`` and ``[SEP]`` for BERT).
        context_length: the text encoder's number of positions (248 after stretching).
        pad_id: the id that fills positions after the end token.
    """

    def __init__(self, encode: Callable[[str], List[int]], sot_id: int, eot_id: int, context_length: int, pad_id: int = 0):
        self.encode = encode
        self.sot_id = sot_id
        self.eot_id = eot_id
        self.context_length = context_length
        self.pad_id = pad_id

    @classmethod
    def from_open_clip(cls, model_name: str, context_length: int) -> "SpanTokenizer":
        import open_clip

        tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
        inner = getattr(tokenizer, "encode", None)
        if inner is None or not hasattr(tokenizer, "sot_token_id"):
            raise ValueError(
                f"open_clip model {model_name!r} uses {type(tokenizer).__name__}, which has no "
                "byte-pair encode(); lavis_goal builds sentence spans with the CLIP BPE tokenizer "
                "(open_clip.tokenizer.SimpleTokenizer). Choose a model with the CLIP text tower."
            )
        return cls(inner, tokenizer.sot_token_id, tokenizer.eot_token_id, context_length)

    @classmethod
    def from_bert(cls, tokenizer, context_length: int) -> "SpanTokenizer":
        """Wrap a ``transformers`` BERT tokenizer, as BLIP-2's Q-Former uses.

        WordPiece splits text at whitespace and punctuation before it splits
        words, so sentences cut at whitespace tokenize to exactly the ids of
        the whole caption. Padding and truncation match the tokenizer's own
        ``padding="max_length", truncation=True``.
        """
        encode = functools.partial(_wordpiece_ids, tokenizer)
        return cls(encode, tokenizer.cls_token_id, tokenizer.sep_token_id, context_length, pad_id=tokenizer.pad_token_id)

    @property
    def max_content_tokens(self) -> int:
        return self.context_length - 2

    def pad(self, ids: Sequence[int]) -> torch.Tensor:
        """Return ``(context_length,)`` tokens: start, ids, end, ``pad_id``; truncated like open_clip.

        open_clip keeps the first ``context_length`` tokens and writes the end
        token into the last position, so at most ``context_length - 2`` content
        tokens survive.
        """
        tokens = [self.sot_id, *ids, self.eot_id]
        if len(tokens) > self.context_length:
            tokens = tokens[: self.context_length]
            tokens[-1] = self.eot_id
        out = torch.full((self.context_length,), self.pad_id, dtype=torch.long)
        out[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return out

    def encode_caption(self, caption: str) -> EncodedCaption:
        ids = tuple(self.encode(caption))
        return EncodedCaption(tokens=self.pad(ids), ids=ids)

    def sentence_span(self, caption: EncodedCaption, text: str, start: int, end: int) -> Tuple[int, int, str]:
        """Locate ``text[start:end]`` in the tokenized caption.

        Returns ``(span_start, span_end, status)`` in padded token positions.
        ``status`` is ``"ok"``; ``"truncated"`` when the sentence does not fit
        entirely inside the context; ``"misaligned"`` when the sentence
        boundary cuts a token (then encoding the parts differs from encoding
        the whole caption); ``"empty"`` when the sentence has no tokens.
        Only ``"ok"`` spans are valid for pooling.
        """
        prefix_ids = self.encode(text[:start])
        sentence_ids = self.encode(text[start:end])
        head = len(prefix_ids)
        tail = head + len(sentence_ids)

        if not sentence_ids:
            return 0, 0, "empty"
        if tuple(prefix_ids) + tuple(sentence_ids) != caption.ids[:tail]:
            return 0, 0, "misaligned"
        if tail > self.max_content_tokens:
            return 0, 0, "truncated"
        # +1 for the start token at position 0.
        return head + 1, tail + 1, "ok"


def _wordpiece_ids(tokenizer, text: str) -> List[int]:
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


def spans_to_token_mask(spans: torch.Tensor, valid: torch.Tensor, length: int) -> torch.Tensor:
    """Turn ``(..., 2)`` token spans into a ``(..., length)`` bool mask; invalid spans give no tokens."""
    positions = torch.arange(length, device=spans.device)
    mask = (positions >= spans[..., 0:1]) & (positions < spans[..., 1:2])
    return mask & valid[..., None]

"""A small, real CLIP tokenizer built offline, for the tiny CLIP configuration.

The real CLIP ViT-L/14 tokenizer (49,408 tokens) ships as ``vocab.json`` and
``merges.txt`` beside the weights; tests and the demo have no such files.  This module
builds a genuine :class:`transformers.CLIPTokenizer` (byte-level BPE, ``</w>``
end-of-word suffix, ``<|startoftext|>``/``<|endoftext|>``, padding with
``<|endoftext|>``, 77 positions) whose vocabulary is

* the 256 byte symbols and their 256 end-of-word forms (so *any* text tokenises, word
  pieces falling back to single characters),
* the merges learned by a small deterministic BPE over a word list that covers the
  mini-NSD captions and common COCO caption words,
* the two special tokens last, so that ``<|endoftext|>`` has the largest id, as in CLIP
  (the text tower's legacy pooling takes the ``argmax`` of the ids).

Same word list → same vocabulary and merges, byte for byte.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from functools import lru_cache
from typing import Iterable

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
EOW = "</w>"
MAX_LENGTH = 77

#: Frequent words of COCO-style captions, beyond the mini-NSD vocabulary.
COMMON_WORDS = (
    "a an the of on in at with and to from by for near next behind under over top two three some several many "
    "is are while its his her their this that there it one man woman men women person people child children "
    "boy girl group player table street road car bus truck train plane airplane boat bike bicycle horse dog cat "
    "bird cow sheep elephant giraffe zebra bear food pizza plate bowl sandwich cake banana apple room kitchen "
    "bathroom bed couch chair window door building house city field water beach ocean snow sky tree trees grass "
    "white black red blue green yellow brown orange large small big little old young tall standing sitting "
    "walking riding holding playing eating looking parked flying laying lying view picture photo image close "
    "up down front side background sign clock computer phone tennis ball frisbee kite skateboard surfboard"
).split()


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes 0..255 used by byte-level BPE (GPT-2/CLIP convention).

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves;
    the other 68 bytes, in increasing order, take the code points 256, 257, ...

    Returns
    -------
    list of str, length 256, indexed by byte value
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) \
        | set(range(ord("®"), ord("ÿ") + 1))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def caption_words(texts: Iterable[str]) -> list[str]:
    """Lower-case letter runs of ``texts`` (how CLIP's pre-tokenizer splits words), in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for w in re.findall(r"[^\W\d_]+", str(text).lower()):
            seen.setdefault(w, None)
    return list(seen)


#: Words of the mini-NSD captions (descriptions, tints, rotations, modifiers), in first-seen order.
#: A fixed list so that models never import the data generator; tests/test_mininsd.py checks that
#: every caption mini-NSD writes uses only these words.
CAPTION_WORDS: tuple[str, ...] = tuple("""
    an astronaut in a white spacesuit smiling front of flag woman posing for portrait person space suit
    cup coffee on saucer table mug black tabby cat looking at the camera lying blanket striped rocket
    launch pad standing under blue sky tower man with tripod photographer field cameraman old coins dark
    background collection metal rows cratered surface moon close view lunar craters distant galaxies
    deep image full stars and back human eye blood vessels photograph retina red fundus wall clock
    photographed motion blur round face brick grey bricks mortar patch grass green blades lawn seen from
    above gravel small stones ground path printed text angle letters page slanted sign words scanned
    book lines writing motorcycle parked garage motorbike indoors stained tissue sample microscope cells
    brown slide tinted yellow purple turned sideways upside down its side mirrored up dim light brightly
    lit
""".split())


def mini_nsd_words() -> list[str]:
    """:data:`CAPTION_WORDS` plus :data:`COMMON_WORDS` (the tiny tokenizer's whole-word vocabulary)."""
    return caption_words(list(CAPTION_WORDS) + list(COMMON_WORDS))


def _word_symbols(word: str) -> tuple[str, ...]:
    table = byte_symbols()
    chars = [table[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + EOW,)


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(words: Iterable[str], max_merges: int = 4000) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is one symbol (or ``max_merges`` is reached).

    Each step merges the most frequent adjacent pair over the distinct words (ties broken by
    the lexicographically smallest pair), so the result is deterministic.

    Parameters
    ----------
    words : iterable of str
        Distinct words (letters only; duplicates are ignored).
    max_merges : int

    Returns
    -------
    list of (str, str)
        Merges in rank order.
    """
    seqs = [_word_symbols(w) for w in dict.fromkeys(w for w in words if w)]
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        counts: Counter = Counter()
        for s in seqs:
            counts.update(zip(s[:-1], s[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        seqs = [_merge_pair(s, best) if len(s) > 1 else s for s in seqs]
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token → id: 256 bytes, 256 end-of-word bytes, merge results in rank order, then BOS and EOS."""
    symbols = byte_symbols()
    tokens = symbols + [s + EOW for s in symbols] + [a + b for a, b in merges]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return vocab


@lru_cache(maxsize=1)
def _default_merges() -> tuple[tuple[str, str], ...]:
    return tuple(learn_merges(mini_nsd_words()))


def tiny_clip_tokenizer(words: Iterable[str] | None = None):
    """A real :class:`transformers.CLIPTokenizer` with a small byte-level BPE vocabulary.

    Parameters
    ----------
    words : iterable of str, optional
        Words to learn as whole tokens; default :func:`mini_nsd_words`.

    Returns
    -------
    transformers.CLIPTokenizer
        ``model_max_length`` 77; pads with ``<|endoftext|>``, like CLIP's own tokenizer.
        ``tokenizer.save_pretrained(dir)`` writes ``vocab.json``/``merges.txt``/``tokenizer.json``.
    """
    from transformers import CLIPTokenizer

    merges = list(_default_merges() if words is None else learn_merges(caption_words(words)))
    vocab = build_vocab(merges)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
    logger.debug("tiny CLIP tokenizer: %d tokens, %d merges", len(vocab), len(merges))
    return tok

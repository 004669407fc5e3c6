"""A CLIP tokenizer for a closed caption vocabulary: byte-level BPE whose merges spell each known word whole.

Known words become one token each; anything else still tokenizes, byte by byte, so no prompt is ever rejected.
"""

import re

from transformers import CLIPTokenizer

SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins that GPT-2/CLIP byte-level BPE uses for bytes 0..255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def caption_words(captions) -> list[str]:
    """The distinct lower-case words (CLIP's pre-tokenizer splits letters from digits and punctuation)."""
    words = {}
    for caption in captions:
        for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", caption.lower()):
            words[word] = None
    return list(words)


def build_tokenizer(words, *, max_length: int = 16) -> CLIPTokenizer:
    """A CLIPTokenizer whose merges build every word in ``words`` left to right into one token."""
    symbols = byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges, seen = [], set()
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pieces[0] + pieces[1]
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
                vocab_list.append(merged)
            pieces = [merged] + pieces[2:]
    vocab_list += SPECIAL_TOKENS
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)

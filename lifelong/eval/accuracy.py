"""TempLAMA-style accuracy of the target span: greedy exact match and top-k of its first token.

The prompt is the probe's text up to its target span; greedy decoding continues it for as many
tokens as an answer has, and exact match compares the decoded text with the answer, both
normalized as SQuAD's evaluation does (lowercase; punctuation, articles and extra whitespace
dropped), as CKL scores its probes: a tokenizer may merge the span's last word with the
punctuation after it ("Germain."), which the decoded text then carries. A probe's answers are
all of a fact's valid answers where it lists them (`Probe.answers`, as TempLAMA's do), else its
span's text; as in TempLAMA's protocol a probe scores the best over its answers. A
left-to-right LM completes a prefix only: text after the span is not seen, and a probe with
nothing before its span (an object-first query such as TempLAMA's "_X_ is the head coach of
...") is left out of both shares -- decoding from the end-of-text token alone would score an
unconditioned guess. The TempLAMA loader warns with their count.

Probes are decoded in batches of one target length. Prompts are left-padded and masked:
generate() derives position ids from the attention mask (cumsum - 1, GPT-2 and Llama alike), so
each row sees the tokens and positions it would see alone.
"""

from __future__ import annotations

import re
import string

import torch
from torch import nn
from transformers import GenerationConfig

from lifelong.data.stream import Probe
from lifelong.data.tokens import document_start

BATCH_SIZE = 32
PUNCTUATION = frozenset(string.punctuation)


def normalized(text: str) -> str:
    """SQuAD's answer normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def answers(probe: Probe) -> tuple[str, ...]:
    """What a continuation is matched against: all of a fact's valid answers, else the span's text."""
    return probe.answers or (probe.text[probe.span[0] : probe.span[1]],)


def encode(tokenizer, probe: Probe, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of a probe with `answer` in its span. The text up to the answer is
    tokenized whole and split where the prompt ends (by offsets, as encode_probes finds its span):
    the target's ids are those it has after the prompt. Tokenized alone, a target loses that
    context, e.g. a SentencePiece tokenizer (Llama-2's) starts it with a bare "▁" no text has."""
    prompt_end = len(probe.prompt.rstrip())
    encoded = tokenizer(probe.text[: probe.span[0]] + answer, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    split = next((i for i, (start, _) in enumerate(offsets) if start >= prompt_end), len(ids))
    return [document_start(tokenizer), *ids[:split]], ids[split:]


@torch.no_grad()
def greedy_continuations(model: nn.Module, tokenizer, encoded: list[tuple[list[int], list[int]]],
                         device: torch.device, k: int = 5, batch_size: int = BATCH_SIZE) -> list[tuple[str, bool]]:
    """Per (prompt ids, target ids), in order: (the prompt's greedy continuation of as many tokens
    as the target, decoded; whether the target's first token is among the k most likely first tokens)."""
    was_training = model.training
    model.eval()
    # batches of one target length, so that each row decodes exactly as many steps as alone (and
    # never past a position it would not reach alone), sorted by prompt length for little padding
    by_steps: dict[int, list[int]] = {}
    for i in sorted(range(len(encoded)), key=lambda i: len(encoded[i][0])):
        by_steps.setdefault(len(encoded[i][1]), []).append(i)
    results: list[tuple[str, bool]] = [("", False)] * len(encoded)
    for steps, group in by_steps.items():
        for first in range(0, len(group), batch_size):
            rows = group[first : first + batch_size]
            width = max(len(encoded[i][0]) for i in rows)
            ids = torch.full((len(rows), width), tokenizer.eos_token_id)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(rows):
                prompt_ids = encoded[i][0]
                ids[row, width - len(prompt_ids) :] = torch.tensor(prompt_ids)
                mask[row, width - len(prompt_ids) :] = 1
            # min == max new tokens: EOS is never chosen, so no row stops early
            greedy = GenerationConfig(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, num_beams=1,
                                      output_scores=True, return_dict_in_generate=True, use_cache=True,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            # generate() fills every setting left unset from the model's generation_config, which a
            # checkpoint's generation_config.json sets (repetition_penalty, suppress_tokens, ...):
            # greedy here means greedy, so the model's is neutral during the call
            saved, model.generation_config = model.generation_config, GenerationConfig()
            try:
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=greedy)
            finally:
                model.generation_config = saved
            top = out.scores[0].topk(k).indices.tolist()
            for row, i in enumerate(rows):
                results[i] = (tokenizer.decode(out.sequences[row, width:].tolist()), encoded[i][1][0] in top[row])
    model.train(was_training)
    return results


def span_accuracy(model: nn.Module, tokenizer, probes: list[Probe], device: torch.device,
                  k: int = 5) -> dict[str, float | None]:
    """{"exact_match": share of probes whose greedy continuation is one of their answers, "top_k":
    share with an answer's first token among the k most likely next tokens}, over the probes with
    a prompt; None where there are none."""
    scored = [probe for probe in probes if probe.prompt.strip()]  # something for decoding to continue
    if not scored:
        return {"exact_match": None, "top_k": None}
    pairs = [(i, answer) for i, probe in enumerate(scored) for answer in answers(probe)]
    results = greedy_continuations(model, tokenizer, [encode(tokenizer, scored[i], a) for i, a in pairs], device, k)
    exact, top = [False] * len(scored), [False] * len(scored)
    for (i, answer), (text, hit) in zip(pairs, results, strict=True):
        exact[i] |= normalized(text) == normalized(answer)
        top[i] |= hit
    return {"exact_match": sum(exact) / len(scored), "top_k": sum(top) / len(scored)}

"""TempLAMA-style accuracy of the target span: greedy exact match and top-k of its first token.

The prompt is the probe's text up to its target span (a cloze whose object comes last, as in
TempLAMA's queries); greedy decoding continues it for as many tokens as the target has, and
exact match compares the decoded text with the target, whitespace-stripped.

Probes are decoded in batches of one target length. Prompts are left-padded and masked:
generate() derives position ids from the attention mask (cumsum - 1, GPT-2 and Llama alike), so
each row sees the tokens and positions it would see alone.
"""

from __future__ import annotations

import torch
from torch import nn

from lifelong.data.stream import Probe

BATCH_SIZE = 32


def encode(tokenizer, probe: Probe) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of a probe."""
    start, end = probe.span
    prompt = probe.text[:start].rstrip()
    prompt_ids = [tokenizer.eos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    # the target as the model sees it after the prompt: with its leading space, if any
    target_ids = tokenizer(probe.text[len(prompt):end], add_special_tokens=False)["input_ids"]
    return prompt_ids, target_ids


@torch.no_grad()
def greedy_continuations(model: nn.Module, tokenizer, probes: list[Probe], device: torch.device, k: int = 5,
                         batch_size: int = BATCH_SIZE) -> list[tuple[str, bool]]:
    """Per probe, in order: (its greedy continuation of as many tokens as its target, decoded;
    whether the target's first token is among the k most likely first tokens)."""
    was_training = model.training
    model.eval()
    encoded = [encode(tokenizer, probe) for probe in probes]
    # batches of one target length, so that each row decodes exactly as many steps as alone (and
    # never past a position it would not reach alone), sorted by prompt length for little padding
    by_steps: dict[int, list[int]] = {}
    for i in sorted(range(len(probes)), key=lambda i: len(encoded[i][0])):
        by_steps.setdefault(len(encoded[i][1]), []).append(i)
    results: list[tuple[str, bool]] = [("", False)] * len(probes)
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
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=steps,
                                 min_new_tokens=steps, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, use_cache=True)
            top = out.scores[0].topk(k).indices.tolist()
            for row, i in enumerate(rows):
                results[i] = (tokenizer.decode(out.sequences[row, width:].tolist()), encoded[i][1][0] in top[row])
    model.train(was_training)
    return results


def span_accuracy(model: nn.Module, tokenizer, probes: list[Probe], device: torch.device,
                  k: int = 5) -> dict[str, float | None]:
    """{"exact_match": share of probes whose greedy continuation is the target, "top_k": share
    whose target's first token is among the k most likely next tokens}."""
    if not probes:
        return {"exact_match": None, "top_k": None}
    results = greedy_continuations(model, tokenizer, probes, device, k)
    targets = (probe.text[probe.span[0] : probe.span[1]].strip() for probe in probes)
    exact = sum(text.strip() == target for (text, _), target in zip(results, targets, strict=True))
    return {"exact_match": exact / len(probes), "top_k": sum(hit for _, hit in results) / len(probes)}

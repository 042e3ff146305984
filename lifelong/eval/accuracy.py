"""TempLAMA-style accuracy of the target span: greedy exact match and top-k of its first token.

The prompt is the probe's text up to its target span (a cloze whose object comes last, as in
TempLAMA's queries); greedy decoding continues it for as many tokens as the target has, and
exact match compares the decoded text with the target, whitespace-stripped.
"""

from __future__ import annotations

import torch
from torch import nn

from lifelong.data.stream import Probe


@torch.no_grad()
def span_accuracy(model: nn.Module, tokenizer, probes: list[Probe], device: torch.device,
                  k: int = 5) -> dict[str, float | None]:
    """{"exact_match": share of probes whose greedy continuation is the target, "top_k": share
    whose target's first token is among the k most likely next tokens}."""
    if not probes:
        return {"exact_match": None, "top_k": None}
    was_training = model.training
    model.eval()
    exact = top = 0
    for probe in probes:
        start, end = probe.span
        target = probe.text[start:end]
        prompt_ids = [tokenizer.eos_token_id, *tokenizer(probe.text[:start].rstrip(), add_special_tokens=False)
                      ["input_ids"]]
        # the target as the model sees it after the prompt: with its leading space, if any
        target_ids = tokenizer(probe.text[len(probe.text[:start].rstrip()):end], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(target_ids),
                             min_new_tokens=len(target_ids), do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, use_cache=True)
        top += target_ids[0] in out.scores[0][0].topk(k).indices.tolist()
        generated = out.sequences[0, ids.shape[1] :].tolist()
        exact += tokenizer.decode(generated).strip() == target.strip()
    model.train(was_training)
    return {"exact_match": exact / len(probes), "top_k": top / len(probes)}

"""Greedy exact match and top-k on a model that memorized one fact, by hand; a fact scores its
best answer and object-first probes are left out; batched decoding equals decoding each probe alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lifelong.config import ModelConfig
from lifelong.data.stream import Probe
from lifelong.data.tokens import encode_documents, lm_inputs, pack, train_tokenizer
from lifelong.eval.accuracy import encode, greedy_continuations, normalized, span_accuracy
from lifelong.eval.perplexity import encode_probes
from lifelong.models import build_model
from tests.conftest import make_config


def memorize(model, tokenizer, texts: list[str], steps: int) -> None:
    ids, labels = lm_inputs(pack(tokenizer, texts * 8, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


MESSI = "Lionel Messi plays for Paris Saint-Germain."


@pytest.fixture(scope="module")
def messi_model():
    """A tiny model that memorized MESSI, and its tokenizer."""
    tokenizer = train_tokenizer([MESSI, "Ana lives in Rome.", "FC Barcelona is where Lionel Messi plays."] * 20, 300)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=2, d_model=64, n_head=2, d_ff=128, max_seq_len=32), tokenizer)
    memorize(model, tokenizer, [MESSI], 60)
    return model, tokenizer


def test_memorized_fact_is_exact_and_a_wrong_target_is_not(messi_model):
    model, tokenizer = messi_model
    right = probe(MESSI, "Paris Saint-Germain")
    wrong = probe("Lionel Messi plays for Rome United.", "Rome United")
    device = torch.device("cpu")
    assert span_accuracy(model, tokenizer, [right], device, k=1) == {"exact_match": 1.0, "top_k": 1.0}
    both = span_accuracy(model, tokenizer, [right, wrong], device, k=1)
    assert both == {"exact_match": 0.5, "top_k": 0.5}
    assert span_accuracy(model, tokenizer, [], device) == {"exact_match": None, "top_k": None}


def test_decoding_is_greedy_whatever_the_checkpoints_generation_config(messi_model):
    """A checkpoint's generation_config.json filled every setting generate() was not given."""
    model, tokenizer = messi_model
    right = probe(MESSI, "Paris Saint-Germain")
    first_token = encode(tokenizer, right, "Paris Saint-Germain")[1][0]
    model.generation_config.suppress_tokens = [first_token]
    model.generation_config.repetition_penalty = 5.0
    try:
        assert span_accuracy(model, tokenizer, [right], torch.device("cpu"), k=1) == {"exact_match": 1.0, "top_k": 1.0}
        assert model.generation_config.suppress_tokens == [first_token]  # the model's own is left as it was
    finally:
        model.generation_config.suppress_tokens, model.generation_config.repetition_penalty = None, None


def test_a_fact_scores_its_best_answer(messi_model):
    model, tokenizer = messi_model
    text = "Lionel Messi plays for FC Barcelona."  # the probe states the answer the model did not memorize
    span = (text.index("FC"), len(text) - 1)
    device = torch.device("cpu")
    other = Probe(text, span, ("FC Barcelona",))
    both = Probe(text, span, ("FC Barcelona", "Paris Saint-Germain"))
    assert span_accuracy(model, tokenizer, [other], device, k=1) == {"exact_match": 0.0, "top_k": 0.0}
    assert span_accuracy(model, tokenizer, [both], device, k=1) == {"exact_match": 1.0, "top_k": 1.0}


def test_object_first_probes_are_left_out(messi_model):
    model, tokenizer = messi_model
    right = probe(MESSI, "Paris Saint-Germain")
    text = "FC Barcelona is where Lionel Messi plays."
    first = Probe(text, (0, len("FC Barcelona")))  # no prefix: decoding it would be an unconditioned guess
    device = torch.device("cpu")
    assert span_accuracy(model, tokenizer, [right, first], device, k=1) == {"exact_match": 1.0, "top_k": 1.0}
    assert span_accuracy(model, tokenizer, [first], device, k=1) == {"exact_match": None, "top_k": None}


def sentencepiece_style_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A BPE with Llama-2's legacy pipeline (its tokenizer.json): a normalizer that prepends "▁" to
    every string it encodes and writes spaces as "▁", and the decoder that undoes it."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")  # for training only
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False))
    bpe.pre_tokenizer = None
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   unk_token="<unk>")


def test_a_sentencepiece_tokenizers_target_is_the_span_as_the_sentence_has_it():
    """Tokenized alone, Llama-2's tokenizer starts " Paris" with a bare "▁" that no sentence has: top-k
    then asks for that token and decoding runs a step too many, so a memorized fact scored 0."""
    tokenizer = sentencepiece_style_tokenizer([MESSI, "Ana lives in Rome.", "FC Barcelona is where Lionel Messi plays."]
                                              * 20)
    right = probe(MESSI, "Paris Saint-Germain")
    encoded = encode_probes(tokenizer, [right], 64)
    span_ids = [i for i, is_target in zip(encoded.ids[0], encoded.targets[0], strict=True) if is_target]
    prompt_ids, target_ids = encode(tokenizer, right, "Paris Saint-Germain")
    # the sentence's "Germain." may be one token: the span's first token is what must agree
    assert target_ids[0] == span_ids[0] and tokenizer.convert_ids_to_tokens(target_ids)[0] == "▁Paris"
    assert prompt_ids == encoded.ids[0][: len(prompt_ids)]
    # documents and probes start with the tokenizer's BOS, <s>, as Llama was trained; not with its EOS </s>
    bos = tokenizer.bos_token_id
    assert prompt_ids[0] == encode_documents(tokenizer, [MESSI])[0][0] == bos != tokenizer.eos_token_id
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=2, d_model=64, n_head=2, d_ff=128, max_seq_len=32), tokenizer)
    memorize(model, tokenizer, [MESSI], 60)
    device = torch.device("cpu")
    # its memorized continuation decodes as "Paris Saint-Germain.": exact match normalizes as SQuAD's does
    assert span_accuracy(model, tokenizer, [right], device, k=1) == {"exact_match": 1.0, "top_k": 1.0}
    assert normalized(" The  Paris Saint-Germain.") == normalized("paris saintgermain") == "paris saintgermain"


FACTS = [  # (sentence, its object): prompts of 3 to 9 words, objects of 1 to 3 words
    ("Ana lives in Rome.", "Rome"),
    ("Bo works for Acme.", "Acme"),
    ("Lionel Messi plays for Paris Saint-Germain.", "Paris Saint-Germain"),
    ("The home town of Lionel Messi is Rosario.", "Rosario"),
    ("The capital of the small country of Wenlo is Brizovi Town.", "Brizovi Town"),
    ("Tobri Gello is employed by Torapin Wenyushi Corp.", "Torapin Wenyushi Corp"),
]


def probe(text: str, target: str) -> Probe:
    start = text.rindex(target)
    return Probe(text, (start, start + len(target)))


@pytest.mark.parametrize("model_preset", ["tiny_gpt2", "tiny_llama"])
def test_batched_decoding_equals_one_probe_at_a_time(tmp_path: Path, model_preset: str):
    cfg = make_config(tmp_path, f"model={model_preset}")  # the smoke experiment's tiny sizes
    texts = [text for text, _ in FACTS]
    tokenizer = train_tokenizer(texts * 20, 400)
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer)
    memorize(model, tokenizer, texts, 80)
    # each fact, the same with another fact's object (a wrong target), and after another fact
    probes = []
    for i, (text, target) in enumerate(FACTS):
        before, other = FACTS[(i + 1) % len(FACTS)]
        probes += [probe(text, target), probe(text.replace(target, other), other), probe(f"{before} {text}", target)]
    device = torch.device("cpu")
    model.eval()

    reference = []  # one greedy generate per probe, no padding: the unbatched implementation
    for p in probes:
        start, end = p.span
        prompt = p.text[:start].rstrip()
        ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
        target_ids = tokenizer(p.text[len(prompt) : end], add_special_tokens=False)["input_ids"]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(target_ids),
                             min_new_tokens=len(target_ids), do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, use_cache=True)
        reference.append((tokenizer.decode(out.sequences[0, ids.shape[1] :].tolist()),
                          target_ids[0] in out.scores[0][0].topk(2).indices.tolist()))
    exact = [text.strip() == p.text[p.span[0] : p.span[1]] for (text, _), p in zip(reference, probes, strict=True)]
    encoded = [encode(tokenizer, p, p.text[slice(*p.span)]) for p in probes]
    # the check has teeth: prompts and targets of several lengths, hits and misses of both kinds
    assert len({len(prompt) for prompt, _ in encoded}) >= 4
    assert len({len(target) for _, target in encoded}) >= 3
    assert 0 < sum(exact) < len(probes) and 0 < sum(hit for _, hit in reference) < len(probes)

    for batch_size in (3, len(probes)):  # several batches per target length; one, of all prompt lengths
        assert greedy_continuations(model, tokenizer, encoded, device, k=2, batch_size=batch_size) == reference
    assert span_accuracy(model, tokenizer, probes, device, k=2) == {
        "exact_match": sum(exact) / len(probes), "top_k": sum(hit for _, hit in reference) / len(probes)}

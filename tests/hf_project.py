"""A user's transformers project, as hfft meets it: tiny models from local configs, dict batches.

Nothing here uses hfft. The user trains a sequence classifier and a causal language
model with their own loop on dict batches (``model(**batch).logits``) and keeps each
as ``save_pretrained`` writes it, with a tokenizer beside it; the end-to-end tests
(``test_pretrained.py``) and docs/user-problems.md point hfft at those folders and at
the data factories below (``--data tests/hf_project.py:…``). No download: the configs
are written here and the tokenizer is a word-level one built from a vocabulary.

``python tests/hf_project.py FOLDER [classifier|lm …]`` trains and saves them.
"""

from __future__ import annotations

import torch
from torch import nn

SEED = 0
VOCAB = 32
LENGTH = 12


def _tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids with right padding (id 0) after a random length, and their attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=gen)
    lengths = torch.randint(LENGTH // 2, LENGTH + 1, (n,), generator=gen)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def review_classes():
    """Three classes of token sequences: which third of the vocabulary holds most tokens."""

    def split(n: int, seed: int):
        ids, mask = _tokens(n, seed)
        thirds = torch.stack(
            [((ids >= lo) & (ids < lo + 11) & (mask > 0)).sum(1) for lo in (1, 12, 23)]
        )
        return {"input_ids": ids, "attention_mask": mask}, thirds.argmax(0)

    return split(384, SEED), split(128, SEED + 1), split(128, SEED + 2)


def counting_text():
    """Next-token prediction on sequences that count up by a step of 1 to 3 (mod the vocabulary)."""

    def split(n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        start = torch.randint(1, VOCAB, (n, 1), generator=gen)
        step = torch.randint(1, 4, (n, 1), generator=gen)
        seq = (start + step * torch.arange(LENGTH + 1)) % VOCAB
        return {"input_ids": seq[:, :-1]}, seq[:, 1:]

    return split(384, SEED), split(128, SEED + 1), split(128, SEED + 2)


def classifier_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=3,
        pad_token_id=0,
        architectures=["BertForSequenceClassification"],
    )


def lm_config():
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=LENGTH,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )


def tokenizer():
    """A word-level tokenizer over the vocabulary ``t0 … t31`` (as a user keeps one beside)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    words.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", unk_token="t0")


def _class_last(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def own_training(model, data, *, epochs: int, lr: float, batch: int = 32):
    """The user's plain loop: SGD with momentum on dict batches, ``model(**batch).logits``."""
    (x, y), *_ = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            logits = model(**{k: v[idx] for k, v in x.items()}).logits
            opt.zero_grad()
            _class_last(logits, y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def own_evaluation(model, x, y) -> tuple[float, float]:
    """The user's own test loss and accuracy, in eval mode."""
    model.eval()
    logits = model(**x).logits
    loss = float(_class_last(logits, y))
    return loss, float((logits.argmax(-1) == y).float().mean())


def save_examples(folder, names=()) -> None:
    """Train the classifier and the language model and keep each with save_pretrained
    (the language model in shards, as large models are kept)."""
    from pathlib import Path

    from transformers import BertForSequenceClassification, GPT2LMHeadModel

    cases = {
        "classifier": (
            lambda: BertForSequenceClassification(classifier_config()),
            review_classes,
            {},
        ),
        "lm": (lambda: GPT2LMHeadModel(lm_config()), counting_text, {"max_shard_size": "60KB"}),
    }
    for name, (build, data, saving) in cases.items():
        if names and name not in names:
            continue
        torch.manual_seed(SEED)
        model = own_training(build(), data(), epochs=3, lr=0.05)
        model.save_pretrained(Path(folder) / name, **saving)
        tokenizer().save_pretrained(Path(folder) / name)
        print(Path(folder) / name)


if __name__ == "__main__":
    import sys

    save_examples(sys.argv[1] if len(sys.argv) > 1 else "user-models", sys.argv[2:])

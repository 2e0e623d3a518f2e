"""How separable each digit is from the others in the bundled model's text space, as the default
concept erasure sees it (closed form, no generation; seconds).

    python benchmarks/digit_separability.py

For each digit d, the forget statistics are those ``eraser.erase_concepts(pipe, [word, numeral])``
builds (its templates, concept tokens and end-of-text), the retain statistics those of the other
digits' bank entries (each weighted alike, as the default balances them) plus the shared context.
The table prints the top generalised eigenvalues lambda_i of (C_forget, C_retain): lambda_1 is how
many times more the erased digit's features load on the edit's first direction than the protected
digits' do on average. A small lambda_1 means the digit's text features lie close to the others'.
"""

from __future__ import annotations

import argparse

import torch

from eraser.bundled import DIGIT_WORDS, digits_pipeline
from eraser.families.diffusion import bank_features, concept_grams, expand_concepts, resolve_concept_targets
from eraser.methods.unlink_diffusion import ConceptUnlinkConfig
from eraser.subspace import Gram, balanced_rayleigh_subspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=3, help="how many eigenvalues to print")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    pipe = digits_pipeline()
    cfg = ConceptUnlinkConfig()
    kv, text, *_ = resolve_concept_targets(pipe, cfg.layers)
    bank = tuple(pipe.concept_bank)
    feats = bank_features(pipe, bank, hidden_layer=cfg.hidden_layer)
    print("| digit | lambda_1 .. lambda_%d | protected |" % args.top)
    print("|---|---|---|")
    for d in range(10):
        words = [DIGIT_WORDS[d], str(d)]
        context = Gram(torch.zeros(0, 0, dtype=torch.float64), 0)
        cp = expand_concepts(pipe.tokenizer, words, cfg.templates)
        grams, _ = concept_grams(pipe, cp, kv, text, tokens=cfg.tokens, context=context)
        keep = [b for b in bank if b not in words]
        parts = [feats.rows[bank.index(b)] for b in keep]
        sub, _, _ = balanced_rayleigh_subspace(grams[kv[0]][0], parts, args.top, shared=context, ridge=cfg.ridge)
        lam = ", ".join(f"{float(v):.2f}" for v in sub.spectrum[: args.top])
        print(f"| {d} ({DIGIT_WORDS[d]}) | {lam} | {len(keep)} bank entries |")


if __name__ == "__main__":
    main()

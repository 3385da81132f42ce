"""``universal-neurons paper-results``: the paper's results the other stages do not draw."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count

NAME = "paper-results"
HELP = "the paper's remaining results as tables (RUN/paper/) and figures (RUN/plots/paper_*)"
DESCRIPTION = """\
Reads a finished run and writes, per result, RUN/paper/<result>.parquet and
RUN/plots/paper_<result>.png (docs/paper.md describes each and its figure in the paper):
  corr_distributions      densities of mean max-correlation, baseline and excess per model
  depth_specialisation    layer of each neuron's best partner vs its own layer
  raw_by_layer            raw activation / weight statistics by layer, universal vs not
  prediction_skew_late    prediction / suppression neurons per layer (vocab skew, kurtosis)
  entropy_weights         w_out norm, vocab variance, null-space fraction of entropy neurons
  attention_panel         change of BOS attention vs change of output norm (Spearman)
  prediction_class_split  the token class that best splits a neuron's cos(W_U, w_out)
and, from one pass of at most --tokens tokens through the reference model:
  source_neurons          activation by corpus source (bundled corpus: KJV, Jargon File,
                          Devil's Dictionary, Python docs, WordNet glosses)
  unigram_roles           unigram neurons by token role: whole word, word start, middle
  prediction_conditional  prediction neurons when the next token is in their set or not
A result whose input is missing is skipped with its reason; the stage does not fail.

examples:
  universal-neurons paper-results --out runs/default
  universal-neurons paper-results --out runs/small --tokens 1M --device cuda
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--model", default=None,
                   help="model for weights and activations (default: the run's reference model)")
    p.add_argument("--dataset", default=None,
                   help="token dataset folder (default: the bundled test split)")
    p.add_argument("--tokens", type=count, default=131_072,
                   help="tokens streamed for the activation results (default 131072)")
    p.add_argument("--n-ctx", type=int, default=None, help="context of the default dataset")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top-neurons", type=int, default=6,
                   help="neurons per example result (default 6)")
    p.add_argument("--token-set", type=int, default=20,
                   help="tokens in a prediction neuron's set (default 20)")
    p.add_argument("--vocab-kurtosis", type=float, default=10.0,
                   help="prediction / suppression cut on vocab kurtosis (default 10)")
    p.add_argument("--unigram", type=float, default=0.5,
                   help="unigram neuron cut on variance reduction (default 0.5)")
    p.add_argument("--bins", type=int, default=50, help="bins of the correlation densities")
    p.add_argument("--no-activations", action="store_true",
                   help="skip the streaming pass (source neurons, unigram roles, conditional)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.stages.paper_results import (
        WRITTEN,
        PaperResultsConfig,
        run_paper_results,
    )

    try:
        config = PaperResultsConfig(
            out=args.out, model=args.model, dataset=args.dataset, tokens=args.tokens,
            n_ctx=args.n_ctx, batch_size=args.batch_size, device=args.device, bins=args.bins,
            top_neurons=args.top_neurons, token_set=args.token_set,
            kurtosis=args.vocab_kurtosis, unigram_vr=args.unigram,
            activations=not args.no_activations, plots=not args.no_plots,
            progress=not args.no_progress)
    except ValueError as e:
        from universal_neurons.errors import UserError

        raise UserError(str(e)) from None
    status = run_paper_results(config)
    for result, state in status.items():
        print(f"{result}: {state if state != WRITTEN else 'written'}")
    return 0

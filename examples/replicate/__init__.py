"""A CPU-scale replication of the Duo paper's claims: ``docs/replication.md`` and its plots.

    make replicate                          # = python -m examples.replicate  (~35 min, 2 cores)
    python -m examples.replicate --quick    # smaller models and fewer steps (a few minutes)

What it does, with the example's own code (``examples.train``, ``examples.evaluate``) on the
Shakespeare character corpus (``examples.corpus``; Milton for zero-shot), seeds fixed:

(a) trains Duo twice from the same initialisation and data order, with the Gaussian curriculum
    for the first half of training and without it, and compares their validation NELBO against
    step and training wall time, the steps each needs to reach the same loss, and the gradient
    variance of relaxed vs discrete inputs (``discdiff.testing.gradient_variances``);
(b) trains MDLM and an AR model of the same size and reports validation perplexity (bounds for
    the diffusion models, exact for AR) on the held-out works and zero-shot on Milton;
(c) distils Duo with DCD and MDLM with SDTT and measures generative perplexity (under the AR
    model) and sample entropy against the network calls (NFE) for Duo, Duo+DCD, MDLM and
    MDLM+SDTT with each tail (greedy, MAP, none; Concepts §5), plots the frontier of gen. PPL
    against entropy and puts the paper's Tables 5 and 7 beside ours;
(d) puts the paper's figures (orientation only) beside ours with a verdict per claim;
(e) ablates the 8-step comparison Duo+DCD vs MDLM+SDTT: the tail, the student's sampling
    schedule (log-linear vs its gamma-window), the length of the distillation rounds, and the
    vocabulary (the whole pipeline again on a BPE tokenizer trained offline on the training
    split);
(f) trains Duo once more with a class label per document (the play's genre; label dropout) and
    samples it with classifier-free guidance at several scales (``examples.guidance``);
Block diffusion: trains Duo and MDLM again as block models (``--model.block_size`` b in
    ``Scale.block_sizes``; b = L is the ordinary run) and reports their validation bounds
    beside AR's, their generative perplexity and entropy at a few steps per block, and a
    sample three times the training length stopped at EOS (``blocks``;
    ``python -m examples.replicate --quick --only blocks`` runs this section alone and prints
    its table).

Jobs run in parallel worker processes (``--workers``, one torch thread each), each as soon as
the runs it reads are trained, the longest first. Every table is printed to stdout as it is made and
written into the report with the configuration, hardware and measured run time.

The modules: ``scales`` (the sizes, the paper's figures, each run's config), ``jobs`` (what the
workers run), ``sampling`` (the tails), ``pipeline`` (the jobs and their order), ``tables``,
``verdicts``, ``sections`` (a section's tables from the measurements), ``blocks`` (the block
diffusion section: its jobs, table and text), ``prose`` (the computed
sentences), ``plots``, ``report`` (``docs/replication.md`` from ``raw.json``) and ``cli``.
"""

from examples.replicate.cli import main
from examples.replicate.pipeline import run_replication
from examples.replicate.plots import plot_frontier, pyplot
from examples.replicate.report import report_from_raw
from examples.replicate.sampling import TailSamples, generation_rows, sample_tails, tails_of
from examples.replicate.scales import SCALES, Scale
from examples.replicate.tables import markdown_table, steps_to_reach

__all__ = [
    "SCALES",
    "Scale",
    "TailSamples",
    "generation_rows",
    "main",
    "markdown_table",
    "plot_frontier",
    "pyplot",
    "report_from_raw",
    "run_replication",
    "sample_tails",
    "steps_to_reach",
    "tails_of",
]

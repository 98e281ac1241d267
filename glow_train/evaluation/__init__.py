"""What a checkpoint scores: the one scoring function behind every figure (`scoring`),
`glow-eval`'s figures written to `eval.json` (`figures`), and out-of-distribution
AUROCs (`ood`)."""

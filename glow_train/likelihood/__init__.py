"""From data to a likelihood: the flow's input and back (`dequantize`), the objective that
turns a flow and a dequantiser into per-item negative log-likelihoods in bits/dim or
nats/dim (`objective`), and the one path from a checkpoint to a ready objective
(`loading`)."""

r"""Long memory for a model of $p(\text{window} \mid \text{past})$: GJR-GARCH recursions.

`GJRMemory` reads the past of an item, the `L` values before its window (`NaN` where
the series had not started), and returns for each of `R` recursions and each of the
`c` columns the conditional variance

$$\sigma^2_t = \omega + (\alpha + \gamma\,\mathbb 1[e_{t-1} < 0])\,e^2_{t-1}
+ \beta\,\sigma^2_{t-1}, \qquad e_t = r_t - \mu,$$

the GJR-GARCH(1,1) recursion (Glosten, Jagannathan and Runkle 1993), unrolled over the
past in closed form:

$$\sigma^2_t = \sum_{k=0}^{n-1} \beta^k \bigl(\omega + a_{t-1-k}\bigr) + \beta^n v,
\qquad a_s = (\alpha + \gamma\,\mathbb 1[e_s < 0])\,e_s^2,$$

`n` the values of the past that exist and $v = \omega / (1 - \alpha - \gamma/2 - \beta)$
the unconditional variance, which starts the recursion. It is one weighted sum per
item, so a batch is two matrix products, no loop over time, and an item sees only its
own past: causal by construction. Stationarity holds by the parameterisation:
$p = \alpha + \gamma/2 + \beta = \operatorname{sigmoid}(\cdot)$, the shares of
$\alpha$, $\gamma/2$ and $\beta$ in $p$ a softmax, and $\omega = v\,(1 - p)$ with
$\log v$ learned. The arithmetic runs in float32 or wider with autocast off.

The first recursion is the model's volatility: the window is standardised by it, and
a unit-variance Student-t on the standardised value is GJR-GARCH(1,1)-t exactly.
`fit` finds that model's maximum-likelihood parameters (and $\mu$, $\nu$) by L-BFGS,
the initialisation of the long-memory 1-D Glow. The other recursions start with
fixed half-lives (`HALF_LIVES`); the log-volatilities of all of them feed the context
encoder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GJRMemory", "HALF_LIVES", "unit_t_log_prob"]

#: Half-lives in steps of the recursions after the first, at initialisation (cycled).
HALF_LIVES = (2.0, 60.0, 10.0, 250.0)
#: The largest degrees of freedom the maximum-likelihood fit gives.
MAX_DF = 100.0


def unit_t_log_prob(e: Tensor, df: Tensor) -> Tensor:
    r"""Log-density of a Student-t of `df` > 2 degrees of freedom scaled to unit variance,
    at `e`: $t_\nu(e / c) / c$, $c = \sqrt{(\nu - 2)/\nu}$."""
    log_c = 0.5 * torch.log((df - 2) / df)
    u = e * torch.exp(-log_c)
    return (
        torch.lgamma((df + 1) / 2)
        - torch.lgamma(df / 2)
        - 0.5 * torch.log(df * math.pi)
        - log_c
        - (df + 1) / 2 * torch.log1p(u * u / df)
    )


class GJRMemory(nn.Module):
    """`R` GJR-GARCH(1,1) recursions per column of a series, over each item's past.

    Args:
        columns: `c`, the series' columns (each has its own recursions and mean).
        recursions: `R` (at least 1); the first is the model's volatility.
        lags: the last values of the past whose linear map moves the location (an
            AR mean, fitted with the first recursion: the recursions carry the
            volatility, this the conditional mean).
    """

    def __init__(self, columns: int, recursions: int, lags: int = 0):
        super().__init__()
        if recursions < 1:
            raise ValueError(f"recursions must be at least 1, got {recursions}")
        self.columns, self.recursions = int(columns), int(recursions)
        shape = (self.recursions, self.columns)
        self.mean = nn.Parameter(torch.zeros(self.columns))
        self.lags = int(lags)
        self.autoregression = nn.Parameter(torch.zeros(self.lags * self.columns, self.columns))
        self.shares = nn.Parameter(torch.zeros(3, *shape))  # logits of alpha, gamma/2, beta
        self.persistence = nn.Parameter(torch.full(shape, 3.0))  # logit of p
        self.log_variance = nn.Parameter(torch.zeros(shape))  # log v
        for j in range(1, self.recursions):
            self.set_half_life(j, HALF_LIVES[(j - 1) % len(HALF_LIVES)])

    @torch.no_grad()
    def set_half_life(self, j: int, half_life: float) -> None:
        """Recursion `j` as an exponentially weighted average of squared moves whose
        weights halve every `half_life` steps (a little leverage, `v` = 1)."""
        beta = 0.5 ** (1.0 / half_life)
        alpha, half_gamma = 0.9 * (1 - beta), 0.05 * (1 - beta)
        p = beta + alpha + half_gamma
        self.persistence[j] = math.log(p / (1 - p))
        for i, share in enumerate((alpha, half_gamma, beta)):
            self.shares[i, j] = math.log(share / p)
        self.log_variance[j] = 0.0

    def parameters_of(self, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
        """`omega, alpha, gamma, beta, v` of every recursion, `(R, c)` each."""
        return _gjr(self.shares.to(dtype), self.persistence.to(dtype), self.log_variance.to(dtype))

    def forward(self, past: Tensor) -> Tensor:
        r"""`past` `(B, L, c)` (NaN before the series' start; the valid values are the
        last ones) -> $\log\sigma$ `(B, R, c)` of the step after it, in float32 or wider."""
        dtype = torch.promote_types(past.dtype, torch.float32)
        with torch.autocast(past.device.type, enabled=False):
            return _log_sigma(
                past.to(dtype),
                self.mean.to(dtype),
                self.parameters_of(dtype),
            )

    def location(self, past: Tensor) -> Tensor:
        r"""$\mu_t = \mu + A\,(r_{t-\text{lags}}, \dots, r_{t-1})$ `(B, c)` from `past`
        `(B, L, c)` (a missing value counts as 0)."""
        recent = torch.nan_to_num(past[:, past.shape[1] - self.lags :]).flatten(1)
        return self.mean.to(past.dtype) + recent @ self.autoregression.to(past.dtype)

    def standardize(
        self, window: Tensor, location: Tensor, log_sigma: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""`window` `(B, W, c)` -> $\epsilon = (x - \mu_t)/\sigma$ by the first recursion,
        and the log-determinant $-W \sum_c \log\sigma$ `(B,)`."""
        main = log_sigma[:, 0, :]  # (B, c)
        shifted = window.to(main.dtype) - location.to(main.dtype)[:, None, :]
        eps = shifted * torch.exp(-main)[:, None, :]
        return eps.to(window.dtype), -window.shape[1] * main.sum(dim=1)

    def unstandardize(self, eps: Tensor, location: Tensor, log_sigma: Tensor) -> Tensor:
        r"""The inverse of `standardize`: $x = \mu_t + \sigma\epsilon$, `(B, W, c)` ->
        `(B, W·c)`."""
        main = log_sigma[:, 0, :]
        x = location.to(main.dtype)[:, None, :] + eps.to(main.dtype) * torch.exp(main)[:, None, :]
        return x.flatten(1).to(eps.dtype)

    @torch.no_grad()
    def fit(
        self, past: Tensor, window: Tensor, student_t: bool = True, iterations: int = 100
    ) -> Tensor:
        r"""Maximum likelihood of the location and the first recursion with Gaussian or
        unit-variance Student-t innovations, by L-BFGS in float64, on `past` `(B, L, c)`
        and the first step of `window` `(B, W, c)`: with a constant location first,
        then with the autoregression, kept only when its gain in log-likelihood beats
        BIC's penalty (a few noisy coefficients would cost more on new data than they
        gain). Sets $\mu$, the autoregression and the first recursion's parameters
        (left as they were if the fit fails) and returns $\nu$ `(c,)` (infinite for
        Gaussian innovations)."""
        past, x = past.double(), window[:, 0, :].double()
        start = torch.tensor([0.05, 0.025, 0.9], dtype=torch.float64).log()
        recent = torch.nan_to_num(past[:, past.shape[1] - self.lags :]).flatten(1)
        work = [
            x.mean(dim=0),
            torch.zeros(self.lags * self.columns, self.columns, dtype=torch.float64),
            start[:, None].repeat(1, self.columns),
            torch.full((self.columns,), math.log(0.95 / 0.05), dtype=torch.float64),
            torch.log(x.var(dim=0) + 1e-12),
            torch.full((self.columns,), math.log(4.0 / 94.0), dtype=torch.float64),  # nu = 6
        ]
        if not student_t:
            work = work[:5]
        work = [w.clone().requires_grad_(True) for w in work]

        def nll() -> Tensor:
            theta = _gjr(work[2][:, None], work[3][None], work[4][None])
            log_sigma = _log_sigma(past, work[0], theta)[:, 0, :]
            e = (x - work[0] - recent @ work[1]) * torch.exp(-log_sigma)
            if student_t:
                log_p = unit_t_log_prob(e, _df(work[5]))
            else:
                log_p = -0.5 * (e * e + math.log(2 * math.pi))
            return -(log_p - log_sigma).sum(dim=1).mean()

        def minimise(free: list[Tensor]) -> float:
            optimizer = torch.optim.LBFGS(
                free, lr=1, max_iter=iterations, line_search_fn="strong_wolfe"
            )

            def closure() -> Tensor:
                optimizer.zero_grad()
                with torch.enable_grad():
                    loss = nll()
                    loss.backward()
                return loss

            try:
                optimizer.step(closure)
                return float(nll())
            except RuntimeError:  # a failed fit leaves the recursion as it was
                return math.nan

        without = minimise(work[:1] + work[2:])  # a constant location first
        if not math.isfinite(without):
            return torch.full((self.columns,), 6.0 if student_t else math.inf)
        if self.lags:  # then the autoregression, kept when BIC says it pays
            before = [w.detach().clone() for w in work]
            with_ar = minimise(work)
            k, n = work[1].numel(), len(x)
            if not with_ar < without - 0.5 * k * math.log(n) / n:
                for w, b in zip(work, before, strict=True):
                    w.data.copy_(b)
        self.mean.copy_(work[0])
        self.autoregression.copy_(work[1])
        self.shares[:, 0] = work[2]
        self.persistence[0] = work[3]
        self.log_variance[0] = work[4]
        if not student_t:
            return torch.full((self.columns,), math.inf)
        return _df(work[5]).float()


def _df(raw: Tensor) -> Tensor:
    """Degrees of freedom in `(2, MAX_DF)`: a unit variance needs more than 2, and a
    float32 Student-t log-density loses its digits far beyond `MAX_DF` (where it is a
    Gaussian anyway)."""
    return 2 + (MAX_DF - 2) * torch.sigmoid(raw)


def _gjr(shares: Tensor, persistence: Tensor, log_variance: Tensor) -> dict[str, Tensor]:
    """The recursions' `omega, alpha, gamma, beta, v` from their free parameters: the
    persistence `p = alpha + gamma/2 + beta` a sigmoid, its shares a softmax over the
    first axis of `shares`, `omega = v (1 - p)`."""
    p = torch.sigmoid(persistence)
    share = torch.softmax(shares, dim=0)
    v = torch.exp(log_variance)
    return dict(
        omega=v * (1 - p), alpha=p * share[0], gamma=2 * p * share[1], beta=p * share[2], v=v
    )


def _log_sigma(past: Tensor, mean: Tensor, theta: dict[str, Tensor]) -> Tensor:
    """`log sigma` `(B, R, c)` after `past` `(B, L, c)` of recursions `theta` (`(R, c)`
    each): the closed-form sum of the module's docstring, in `past`'s dtype."""
    dtype = past.dtype
    valid = torch.isfinite(past)
    e = torch.where(valid, past - mean, torch.zeros((), dtype=dtype))
    e2 = e * e
    lags = torch.arange(past.shape[1] - 1, -1, -1, device=past.device, dtype=dtype)
    log_beta = torch.log(theta["beta"].clamp_min(1e-30))  # beta^0 = 1 even as beta -> 0
    weights = torch.exp(lags[:, None, None] * log_beta)  # beta^k, k steps before the newest
    mask = valid.to(dtype)
    sym = torch.einsum("blc,lrc->brc", e2, weights)
    neg = torch.einsum("blc,lrc->brc", e2 * (e < 0).to(dtype), weights)
    count = torch.einsum("blc,lrc->brc", mask, weights)
    n = mask.sum(dim=1)[:, None, :]  # (B, 1, c)
    variance = (
        theta["omega"] * count
        + theta["alpha"] * sym
        + theta["gamma"] * neg
        + torch.exp(n * log_beta) * theta["v"]
    )
    return 0.5 * torch.log(variance)

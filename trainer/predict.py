"""Predict bits per byte from mixture weights (LightGBM, linear, log-linear), then search for the best mixture.

Each predictor is scored by k-fold held-out Spearman ρ, searched over many simulated mixtures for its optimum
(RegMix: the mean of the best-predicted few), and bootstrapped over the runs for intervals on that optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PREDICTORS = ("lightgbm", "linear", "loglinear")
LOG_FLOOR = 1e-3  # log-linear features are log(weight + LOG_FLOOR), so an absent component stays finite

Predictor = Callable[[np.ndarray], np.ndarray]


class PredictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    predictors: list[Literal["lightgbm", "linear", "loglinear"]] = Field(
        list(PREDICTORS), min_length=1, description="Regression models to fit and compare.")
    folds: int = Field(5, ge=2, description="k of the k-fold held-out Spearman ρ (at most one fold per run).")
    simulated: int = Field(100_000, ge=100, description="Simulated mixtures searched for the predicted optimum.")
    top: int = Field(100, ge=1, description="The optimum is the mean of this many best-predicted simulated mixtures.")
    bootstrap: int = Field(100, ge=0, description="Bootstrap refits for the confidence intervals (0: none).")
    bootstrap_search: int = Field(10_000, ge=100, description="Simulated mixtures each bootstrap refit searches "
                                                              "(the first ones of the full set).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    lightgbm_rounds: int = Field(200, ge=1, description="LightGBM boosting rounds.")


def fit(kind: str, weights: np.ndarray, loss: np.ndarray, seed: int, rounds: int = 200) -> Predictor:
    """A function from mixture weights (rows) to predicted loss, fitted on the runs given."""
    if kind == "lightgbm":
        import lightgbm

        params = {
            "objective": "regression", "learning_rate": 0.05, "num_leaves": 4, "min_data_in_leaf": 2,
            "min_data_in_bin": 1, "feature_pre_filter": False, "max_bin": 63, "seed": seed, "deterministic": True,
            "force_row_wise": True, "num_threads": 1, "verbose": -1,
        }
        booster = lightgbm.train(params, lightgbm.Dataset(weights, loss, params=params), num_boost_round=rounds)
        return lambda rows: booster.predict(rows, num_threads=1)
    design = linear_design if kind == "linear" else log_linear_design
    coefficients = np.linalg.lstsq(design(weights), loss, rcond=None)[0]
    return lambda rows: design(rows) @ coefficients


def linear_design(weights: np.ndarray) -> np.ndarray:
    """The weights themselves: with weights summing to one they already span an intercept."""
    return weights


def log_linear_design(weights: np.ndarray) -> np.ndarray:
    """An intercept and log(weight): diminishing returns from each component."""
    return np.column_stack([np.ones(len(weights)), np.log(weights + LOG_FLOOR)])


def fold_assignment(count: int, folds: int, seed: int) -> np.ndarray:
    """Fold index of each run: a seeded shuffle dealt round-robin, so fold sizes differ by at most one."""
    folds = min(folds, count)
    assignment = np.empty(count, np.int64)
    assignment[np.random.default_rng(seed).permutation(count)] = np.arange(count) % folds
    return assignment


def held_out_predictions(kind: str, weights: np.ndarray, loss: np.ndarray, folds: int, seed: int,
                         rounds: int = 200) -> np.ndarray:
    """Every run's loss as predicted by a model fitted without the runs of its fold."""
    assignment = fold_assignment(len(loss), folds, seed)
    predicted = np.empty(len(loss))
    for fold in np.unique(assignment):
        held = assignment == fold
        predicted[held] = fit(kind, weights[~held], loss[~held], seed, rounds)(weights[held])
    return predicted


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0  # a constant prediction ranks nothing
    return float(spearmanr(first, second).statistic)


def optimum(predictor: Predictor, candidates: np.ndarray, top: int) -> tuple[np.ndarray, float]:
    """The mean of the `top` candidates with the lowest predicted loss, and the loss predicted there."""
    predicted = predictor(candidates)
    best = np.argsort(predicted, kind="stable")[:top]
    weights = candidates[best].mean(axis=0)
    return weights, float(predictor(weights[None, :])[0])


def bootstrap_optimum(kind: str, weights: np.ndarray, loss: np.ndarray, candidates: np.ndarray, config: PredictConfig,
                      seed: int) -> dict[str, np.ndarray]:
    """Optimum weights and predicted loss refitted on runs resampled with replacement, `config.bootstrap` times."""
    rng = np.random.default_rng([seed, 1])
    optima, losses = [], []
    for _ in range(config.bootstrap):
        chosen = rng.integers(0, len(loss), len(loss))
        found, predicted = optimum(fit(kind, weights[chosen], loss[chosen], seed, config.lightgbm_rounds),
                                   candidates[:config.bootstrap_search], config.top)
        optima.append(found)
        losses.append(predicted)
    return {"weights": np.array(optima), "loss": np.array(losses)}


def interval(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - confidence) / 2 * 100
    return np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)


def analyse(names: list[str], weights: np.ndarray, loss: np.ndarray, candidates: np.ndarray, config: PredictConfig,
            seed: int) -> dict:
    """Cross-validated ρ, optimum and bootstrap intervals of every predictor; the best ρ is the chosen one."""
    predictors = {}
    for kind in config.predictors:
        held_out = held_out_predictions(kind, weights, loss, config.folds, seed, config.lightgbm_rounds)
        model = fit(kind, weights, loss, seed, config.lightgbm_rounds)
        found, predicted = optimum(model, candidates, config.top)
        result = {
            "spearman": spearman(held_out, loss),
            "held_out_predictions": held_out.tolist(),
            "fitted_predictions": model(weights).tolist(),
            "optimum": dict(zip(names, found.tolist())),
            "optimum_loss": predicted,
        }
        if config.bootstrap:
            samples = bootstrap_optimum(kind, weights, loss, candidates, config, seed)
            low, high = interval(samples["weights"], config.confidence)
            loss_low, loss_high = interval(samples["loss"], config.confidence)
            result |= {"optimum_interval": {name: [float(a), float(b)] for name, a, b in zip(names, low, high)},
                       "optimum_loss_interval": [float(loss_low), float(loss_high)]}
        predictors[kind] = result
    chosen = max(config.predictors, key=lambda kind: predictors[kind]["spearman"])  # ties: the first listed
    return {"folds": min(config.folds, len(loss)), "simulated": len(candidates), "top": config.top,
            "bootstrap": config.bootstrap, "confidence": config.confidence, "chosen": chosen,
            "predictors": predictors}


# Critical mixture ratio: general loss against domain share R, each group's loss a power law in its own share.

SHARE_FLOOR = 0.01


def share_law(share: np.ndarray, floor_loss: float, scale: float, exponent: float) -> np.ndarray:
    """Loss = E + B · share^(−α): more of a group's own data lowers its loss, with diminishing returns."""
    return floor_loss + scale * np.maximum(share, SHARE_FLOOR) ** -exponent


def fit_share_law(share: np.ndarray, loss: np.ndarray) -> dict | None:
    from scipy.optimize import curve_fit

    start = [float(loss.min()) * 0.9, max(float(np.ptp(loss)), 1e-3) / 4, 0.5]
    try:
        params, _ = curve_fit(share_law, share, loss, p0=start, bounds=([0, 0, 0], [np.inf, np.inf, 5]),
                              maxfev=20_000)
    except (RuntimeError, ValueError):
        return None
    residual = loss - share_law(share, *params)
    return {"floor_loss": float(params[0]), "scale": float(params[1]), "exponent": float(params[2]),
            "rmse": float(np.sqrt(np.mean(residual**2)))}


def critical_mixture_ratio(ratio: np.ndarray, general_loss: np.ndarray, domain_loss: np.ndarray,
                           tolerance: float) -> dict:
    """The largest domain ratio R whose fitted general loss stays within `tolerance` (relative) of its value at R = 0.

    General loss is fitted against its own share 1 − R and domain loss against R. Below the CMR the domain
    gains at little cost to general ability; above it the general loss rises past the tolerance.
    """
    general = fit_share_law(1 - ratio, general_loss)
    domain = fit_share_law(ratio, domain_loss)
    result = {"tolerance": tolerance, "general_fit": general, "domain_fit": domain, "critical_ratio": None}
    if general is None:
        return result
    grid = np.linspace(0, 1 - SHARE_FLOOR, 991)
    fitted = share_law(1 - grid, general["floor_loss"], general["scale"], general["exponent"])
    allowed = fitted[0] * (1 + tolerance)
    within = np.flatnonzero(fitted <= allowed)
    critical = float(grid[within[-1]])  # the fit is monotone in R, so `within` is a prefix of the grid
    result |= {"critical_ratio": critical, "general_loss_limit": float(allowed)}
    if domain is not None:
        result["domain_loss_at_critical_ratio"] = float(
            share_law(np.array(critical), domain["floor_loss"], domain["scale"], domain["exponent"]))
    return result

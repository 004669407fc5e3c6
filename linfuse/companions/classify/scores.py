"""Scoring generated pictures with a classifier of their domain.

For pictures generated from prompts that name class c_i (one per prompt), with a classifier g and its features φ:

    prompt accuracy    = mean_i [argmax g(x_i) = c_i]
    agreement(A, B)    = mean_i [argmax g(a_i) = argmax g(b_i)]      same prompt and seed, two models
    Fréchet distance   = ‖μ_A − μ_B‖² + Tr(Σ_A + Σ_B − 2 (Σ_A^{½} Σ_B Σ_A^{½})^{½})
                         between Gaussians fitted to φ over two sets of pictures (FID's formula on φ)
"""

import numpy as np
import torch

from ...errors import InvalidArgumentError
from .data import to_batch


@torch.no_grad()
def predict(model, images, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(labels, features) of PIL pictures: argmax class and the classifier's pooled features (float64)."""
    model.eval()
    labels, features = [], []
    for start in range(0, len(images), batch):
        x = to_batch(images[start:start + batch]).to(next(model.parameters()).device)
        embedded = model.embed(x)
        head = model.classifier if hasattr(model, "classifier") else model.svm
        labels.append(head(embedded).argmax(dim=1).cpu())
        features.append(embedded.double().cpu())
    return torch.cat(labels).numpy(), torch.cat(features).numpy()


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (n, d) and b (m, d) (see the module docstring)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InvalidArgumentError(f"feature sets must be (n ≥ 2, d) with the same d; got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    cross = _sqrt_psd(root_a @ cov_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))


def score_models(model, class_names: list[str], intended: list[int], generated: dict[str, list],
                 reference=None) -> dict:
    """Per model: prompt accuracy; per pair of models: agreement and Fréchet distance; and each model's Fréchet
    distance to ``reference`` pictures (real renders of the same prompts) when given."""
    intended = np.asarray(intended)
    predictions = {name: predict(model, images) for name, images in generated.items()}
    result = {"classes": len(class_names), "pictures": len(intended), "chance": 1 / len(class_names), "models": {}}
    ref_features = predict(model, reference)[1] if reference is not None else None
    for name, (labels, features) in predictions.items():
        entry = {"prompt_accuracy": float((labels == intended).mean())}
        if ref_features is not None:
            entry["frechet_to_renders"] = frechet_distance(features, ref_features)
        result["models"][name] = entry
    names = list(predictions)
    result["pairs"] = {f"{a}|{b}": {"agreement": float((predictions[a][0] == predictions[b][0]).mean()),
                                    "frechet": frechet_distance(predictions[a][1], predictions[b][1])}
                       for i, a in enumerate(names) for b in names[i + 1:]}
    return result

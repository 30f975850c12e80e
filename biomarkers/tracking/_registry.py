"""The model registry: the champion alias moves only when a new version beats it."""

from __future__ import annotations

import logging
from typing import Any

from biomarkers._errors import ModelNotFoundError

logger = logging.getLogger("biomarkers")


def promote_if_better(client: Any, name: str, *, alias: str, version: str, cv_auroc: float) -> tuple[str | None, str, bool]:
    """Point ``alias`` at ``version`` if its CV AUROC beats the current holder's.

    Returns
    -------
    (previous alias version or None, version the alias points to now, whether it moved).
    """
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is not None:
        try:
            current_auroc = float(current.tags.get("cv_auroc", "nan"))
        except ValueError:
            current_auroc = float("nan")
        # The champion's AUROC is read back from its tag, written with 6 decimals: compare at that precision, or
        # an identical re-run (a tie) would take the alias from the champion.
        if not round(cv_auroc, 6) > current_auroc and current_auroc == current_auroc:
            logger.info("registry: %s@%s stays at version %s (CV AUROC %.3f >= %.3f)", name, alias, current.version, current_auroc, cv_auroc)
            return str(current.version), str(current.version), False
    client.set_registered_model_alias(name, alias, version)
    logger.info("registry: %s@%s -> version %s (CV AUROC %.3f)", name, alias, version, cv_auroc)
    return (str(current.version) if current is not None else None), str(version), True


def resolve_model_uri(uri: str) -> tuple[str, str | None]:
    """Check that a model URI exists in the configured store; returns (uri, resolved version or None).

    Raises :class:`ModelNotFoundError` with the registered names when it does not.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from biomarkers.tracking._store import setup_mlflow, tracking_uri

    setup_mlflow()
    client = mlflow.MlflowClient()
    if uri.startswith("models:/"):
        rest = uri[len("models:/") :]
        try:
            if "@" in rest:
                name, alias = rest.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
                logger.info("%s -> version %s; pass --model models:/%s/%s to pin", uri, mv.version, name, mv.version)
                return uri, str(mv.version)
            name, _, version = rest.partition("/")
            if version:
                client.get_model_version(name, version)
                return uri, version
            client.get_registered_model(name)
            return uri, None
        except MlflowException:
            names = [m.name for m in client.search_registered_models()]
            msg = (
                f"Model {uri} not found in {tracking_uri()} (registered: {', '.join(names) or 'none'}). "
                "Run `biomarkers run EXPERIMENT` first, or check the name, version or alias."
            )
            raise ModelNotFoundError(msg) from None
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/") :].split("/", 1)[0]
        try:
            client.get_run(run_id)
        except MlflowException:
            msg = f"Run {run_id} not found in {tracking_uri()}. Use `biomarkers compare` to list runs."
            raise ModelNotFoundError(msg) from None
        return uri, None
    msg = f"Model URI {uri!r} must be models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model from the project's store."
    raise ModelNotFoundError(msg)

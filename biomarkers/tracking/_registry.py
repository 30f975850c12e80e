"""The model registry: the champion alias moves only when a new version, trained on the same inputs, beats it."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from biomarkers._errors import ModelNotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterable

logger = logging.getLogger("biomarkers")

# Model-version tags that decide whether two versions may compete for the alias.
KIND_TAG = "kind"
FEATURE_SCHEMA_TAG = "feature_schema"
N_FEATURES_TAG = "n_candidate_features"
FORMAT_TAG = "format_version"  # the BiomarkerModel format; versions before the tag existed are format 1
# The AUROC versions compete on: the nested CV AUROC of the choose-then-fit procedure (honest), not the
# selected candidate's own CV AUROC (optimistic by the choice). Versions registered before it have only cv_auroc.
AUROC_TAG = "nested_cv_auroc"
LEGACY_AUROC_TAG = "cv_auroc"
NOT_CHAMPION_TAG = "not_champion"  # why a registered version may never hold the alias (majority / clinical-only)


def _format(mv: Any) -> int:
    try:
        return int(mv.tags.get(FORMAT_TAG, "1"))
    except ValueError:
        return 1


def feature_schema(columns: Iterable[str]) -> str:
    """sha256 of the sorted candidate feature names: equal for the same feature columns in any order."""
    return hashlib.sha256("\n".join(sorted(map(str, columns))).encode()).hexdigest()


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote_if_better` decided.

    Attributes
    ----------
    previous
        Version the alias pointed to before (None when there was no holder).
    current
        Version the alias points to now.
    moved
        Whether the alias moved to the new version.
    reason
        One line saying what was compared, or why nothing was.
    compared_with
        Version whose CV AUROC the new version was compared with (None when there was no holder, or it was not
        comparable: another input kind or other candidate features).
    """

    previous: str | None
    current: str
    moved: bool
    reason: str
    compared_with: str | None = None


def _incomparable(current: Any, new: Any) -> str | None:
    """Why ``current`` (the alias holder) may not be compared with ``new``, or None when it may."""
    kind, schema = current.tags.get(KIND_TAG), current.tags.get(FEATURE_SCHEMA_TAG)
    if kind is None or schema is None:
        missing = "/".join(t for t, v in ((KIND_TAG, kind), (FEATURE_SCHEMA_TAG, schema)) if v is None)
        return f"champion version {current.version} has no {missing} tag (registered before it was recorded)"
    if kind != new.tags.get(KIND_TAG):
        return f"champion version {current.version} was trained on kind={kind} (this version: {new.tags.get(KIND_TAG)})"
    if schema != new.tags.get(FEATURE_SCHEMA_TAG):
        counts = (current.tags.get(N_FEATURES_TAG), new.tags.get(N_FEATURES_TAG))
        detail = f" ({counts[0]} columns; this version: {counts[1]})" if None not in counts else ""
        return f"champion version {current.version} was trained on other candidate features{detail}"
    return None


def promote_if_better(
    client: Any, name: str, *, alias: str, version: str, cv_auroc: float, blocked: str | None = None
) -> Promotion:
    """Point ``alias`` at ``version`` if its CV AUROC beats the current holder's, trained on the same inputs.

    Versions compete only when their model-version tags ``kind`` (single_cell, bulk) and ``feature_schema``
    (:func:`feature_schema` of the candidate feature columns, before any selection) are equal: an AUROC on other
    patients or other features says nothing about which model to trust here. When the holder is not comparable
    (or lacks those tags) the alias stays, and the reason says so. Ties do not move the alias.

    Parameters
    ----------
    client
        An ``mlflow.MlflowClient``.
    name
        Registered model name.
    alias
        The alias, e.g. ``champion``.
    version
        The new version; its ``kind`` and ``feature_schema`` tags are read from the registry.
    cv_auroc
        The new version's nested CV AUROC (the ``nested_cv_auroc`` tag).
    blocked
        Why the new version may never hold the alias (the majority baseline or the clinical-only model won); the
        alias then stays where it is, with this reason.

    Returns
    -------
    A :class:`Promotion`.
    """
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    version = str(version)
    if blocked is not None:
        held_by = None if current is None else str(current.version)
        where = f"{alias} stays at version {held_by}" if held_by else f"no {alias} is set"
        reason = f"version {version} is registered but never promoted: {blocked}; {where}"
        logger.warning("registry: %s", reason)
        return Promotion(held_by, held_by or "none", moved=False, reason=reason)
    if current is None:
        client.set_registered_model_alias(name, alias, version)
        new = client.get_model_version(name, version)
        reason = f"no {alias} yet: version {version} becomes {alias}{_inputs(new, same=False)}"
        logger.info("registry: %s@%s -> version %s (%s)", name, alias, version, reason)
        return Promotion(None, version, moved=True, reason=reason)
    held = str(current.version)
    new = client.get_model_version(name, version)
    if _format(current) < _format(new):
        # An older-format champion cannot rebuild features from cells any more (predict asks to retrain it), so a
        # retrained version replaces it whatever the AUROCs: otherwise the alias would be stuck on a dead model.
        client.set_registered_model_alias(name, alias, version)
        reason = (
            f"version {version} replaces {alias} version {held}, registered in model format {_format(current)} "
            f"(now {_format(new)}; the old one no longer predicts from cells){_inputs(new, same=False)}"
        )
        logger.warning("registry: %s@%s -> version %s (%s)", name, alias, version, reason)
        return Promotion(held, version, moved=True, reason=reason)
    why = _incomparable(current, new)
    if why is not None:
        reason = f"not compared: {why}; pick another registry.model_name"
        logger.warning("registry: %s@%s stays at version %s: %s", name, alias, held, reason)
        return Promotion(held, held, moved=False, reason=reason)
    same = _inputs(new, same=True)
    if AUROC_TAG not in current.tags:
        # Its cv_auroc is the selected model's own CV AUROC, optimistic by the choice: comparing it with a nested
        # estimate would favour the old version for how it was measured, not for how it predicts.
        client.set_registered_model_alias(name, alias, version)
        reason = (
            f"version {version} becomes {alias}: version {held} has no nested CV AUROC (registered before selection "
            f"was cross-validated; its cv_auroc is not comparable){same}"
        )
        logger.info("registry: %s@%s -> version %s (%s)", name, alias, version, reason)
        return Promotion(held, version, moved=True, reason=reason, compared_with=held)
    try:
        current_auroc = float(current.tags.get(AUROC_TAG, "nan"))
    except ValueError:
        current_auroc = float("nan")
    # The champion's AUROC is read back from its tag, written with 6 decimals: compare at that precision, or
    # an identical re-run (a tie) would take the alias from the champion.
    if current_auroc == current_auroc and not round(cv_auroc, 6) > current_auroc:
        reason = f"{alias} stays at version {held}: nested CV AUROC {current_auroc:.3f} >= {cv_auroc:.3f}{same}"
        logger.info("registry: %s@%s %s", name, alias, reason)
        return Promotion(held, held, moved=False, reason=reason, compared_with=held)
    client.set_registered_model_alias(name, alias, version)
    if current_auroc == current_auroc:
        reason = (
            f"version {version} becomes {alias}: nested CV AUROC {cv_auroc:.3f} > {current_auroc:.3f} of version {held}{same}"
        )
    else:
        reason = f"version {version} becomes {alias}: version {held} has no nested CV AUROC value{same}"
    logger.info("registry: %s@%s -> version %s (%s)", name, alias, version, reason)
    return Promotion(held, version, moved=True, reason=reason, compared_with=held)


def _inputs(mv: Any, *, same: bool) -> str:
    """`` (same kind single_cell, same 39 candidate features)`` from a version's tags."""
    prefix = "same " if same else ""
    n = mv.tags.get(N_FEATURES_TAG)
    features = f", {prefix}{n} candidate features" if n is not None else f", {prefix}candidate features"
    return f" ({prefix}kind {mv.tags.get(KIND_TAG)}{features})"


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

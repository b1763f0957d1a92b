"""Acting on a monitor's breach: its ``on_breach`` actions.

``retrain`` and ``rollback`` run first, then ``alert`` (a log line on the ``mlops.monitor`` logger and, with
``webhook`` set, an HTTP POST of the result) so that the alert says what was done.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from compiler.errors import MlopsError
from compiler.resolve import Project
from compiler.spec import Monitor
from runtime.monitor.results import result_json
from runtime.state.records import MonitorResult
from runtime.state.store import StateStore

logger = logging.getLogger("mlops.monitor")

WEBHOOK_TIMEOUT_S = 5.0


def act(project: Project, store: StateStore, name: str, monitor: Monitor, result: MonitorResult) -> list[str]:
    """Run a breach's ``on_breach`` actions (retrain and rollback, then alert); what was done, one line each."""
    done: list[str] = []
    ordered = [a for a in monitor.on_breach if a != "alert"] + [a for a in monitor.on_breach if a == "alert"]
    for action in dict.fromkeys(ordered):
        if action == "retrain":
            done.append(_retrain(store, name, project.spec.deployments[monitor.deployment].model))
        elif action == "rollback":
            done.append(_rollback(project, store, name, monitor.deployment))
        else:
            result.actions = list(done)
            done.extend(_alert(project, name, monitor, result))
    return done


def _retrain(store: StateStore, name: str, model: str) -> str:
    already = any(r.model == model for r in store.open_retrain_requests())
    store.request_retrain(model, f"monitors.{name}")
    return f"retrain: models.{model} already requested" if already else f"retrain: requested models.{model}"


def _rollback(project: Project, store: StateStore, name: str, deployment: str) -> str:
    from runtime.apply.operations import rollback

    try:
        outcome = rollback(project, deployment, reason=f"monitor breach: monitors.{name}", store=store)
    except MlopsError as exc:  # no earlier version passed the gates, or its rollout did not go live
        why = "; ".join(d.message for d in exc.diagnostics)
        verdict = "failed" if why.startswith("rollout of version") else "impossible"
        logger.error("monitors.%s: rollback of deployments.%s %s: %s", name, deployment, verdict, why)
        return f"rollback {verdict}: {why}"
    except Exception as exc:  # noqa: BLE001 - a failed rollout leaves the old version serving; report it
        logger.error("monitors.%s: rollback of deployments.%s failed: %s", name, deployment, exc)
        return f"rollback failed: {exc}"
    return f"rollback: deployments.{deployment} {outcome.from_version} -> {outcome.to_version}"


def _alert(project: Project, name: str, monitor: Monitor, result: MonitorResult) -> list[str]:
    breached = [f"{c['type']} ({c['method']}: {_number(c['score'])} vs {_number(c['threshold'])})"
                for c in result.checks if c["status"] == "breached"]
    logger.warning("monitors.%s breached on deployments.%s version %s: %s%s", name, monitor.deployment,
                   result.version, ", ".join(breached),
                   f"; done: {', '.join(result.actions)}" if result.actions else "")
    done = ["alert: logged"]
    if monitor.webhook:

        payload = {"project": project.spec.project, **result_json(result)}
        done.append(post_webhook(monitor.webhook, payload, f"monitors.{name}"))
    return done


def post_webhook(url: str, payload: dict[str, Any], who: str) -> str:
    """POST ``payload`` as JSON to an http(s) URL; a failure is logged and described, never raised."""
    if not url.startswith(("http://", "https://")):
        logger.error("%s: webhook %s is not an http(s) URL; not posted", who, url)
        return f"alert: webhook not posted: {url} is not an http(s) URL"
    request = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "mlops-monitor"})
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:  # noqa: S310 - http(s) only
            return f"alert: webhook {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        logger.error("%s: webhook %s failed: %s", who, url, reason)
        return f"alert: webhook failed: {reason}"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)

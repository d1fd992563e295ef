"""The Kubernetes API, for Argo Workflows' custom resources.

Configuration as ``kubectl`` finds it: in a pod, the service account
(``KUBERNETES_SERVICE_HOST``); elsewhere ``$KUBECONFIG`` or ``~/.kube/config`` and its
current context. Uses the ``kubernetes`` client (``pip install 'flowbook[argo]'``),
imported only here and only when a deploy command talks to a cluster.
"""

from __future__ import annotations

import os

from ..exceptions import FlowbookError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

GROUP = "argoproj.io"
VERSION = "v1alpha1"
PLURALS = {
    "WorkflowTemplate": "workflowtemplates",
    "CronWorkflow": "cronworkflows",
    "Workflow": "workflows",
}


def _client() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise FlowbookError(
            "Talking to Kubernetes needs the kubernetes client: pip install 'flowbook[argo]' "
            "(or use --only-json to print the documents)."
        ) from None
    return kubernetes


class ArgoApi:
    """Create, update, read and delete Argo resources in one namespace."""

    def __init__(self, namespace: str, config_file: str | None = None) -> None:
        kubernetes = _client()
        self.namespace = namespace
        self._exception = kubernetes.client.exceptions.ApiException
        configuration = kubernetes.client.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not (
                config_file or os.environ.get("KUBECONFIG")
            ):
                kubernetes.config.load_incluster_config(client_configuration=configuration)
            else:
                kubernetes.config.load_kube_config(
                    config_file=config_file, client_configuration=configuration
                )
        except Exception as exc:  # ConfigException, a missing or malformed file
            raise FlowbookError(
                f"Cannot configure the Kubernetes client: {exc} (set KUBECONFIG or run in a pod)."
            ) from None
        self.api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient(configuration))
        self.server = configuration.host

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(GROUP, VERSION, self.namespace, *args, **kwargs)
        except self._exception as exc:
            if exc.status == 404 and what.startswith("read"):
                return None
            reason = exc.reason or ""
            try:
                import json

                reason = json.loads(exc.body).get("message") or reason
            except (TypeError, ValueError, AttributeError):
                pass
            raise FlowbookError(
                f"Kubernetes API at {self.server} refused to {what} in namespace "
                f"{self.namespace}: {exc.status} {reason}".rstrip()
            ) from None
        except OSError as exc:
            raise FlowbookError(
                f"Cannot reach the Kubernetes API at {self.server} to {what}: {exc}"
            ) from None
        except Exception as exc:  # urllib3's connection errors
            if type(exc).__module__.startswith("urllib3"):
                raise FlowbookError(
                    f"Cannot reach the Kubernetes API at {self.server} to {what}: {exc}"
                ) from None
            raise

    def read(self, kind: str, name: str) -> dict | None:
        return self._call(
            f"read {kind} {name}", self.api.get_namespaced_custom_object, PLURALS[kind], name
        )

    def apply(self, document: dict) -> str:
        """Create the resource, or replace the one of that name; "created" or "updated"."""
        kind, name = document["kind"], document["metadata"]["name"]
        existing = self.read(kind, name)
        if existing is None:
            self._call(
                f"create {kind} {name}",
                self.api.create_namespaced_custom_object,
                PLURALS[kind],
                document,
            )
            return "created"
        body = dict(document)
        body["metadata"] = {
            **document["metadata"],
            "resourceVersion": existing["metadata"].get("resourceVersion"),
        }
        self._call(
            f"update {kind} {name}",
            self.api.replace_namespaced_custom_object,
            PLURALS[kind],
            name,
            body,
        )
        return "updated"

    def delete(self, kind: str, name: str) -> bool:
        if self.read(kind, name) is None:
            return False
        self._call(
            f"delete {kind} {name}", self.api.delete_namespaced_custom_object, PLURALS[kind], name
        )
        return True

    def submit(self, document: dict) -> dict:
        """Create a Workflow; the created object (with its generated name)."""
        return self._call(
            "create a Workflow",
            self.api.create_namespaced_custom_object,
            PLURALS["Workflow"],
            document,
        )

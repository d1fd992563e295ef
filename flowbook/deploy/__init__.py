"""Deploying flows to orchestrators (Argo Workflows, AWS Step Functions).

``naming`` (resource and template names), ``schedule`` (@schedule to cron, both
dialects), ``package`` (the code package every pod fetches), ``pod`` (what a pod
runs before the task entry point) and ``kubernetes`` (the Kubernetes API). Nothing
here is imported by ``python flow.py run``.
"""

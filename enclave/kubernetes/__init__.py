"""Kubernetes mode: the enclave on a cluster, with Zero-to-JupyterHub and KubeSpawner.

``settings`` reads a site's ``deploy/kubernetes/enclave.yaml``; ``profiles`` turns the
workspace profiles into KubeSpawner ``profile_list`` entries; ``spawner`` is the KubeSpawner
the hub runs; ``hub`` is what the chart's ``hub.extraConfig`` calls; ``keyholder`` holds the
unsealed master key and hands granted versions, decrypted, to a pod's loader (``loader``);
``manifests`` and ``render`` write every object offline (``enclave k8s render``).
"""

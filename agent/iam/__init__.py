"""The node's IAM: identity, capacity, certificates and instance secrets (../shared/IAM.md).

``port`` is what the agent sees (records and the ``IamClient`` Protocol); ``client`` the gRPC
adapter; ``merge`` the pure rule that combines IAM's node info with our config; ``certurl`` turns
IAM's certificate URLs into files; ``startup`` waits for IAM before CM is contacted; ``sim`` is the
fake IAM that tests, `aos-sm iam-sim` and the demo use.
"""

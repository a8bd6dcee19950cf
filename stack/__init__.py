"""Packaging pg-lifeboat as one CloudFormation stack: naming, IAM access, the merge template, `make package`."""

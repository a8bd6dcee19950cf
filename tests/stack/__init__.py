"""Tests of stack/: the CloudFormation stack `make package` produces."""

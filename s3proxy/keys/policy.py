"""Which key encrypts what: the default key, per bucket/prefix rules, client requests.

Pure: no I/O.  A rule matches when its bucket is the object's bucket (or
``"*"``) and the object key starts with its prefix.  The most specific rule
wins: an exact bucket beats ``"*"``, then the longest prefix; ties go to the
rule listed first.  A client may name a key with the SSE-KMS headers only if
that key is in ``allowed_client_keys`` or is the key the policy picks for
that object anyway (the matching rule's key, else the default key).  So a
client cannot swap a rule's key for the default key unless the default key
is listed in ``allowed_client_keys``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import KeyAccessDenied
from .settings import KeyRule


class KeyPolicy:
    def __init__(
        self,
        default_key_id: str,
        rules: Sequence[KeyRule] = (),
        allowed_client_keys: Sequence[str] = (),
    ):
        self.default_key_id = default_key_id
        self.rules = tuple(rules)
        self.allowed_client_keys = frozenset(allowed_client_keys)

    def rule_for(self, bucket: str, key: str) -> KeyRule | None:
        best: KeyRule | None = None
        best_rank = (-1, -1)
        for rule in self.rules:
            if rule.bucket not in (bucket, "*") or not key.startswith(rule.prefix):
                continue
            rank = (1 if rule.bucket == bucket else 0, len(rule.prefix))
            if rank > best_rank:
                best, best_rank = rule, rank
        return best

    def key_for(self, bucket: str, key: str) -> str:
        """The key new writes to ``bucket/key`` use."""
        rule = self.rule_for(bucket, key)
        return rule.key_id if rule is not None else self.default_key_id

    def choose(self, bucket: str, key: str, requested_key_id: str | None) -> str:
        """The key for a write; ``requested_key_id`` comes from the SSE-KMS header, if any."""
        chosen = self.key_for(bucket, key)
        if requested_key_id is None or requested_key_id == "":
            return chosen
        if requested_key_id == chosen or requested_key_id in self.allowed_client_keys:
            return requested_key_id
        raise KeyAccessDenied(f"key {requested_key_id!r} may not be requested for {bucket}/{key}")

"""API keys: random tokens, stored only as SHA-256 hashes.

A key is shown once, when it is made.  ``KEGNET_API_KEYS`` seeds keys at
start-up for scripts and tests: ``owner:key`` pairs, or bare keys (each then
its own owner, named ``key-`` and the start of the key's hash: the key itself
is never stored or logged as an owner), comma-separated.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from sqlalchemy import Select, and_, bindparam, select, update
from sqlalchemy.orm import Session

from kegnet_service.jobs import now
from kegnet_service.models import ApiKey, Job

KEY_PREFIX = "kg_"
MIN_KEY_LENGTH = 16


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, owner: str) -> str:
    """A new key for ``owner``; the plain key is returned and never stored."""
    if not owner or len(owner) > 128:
        raise ValueError("owner must be 1 to 128 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_key(key), prefix=key[:8], created_at=now(), revoked=False))
    session.flush()
    return key


def add_key(session: Session, *, owner: str, key: str) -> None:
    """Store a given key (seeding); a key already stored keeps its owner, but for a bare key
    stored by an earlier release with the key itself as its owner: that key, its jobs
    included, moves to the owner ``owner`` names (the key is then nowhere in the tables)."""
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"API keys must be at least {MIN_KEY_LENGTH} characters")
    digest = hash_key(key)
    stored = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    if stored is None:
        session.add(ApiKey(owner=owner, key_hash=digest, prefix=key[:8], created_at=now(), revoked=False))
    elif stored.owner == key and owner != key:
        session.execute(update(Job).where(Job.owner == key).values(owner=owner))
        session.execute(update(ApiKey).where(ApiKey.owner == key).values(owner=owner))
    session.flush()


def bare_key_owner(key: str) -> str:
    """The owner of a key seeded without one: named by its hash, so that job rows, listings
    and logs, which carry owners, never carry the key."""
    return "key-" + hash_key(key)[:12]


def parse_seed(text: str) -> list[tuple[str, str]]:
    """``"alice:k1,k2"`` -> ``[("alice", "k1"), (bare_key_owner("k2"), "k2")]``."""
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        owner, separator, key = item.partition(":")
        if separator and not owner.strip():
            raise ValueError("KEGNET_API_KEYS: an 'owner:key' pair has no owner")
        pairs.append((owner.strip(), key.strip()) if separator else (bare_key_owner(item), item))
    return pairs


def seed_keys(session: Session, text: str) -> int:
    pairs = parse_seed(text)
    for owner, key in pairs:
        add_key(session, owner=owner, key=key)
    return len(pairs)


def owner_of(session: Session, key: str) -> str | None:
    """The owner of a valid, unrevoked key, else None."""
    digest = hash_key(key)
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked.is_(False))).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row.owner


@functools.cache
def _owner_and_job_statement() -> Select[str, str, Job]:
    return (
        select(ApiKey.key_hash, ApiKey.owner, Job)
        .select_from(ApiKey)
        .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.owner == ApiKey.owner))
        .where(ApiKey.key_hash == bindparam("digest"), ApiKey.revoked.is_(False))
        .limit(1)
    )


def owner_and_job(session: Session, key: str, job_id: str) -> tuple[str | None, Job | None]:
    """The owner of a valid, unrevoked key (else None) and that owner's job ``job_id`` (else
    None), in one query: a status poll's whole trip to the database.  The statement is built
    once per process (building and hashing it was a fifth of a poll's time)."""
    digest = hash_key(key)
    row = session.execute(_owner_and_job_statement(), {"digest": digest, "job_id": job_id}).first()
    if row is None or not hmac.compare_digest(row[0], digest):
        return None, None
    return row[1], row[2]


def revoke_keys(session: Session, *, prefix: str) -> int:
    rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked.is_(False))))
    for row in rows:
        row.revoked = True
    session.flush()
    return len(rows)
